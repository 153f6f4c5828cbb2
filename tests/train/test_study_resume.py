"""The quantizer study resumes like every job: `kill -9` in the middle of a quantizer's
run, the same command again, and each quantizer's loss trajectory, results and final
parameters equal an uninterrupted study's, bit for bit. Slow (three process starts):
run by .ci/run's slow step."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import pytest
from flax import nnx

from vqlab.train import runs
from vqlab.train.common import read_jsonl

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 300, 20
NAMES = ("vq_ema_restart", "fsq")  # k-means, restarts, EMA statistics; and a plain one


def _command(workdir):
  return [sys.executable, "-m", "vqlab.cli", "study",
          "--config", "configs/quantizer_study.py:runlocal", "--workdir", workdir,
          f"--config.quantizers={','.join(NAMES)}", f"--config.train.steps={STEPS}",
          f"--config.log.checkpoint_every={EVERY}", "--config.log.every=1"]


def _checkpoints(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _losses(workdir):
  return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def test_a_killed_study_resumes_bit_identically(tmp_path):
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  done = subprocess.run(_command(whole), cwd=ROOT, capture_output=True)
  assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]

  first = os.path.join(parts, NAMES[0])
  proc = subprocess.Popen(_command(parts), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not _checkpoints(first):
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.01)
  proc.kill()  # SIGKILL: no handler, no final save
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert max(_losses(first)) < STEPS and not os.path.exists(os.path.join(parts, "results.json"))

  again = subprocess.run(_command(parts), cwd=ROOT, capture_output=True)
  out = again.stdout.decode()
  assert again.returncode == 0, out[-3000:] + again.stderr.decode()[-3000:]
  assert "resumed from step" in out
  for name in NAMES:
    got, want = _losses(os.path.join(parts, name)), _losses(os.path.join(whole, name))
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want, name  # every step's loss, bit for bit
    params = [nnx.state(_model(os.path.join(w, name)), nnx.Param)
              for w in (parts, whole)]
    chex.assert_trees_all_equal(*params)
  results = [json.load(open(os.path.join(w, "results.json"))) for w in (parts, whole)]
  keys = ("quantizer", "mse", "usage", "perplexity", "codebook_size")
  assert [{k: r[k] for k in keys} for r in results[0]] == [{k: r[k] for k in keys}
                                                            for r in results[1]]

  rerun = subprocess.run(_command(parts), cwd=ROOT, capture_output=True)  # all finished
  assert rerun.returncode == 0 and rerun.stdout.decode().count("finished earlier") == 2


def _model(workdir):
  _, graphdef, state, _ = runs.restore(workdir)
  return runs.eval_model(graphdef, state)
