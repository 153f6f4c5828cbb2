"""Faults and bad input against real runs: nothing a researcher does by mistake loses a
run's checkpoints or saves a diverged model (README, "Scale out and preemption")."""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import generator_quickstart, vqgan_quickstart
from vqlab.checkpoint import CheckpointMismatch
from vqlab.train import generator, loop, runs, tokenizer
from vqlab.train.common import MetricWriter, WorkdirLock, read_jsonl


def _digits_config(data_dir, **train):
  """The chain's 2-step digit tokenizer (conftest), cheap enough to train a few times."""
  c = vqgan_quickstart.get_config("runlocal")
  c.data.update(name="vqlab_digits", data_dir=data_dir, min_crop=0, max_crop=0, flip=False,
                in_memory=False)
  c.model.shape.update(in_channels=1, channel_mult=(1, 2))
  c.loss.update(disc_start=10_000, perceptual_weight=0.0, lpips_weights="")
  c.train.update(**train)
  return c


def _copy(run, tmp_path, name="run"):
  dst = str(tmp_path / name)
  shutil.copytree(run, dst)
  return dst


def _steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _data_dir(chain):
  return runs.load_config(chain["vq"][0]).data.data_dir


def test_a_huge_learning_rate_never_leaves_a_diverged_checkpoint(chain, tmp_path):
  data_dir = _data_dir(chain)
  # 2 steps: the weights are 1e30 after step 1 (finite); what follows is not. Today's main
  # saved it and wrote "psnr": NaN to summary.json with exit status 0.
  short = str(tmp_path / "short")
  with pytest.raises(loop.Diverged):
    tokenizer.train(_digits_config(data_dir, lr=1e30), short)
  assert not os.path.exists(os.path.join(short, "summary.json"))
  assert _steps(short) == []  # nothing a rerun would resume from
  # 6 steps: checkpoint 2 holds the exploded (still finite) weights; step 3 goes NaN
  long = str(tmp_path / "long")
  with pytest.raises(loop.Diverged, match=r"step 3: .*checkpoint \[2\].*checkpoints-diverged"):
    tokenizer.train(_digits_config(data_dir, lr=1e30, steps=6), long)
  assert _steps(long) == [] and len(os.listdir(os.path.join(long, "checkpoints-diverged"))) == 1
  # the rerun with a sane learning rate starts over and finishes with a finite model
  summary = tokenizer.train(_digits_config(data_dir, steps=6), long)
  assert np.isfinite(summary["psnr"]) and _steps(long)[-1] == 6
  assert [r["step"] for r in read_jsonl(os.path.join(long, "metrics.jsonl"))] == list(range(1, 7))


def test_skip_mode_stops_after_max_skips_with_a_message(chain, tmp_path):
  c = _digits_config(_data_dir(chain), lr=1e30, steps=30, nonfinite="skip", max_skips=4)
  with pytest.raises(loop.Diverged, match=r"4 non-finite steps in a row \(train.max_skips=4\)"):
    tokenizer.train(c, str(tmp_path / "run"))


def test_a_non_finite_checkpoint_is_refused_by_eval_and_exports(chain, tmp_path):
  import jax
  from vqlab.train import export_tokens
  workdir = _copy(chain["vq"][0], tmp_path)
  _, _, state, step = runs.restore(workdir)
  leaves = jax.tree.leaves(loop.to_checkpoint(state))
  target = next(i for i, x in enumerate(leaves) if x.dtype == jnp.float32 and x.size > 1)
  leaves[target] = leaves[target] * np.nan
  ckpt = loop.checkpointer(workdir, 3)
  ckpt.save(step + 1, jax.tree.unflatten(jax.tree.structure(loop.to_checkpoint(state)), leaves))
  ckpt.close()
  with pytest.raises(ValueError, match=f"checkpoint {step + 1} .* non-finite values"):
    runs.load_tokenizer(workdir)
  with pytest.raises(ValueError, match="non-finite values"):
    export_tokens.export(workdir, str(tmp_path / "tokens"), examples=8, batch_size=8)


def test_a_train_field_that_changes_the_state_is_refused_touching_nothing(chain, tmp_path):
  workdir = _copy(chain["vq"][0], tmp_path)
  before = {name: os.path.getmtime(os.path.join(workdir, name))
            for name in ("config.json", "metrics.jsonl")}
  steps, config_text = _steps(workdir), open(os.path.join(workdir, "config.json")).read()
  c = runs.load_config(workdir)
  c.train.ema_decay = 0.999  # adds an EMA to the state: another tree
  with pytest.raises(CheckpointMismatch, match=r"train.ema_decay: 0.0 -> 0.999"):
    tokenizer.train(c, workdir)
  assert _steps(workdir) == steps and not os.path.exists(workdir + "/checkpoints-unreadable")
  assert open(os.path.join(workdir, "config.json")).read() == config_text
  assert all(os.path.getmtime(os.path.join(workdir, n)) == t for n, t in before.items())
  # the run's own config resumes at its last step: nothing is trained again
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert tokenizer.train(runs.load_config(workdir), workdir)["step"] == steps[-1]
  assert read_jsonl(os.path.join(workdir, "metrics.jsonl")) == records


def test_a_second_job_on_a_workdir_is_refused_and_a_stale_lock_taken_over(chain, tmp_path,
                                                                          capsys):
  workdir = _copy(chain["vq"][0], tmp_path)
  lock = os.path.join(workdir, ".lock")
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    import socket
    with open(lock, "w") as f:
      json.dump({"host": socket.gethostname(), "pid": alive.pid}, f)
    with pytest.raises(RuntimeError, match=f"in use by pid {alive.pid}"):
      tokenizer.train(runs.load_config(workdir), workdir)
    assert os.path.exists(lock)
  finally:
    alive.kill()
    alive.wait()
  # the holder is gone (kill -9 of a requeued job): taken over, with a message
  tokenizer.train(runs.load_config(workdir), workdir)
  assert f"taking over the lock of {workdir} from pid {alive.pid}" in capsys.readouterr().out
  assert not os.path.exists(lock)  # released at the end


def test_a_lock_from_another_host_is_taken_over_only_when_its_heartbeat_stops(tmp_path):
  import threading
  lock = WorkdirLock(str(tmp_path), heartbeat=0.05, stale_after=1.0)
  with open(lock.path, "w") as f:
    json.dump({"host": "another-host", "pid": 1}, f)
  stop = threading.Event()

  def beat():  # the other host's job, alive
    while not stop.wait(0.05):
      os.utime(lock.path)

  threading.Thread(target=beat, daemon=True).start()
  with pytest.raises(RuntimeError, match="in use by pid 1 on another-host"):
    lock.__enter__()
  stop.set()  # it dies (kill -9 of the old job): its heartbeat stops, the lock goes stale
  with lock:
    assert json.load(open(lock.path))["pid"] == os.getpid()
  assert not os.path.exists(lock.path)


def test_tokens_of_another_tokenizer_are_refused(chain, tmp_path):
  g = generator_quickstart.get_config("raster,runlocal")
  g.model.num_classes = 10
  g.update(tokenizer_workdir=chain["vq"][0], tokens_dir=chain["msvq"][1])
  with pytest.raises(ValueError, match="tokens_dir: tokens of .*msvq.* another model"):
    generator.train(g, str(tmp_path / "gen"))
  # tokens exported before fingerprints: their latent size still has to fit
  old = _copy(chain["msvq"][1], tmp_path, "old_tokens")
  meta = json.load(open(os.path.join(old, "tokens.json")))
  del meta["tokenizer_fingerprint"]
  json.dump(meta, open(os.path.join(old, "tokens.json"), "w"))
  g.tokens_dir = old
  with pytest.raises(ValueError, match=r"latent_size \d+ in the tokens, \d+ in the tokenizer"):
    generator.train(g, str(tmp_path / "gen"))
  assert not os.path.exists(tmp_path / "gen" / "config.json")


def test_resume_drops_the_metric_lines_of_steps_to_be_redone(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in range(1, 11):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "lo')  # killed while writing
  writer = MetricWriter(str(tmp_path))
  writer.truncate_after(6)
  writer.write(7, {"loss": 0.5})
  writer.close()
  assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == list(range(1, 8))
