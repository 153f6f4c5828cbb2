"""Fault injection: `kill -9` swept over one short run (11 points: mid-step, mid-save, just
after a save), each time resuming with the same command. The final run's losses at every
step and its final parameters equal the uninterrupted run's, bit for bit, and no step is
logged twice. Slow (13 process starts): CI's slow step."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vqlab.checkpoint import Checkpointer
from vqlab.train import utilisation
from vqlab.train.common import read_jsonl

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY, NAME = 60, 3, "vq_ema_restart"  # EMA codebook, k-means, restarts, RNG
KILL_AT = list(range(3, STEPS - 4, 5))  # 3, 8, ..., 53


def _command(workdir):
  return [sys.executable, "-m", "vqlab.cli", "study",
          "--config", "configs/quantizer_study.py:runlocal", "--workdir", workdir,
          f"--config.quantizers={NAME}", f"--config.train.steps={STEPS}",
          "--config.log.every=1", f"--config.log.checkpoint_every={EVERY}",
          "--config.log.keep_checkpoints=2"]


def _logged_steps(workdir):
  path = os.path.join(workdir, NAME, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line for line in f.read().splitlines()]


def _kill_when_logged(command, workdir, step, timeout=300):
  """Start the job and kill -9 it as soon as a metrics line of `step` or later appears."""
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while True:
    lines = _logged_steps(workdir)
    if any(f'"step": {s},' in line for line in lines[-3:] for s in range(step, STEPS + 1)):
      break
    if proc.poll() is not None:
      raise AssertionError(f"the job ended before step {step} (rc {proc.returncode})")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"step {step} not reached in time")
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)


def _final(workdir):
  records = read_jsonl(os.path.join(workdir, NAME, "metrics.jsonl"))
  ckpt = Checkpointer(os.path.join(workdir, NAME, "checkpoints"))
  assert ckpt.latest_step() == STEPS
  import orbax.checkpoint as ocp
  state = ckpt.manager.restore(STEPS, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  ckpt.close()
  return records, state


def test_kill_9_anywhere_resumes_to_the_uninterrupted_run(tmp_path):
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  done = subprocess.run(_command(whole), cwd=ROOT, capture_output=True)
  assert done.returncode == 0, done.stderr.decode()[-3000:]
  for step in KILL_AT:
    _kill_when_logged(_command(parts), parts, step)
  done = subprocess.run(_command(parts), cwd=ROOT, capture_output=True)
  assert done.returncode == 0, done.stderr.decode()[-3000:]

  want, want_state = _final(whole)
  got, got_state = _final(parts)
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # each step once
  for a, b in zip(want, got):
    assert utilisation.without_timing(a) == utilisation.without_timing(b), a["step"]
  import jax
  for a, b in zip(jax.tree.leaves(want_state), jax.tree.leaves(got_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
