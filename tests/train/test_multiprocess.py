"""A real 2-process training job on localhost (CPU devices, gloo collectives) through
launch/local.py equals the same job as one process on as many devices. Slow: .ci/run's
slow step."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vqlab.train import runs
from vqlab.train.common import read_jsonl

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _job(workdir, chain):
  tok_workdir, tokens = chain["vq"]
  return [sys.executable, "-m", "vqlab.cli", "generate",
          "--config", "configs/generator_quickstart.py:raster,runlocal", "--workdir", workdir,
          f"--config.tokenizer_workdir={tok_workdir}", f"--config.tokens_dir={tokens}",
          "--config.model.num_classes=10", "--config.train.steps=6", "--config.log.every=1",
          "--config.log.checkpoint_every=3", "--config.sample.every=1000"]


def _run(command, **env):
  done = subprocess.run(command, cwd=ROOT, capture_output=True, env=dict(os.environ, **env))
  assert done.returncode == 0, (done.stdout.decode()[-4000:] + done.stderr.decode()[-4000:])
  return done.stdout.decode()


def test_two_processes_equal_one(chain, tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _run(_job(one, chain), XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = _run([sys.executable, "launch/local.py", "--processes", "2", "--cpu-devices", "4",
              "--"] + _job(two, chain))
  assert "2 process(es)" in out and "8 cpu devices" in out
  losses = lambda w: [r["loss"] for r in read_jsonl(os.path.join(w, "metrics.jsonl"))
                      if "loss" in r]
  np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
  assert len(losses(two)) == 6
  params = lambda w: jax.tree.leaves(nnx.state(runs.load_generator(w)[0], nnx.Param))
  for a, b in zip(params(two), params(one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
