"""Preemption of a real training process (`vqlab generate` in a subprocess): SIGTERM
finishes the step, checkpoints and exits 0; `kill -9` at an arbitrary step loses
nothing that was checkpointed; the rerun's loss trajectory equals the uninterrupted
run's, bit for bit. Slow (four process starts): run by .ci/run's slow step."""

import os
import signal
import subprocess
import sys
import time

import pytest

from vqlab.train.common import read_jsonl

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 120, 20


def _command(workdir, tokenizer_workdir, tokens_dir):
  return [sys.executable, "-m", "vqlab.cli", "generate",
          "--config", "configs/generator_quickstart.py:raster,runlocal", "--workdir", workdir,
          f"--config.tokenizer_workdir={tokenizer_workdir}", f"--config.tokens_dir={tokens_dir}",
          "--config.model.num_classes=10", "--config.model.width=64", "--config.model.depth=2",
          "--config.train.batch_size=16", f"--config.train.steps={STEPS}",
          f"--config.log.checkpoint_every={EVERY}", "--config.log.every=1",
          f"--config.sample.every={10 * STEPS}"]


def _checkpoints(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _start_and_wait_for(command, workdir, min_step, timeout=300):
  """Start the job; return it once a checkpoint of at least `min_step` is complete."""
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + timeout
  while not any(s >= min_step for s in _checkpoints(workdir)):
    if proc.poll() is not None:
      raise AssertionError(f"the job ended early:\n{proc.stdout.read().decode()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("no checkpoint in time")
    time.sleep(0.02)
  return proc


def _losses(workdir):
  """step -> loss; a step run again after a kill counts with its last value."""
  return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r}


def test_sigterm_and_kill_9_resume_bit_identically(chain, tmp_path):
  tok_workdir, tokens = chain["vq"]
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  done = subprocess.run(_command(whole, tok_workdir, tokens), cwd=ROOT, capture_output=True)
  assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]

  command = _command(parts, tok_workdir, tokens)
  proc = _start_and_wait_for(command, parts, EVERY)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: step" in out
  stopped = _checkpoints(parts)[-1]
  assert EVERY < stopped < STEPS or stopped == EVERY  # saved at the step it stopped

  proc = _start_and_wait_for(command, parts, stopped + 1)
  proc.kill()  # SIGKILL: no handler, no final save
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(_losses(parts))
  assert killed_at < STEPS

  done = subprocess.run(command, cwd=ROOT, capture_output=True)
  assert done.returncode == 0, done.stdout.decode()[-3000:]
  assert _checkpoints(parts)[-1] == STEPS
  want, got = _losses(whole), _losses(parts)
  assert sorted(got) == list(range(1, STEPS + 1))
  logged = [r["step"] for r in read_jsonl(os.path.join(parts, "metrics.jsonl")) if "loss" in r]
  assert logged == list(range(1, STEPS + 1))  # the steps redone after the kill: once
  assert got == want  # every step's loss, bit for bit (JSON keeps float64 exactly)
