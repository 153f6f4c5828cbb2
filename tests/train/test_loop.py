"""The shared training loop's guards: SIGTERM finishes the step, saves and exits 0; a
non-finite loss stops the run before anything bad is saved."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.checkpoint import Checkpointer
from vqlab.train import loop
from vqlab.train.common import MetricWriter, read_jsonl


class Batches:
  """An endless iterator with the grain iterator's get_state()."""

  def __init__(self):
    self.n = 0

  def __next__(self):
    self.n += 1
    return self.n

  def get_state(self):
    return {"n": self.n}


def _run(tmp_path, step_fn, total=10, checkpoint_every=2):
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  return loop.run({"w": jnp.zeros(3)}, Batches(), step_fn, start=0, total=total, ckpt=ckpt,
                  writer=MetricWriter(str(tmp_path)), log_every=1,
                  checkpoint_every=checkpoint_every)


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path):
  def step_fn(state, batch, step):
    if step == 2:  # the signal arrives while step 3 runs
      os.kill(os.getpid(), signal.SIGTERM)
    return {"w": state["w"] + batch}, {"loss": jnp.float32(1.0 / (step + 1))}

  with pytest.raises(SystemExit) as stopped:
    _run(tmp_path, step_fn, checkpoint_every=5)
  assert stopped.value.code == 0 and stopped.value.step == 3
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [3]
  assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
  step, state, data_state = Checkpointer(str(tmp_path / "checkpoints")).restore(
      {"w": np.zeros(3, np.float32)})
  np.testing.assert_array_equal(state["w"], [6.0, 6.0, 6.0])  # batches 1 + 2 + 3
  assert step == 3 and data_state == {"n": 3}


def test_non_finite_loss_stops_and_sets_aside_the_checkpoint_that_led_to_it(tmp_path):
  def step_fn(state, batch, step):
    loss = jnp.float32(np.nan if step >= 2 else 1.0)  # step 3 goes wrong
    return state, {"loss": loss, "grad_norm": jnp.float32(1.0)}

  with pytest.raises(loop.Diverged, match=r"step 3: non-finite loss or state; .*checkpoint "
                     r"\[2\].*resumes from the start"):
    _run(tmp_path, step_fn)
  # checkpoint 2's state produced the NaN: kept aside, not resumed from, never deleted
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == []
  assert len(os.listdir(tmp_path / "checkpoints-diverged")) == 1


def test_skip_guard_keeps_the_state_of_a_non_finite_step():
  import jax

  def step(state, x):
    new = {"w": state["w"] + x, "key": jax.random.split(state["key"])[0]}
    return new, {"loss": jnp.log(x)}  # x < 0: NaN

  guarded = jax.jit(loop.guard_nonfinite(step, "skip"))
  s1, m1 = guarded({"w": jnp.ones(3), "key": jax.random.key(0)}, 2.0)
  np.testing.assert_array_equal(s1["w"], [3.0, 3.0, 3.0])
  assert float(m1["nonfinite"]) == 0.0
  s2, m2 = guarded(s1, -1.0)
  np.testing.assert_array_equal(s2["w"], s1["w"])
  np.testing.assert_array_equal(jax.random.key_data(s2["key"]), jax.random.key_data(s1["key"]))
  assert float(m2["nonfinite"]) == 1.0
  with pytest.raises(ValueError, match="train.nonfinite"):
    loop.guard_nonfinite(step, "ignore")


def test_a_finite_loss_with_a_non_finite_update_is_caught_in_both_modes():
  import jax

  def step(state, x):  # the loss is fine, the update overflows (lr = 1e30 ...)
    return {"w": state["w"] * x}, {"loss": jnp.float32(1.0)}

  for mode in loop.NONFINITE:
    new, metrics = jax.jit(loop.guard_nonfinite(step, mode))({"w": jnp.ones(2)}, jnp.float32(np.inf))
    assert float(metrics["nonfinite"]) == 1.0
    assert bool(jnp.isfinite(new["w"]).all()) == (mode == "skip")


def test_skip_mode_saves_only_finite_states_and_stops_after_max_skips(tmp_path):
  def step_fn(state, batch, step):  # steps 3-4 bad (skipped), 5-6 fine, 7 on bad
    bad = step in (2, 3) or step >= 6
    new = {"w": state["w"] if bad else state["w"] + 1}
    return new, {"loss": jnp.float32(np.nan if bad else 1.0),
                 "nonfinite": jnp.float32(float(bad))}

  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  with pytest.raises(loop.Diverged, match=r"steps 7-9: 3 non-finite steps in a row"):
    loop.run({"w": jnp.zeros(3)}, Batches(), step_fn, start=0, total=20, ckpt=ckpt,
             writer=MetricWriter(str(tmp_path)), log_every=1, checkpoint_every=2,
             nonfinite="skip", max_skips=3)
  # 2 saved; 4 fell on a skipped step: saved at 5 (finite) instead; 6 was saved, then
  # set aside (step 7 went wrong from it); 8 fell on a skipped step: not saved
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 5]
  assert [d.split("-")[0] for d in os.listdir(tmp_path / "checkpoints-diverged")] == ["6"]


def test_dry_runs_compile_and_report_without_touching_the_workdir(chain, tmp_path, capsys):
  from configs import generator_quickstart, vqgan_quickstart
  from vqlab.train import generator, tokenizer

  c = vqgan_quickstart.get_config("runlocal")
  c.data.data_dir = str(tmp_path / "tfds")
  c.update(dry_run=True)
  c.mesh.update(data=2, fsdp=4)
  c.mesh.min_fsdp_size = 1024
  result = tokenizer.train(c, str(tmp_path / "tok"))
  out = capsys.readouterr().out
  assert "'fsdp': 4" in out and "per device" in out and "dry run" in out
  assert result["flops_per_step"] > 1e6 and result["temp_mib_per_device"] >= 0
  g = generator_quickstart.get_config("raster,runlocal")
  workdir, tokens = chain["vq"]
  g.update(tokenizer_workdir=workdir, tokens_dir=tokens, dry_run=True)
  g.model.num_classes = 10
  g.mesh.update(data=2, fsdp=2, tensor=2)
  assert generator.train(g, str(tmp_path / "gen"))["flops_per_step"] > 1e5
  assert not os.path.exists(tmp_path / "tok") and not os.path.exists(tmp_path / "gen")


def test_a_full_disk_or_unwritable_workdir_fails_before_training(tmp_path, monkeypatch):
  import collections

  from vqlab.train import common

  common.check_free_space(str(tmp_path), 1024)
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
  with pytest.raises(OSError, match="1 MiB free, expected at least 8 MiB"):
    common.check_free_space(str(tmp_path), 8 * 2**20)
  blocked = tmp_path / "file"
  blocked.write_text("not a directory")
  with pytest.raises(OSError, match="writable directory"):
    common.check_workdir(str(blocked / "run"))
