"""TiTok in the tokenizer trainer: ordered prefixes in eval, the two-stage proxy recipe."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import titok_quickstart
from vqlab.data.pipeline import iterate
from vqlab.train import runs, tokenizer, utilisation
from vqlab.train.common import read_jsonl


def _leaves(module):
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def test_ordered_titok_reports_psnr_at_each_prefix(tmp_path, chain):
  teacher_run, _ = chain["vq"]  # for its prepared digits
  c = titok_quickstart.get_config("ordered,digits,runlocal")
  c.data.data_dir = runs.load_config(teacher_run).data.data_dir
  summary = tokenizer.train(c, str(tmp_path))
  assert list(summary["psnr_at_tokens"]) == ["1", "2", "4", "8", "16", "32"]
  assert all(np.isfinite(v) for v in summary["psnr_at_tokens"].values())
  assert np.isclose(summary["psnr_at_tokens"]["32"], summary["psnr"], atol=1e-3)


@pytest.mark.slow  # two trainings on a teacher: CI's slow step keeps the default run in budget
def test_two_stage_titok_learns_the_teachers_codes_then_only_its_decoders(tmp_path, chain):
  teacher_run, _ = chain["vq"]  # digits, 32 px, f2: a 16x16 grid of codes
  data_dir = runs.load_config(teacher_run).data.data_dir
  c = titok_quickstart.get_config("proxy,digits,runlocal")
  c.model.shape = dict(c.model.shape, patch_size=2)
  c.model.proxy.teacher = teacher_run
  c.data.data_dir = data_dir
  tokenizer.train(c, str(tmp_path / "s1"))
  rows = [r for r in read_jsonl(str(tmp_path / "s1" / "metrics.jsonl")) if "proxy_loss" in r]
  assert len(rows) == 2 and all(np.isfinite(r["proxy_loss"]) for r in rows)
  assert rows[0]["proxy_loss"] > np.log(64) * 0.5  # cross-entropy over 64 codes, untrained

  teacher, first = runs.load_tokenizer(teacher_run), runs.load_tokenizer(str(tmp_path / "s1"))
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1), minval=-1, maxval=1)
  np.testing.assert_array_equal(first.proxy_targets(x),
                                teacher.encode(x).indices.reshape(2, -1))
  assert _same(first.teacher_encoder, teacher.encoder)  # the teacher is frozen in stage 1
  assert _same(first.decoder.teacher_decoder, teacher.decoder)

  c2 = titok_quickstart.get_config("proxy,stage2,digits,runlocal")
  c2.model.shape = dict(c2.model.shape, patch_size=2)
  c2.model.proxy.init_from = str(tmp_path / "s1")
  c2.data.data_dir = data_dir
  tokenizer.train(c2, str(tmp_path / "s2"))
  second = runs.load_tokenizer(str(tmp_path / "s2"))
  assert _same(second.encoder, first.encoder) and _same(second.quantizer, first.quantizer)
  assert not _same(second.decoder, first.decoder)  # stage 2 trains the decoders
  np.testing.assert_array_equal(second.encode(x).indices, first.encode(x).indices)
  assert jnp.all(jnp.isfinite(second.decode(second.encode(x).indices)))


def _ordered_config(data_dir, steps):
  c = titok_quickstart.get_config("ordered,digits,runlocal")
  c.data.data_dir = data_dir
  c.train.update(steps=steps, ema_decay=0.9)
  c.log.update(every=1, checkpoint_every=2, image_every=100)
  return c


# three runs; the tokenizer trainer's resume is CI's on the CNN tokenizer: by hand
@pytest.mark.manual
def test_resumed_ordered_run_is_bit_identical(tmp_path, chain):
  """Tail-drop draws (the model's rng stream) resume with the rest of the state."""
  data_dir = runs.load_config(chain["vq"][0]).data.data_dir
  tokenizer.train(_ordered_config(data_dir, 4), str(tmp_path / "whole"))
  tokenizer.train(_ordered_config(data_dir, 2), str(tmp_path / "parts"))  # "preempted"
  tokenizer.train(_ordered_config(data_dir, 4), str(tmp_path / "parts"))
  drop = utilisation.without_timing
  whole, parts = (read_jsonl(str(tmp_path / d / "metrics.jsonl")) for d in ("whole", "parts"))
  assert [r["step"] for r in parts] == [1, 2, 3, 4]
  assert [drop(r) for r in whole] == [drop(r) for r in parts]
  _, _, a, _ = runs.restore(str(tmp_path / "whole"))
  _, _, b, _ = runs.restore(str(tmp_path / "parts"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # CI's slow step: the default run has the CNN tokenizer's sharded step
def test_sharded_titok_step_matches_one_device(chain, sharded_steps_match):
  """Tail drop and the GAN on: 3 steps on a data x fsdp mesh of 8 equal one device's."""
  data_dir = runs.load_config(chain["vq"][0]).data.data_dir
  c = _ordered_config(data_dir, 3)
  graphdef, state = tokenizer.init_state(c)
  it = iterate(runs.datasets(c, "train", train=True, batch_size=16), threads=0)
  batches = [next(it)["image"] for _ in range(3)]
  step = functools.partial(tokenizer.train_step, graphdef=graphdef,
                           loss=tokenizer.LossSpec.from_config(c), gan=True,
                           lpips_graphdef=None)
  sharded_steps_match(step, state, batches, {"data": 2, "fsdp": 4},
                      ("loss", "disc_loss", "psnr", "q/usage"), 1024)
