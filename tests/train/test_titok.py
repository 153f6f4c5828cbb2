"""TiTok in the tokenizer trainer: ordered prefixes in eval, the two-stage proxy recipe."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import titok_quickstart
from vqlab.train import runs, tokenizer
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
