"""Fixtures of the trainer tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab import parallel
from vqlab.data import builtin

from configs import titok_quickstart, vqgan_quickstart
from vqlab.train import export_tokens, tokenizer


_CHAIN = {"vq": "runlocal", "msvq": "msvq,runlocal", "msbsq": "msbsq,runlocal",
          "rvq": "rvq,runlocal", "lfq": "lfq,runlocal", "titok": "digits,runlocal"}


def _build_tokenizer(root, name):
  if name == "titok":  # a 1D tokenizer: 32 tokens per digit
    c = titok_quickstart.get_config(_CHAIN[name])
    c.data.data_dir = str(root.parent / "chain_tfds")
    c.loss.disc_start = 10_000
    tokenizer.train(c, str(root / "run"))
    export_tokens.export(str(root / "run"), str(root / "tokens"), split="train", examples=100,
                         batch_size=16)
    return
  c = vqgan_quickstart.get_config(_CHAIN[name])
  c.data.update(name="vqlab_digits", data_dir=str(root.parent / "chain_tfds"), min_crop=0,
                max_crop=0, flip=False, in_memory=False)  # as configs/vqgan_quickstart.py:digits
  multiscale = name.startswith("ms")
  c.model.shape.update(in_channels=1, channel_mult=(1, 2, 2) if multiscale else (1, 2))
  c.loss.update(disc_start=10_000, perceptual_weight=0.0, lpips_weights="")  # codes only
  if name == "msvq":
    c.model.quantizer.args.update(codebook_size=64, patch_nums=(1, 2, 4, 8))
  if name == "msbsq":
    c.model.quantizer.args.update(patch_nums=(1, 2, 4, 8))
  tokenizer.train(c, str(root / "run"))
  export_tokens.export(str(root / "run"), str(root / "tokens"), split="train", examples=100,
                       batch_size=16)


class _Chain:
  """`chain[name]` -> (tokenizer workdir, tokens dir), each tokenizer built on first use."""

  def __init__(self, build_once):
    self._build_once = build_once

  def __getitem__(self, name):
    if name not in _CHAIN:
      raise KeyError(f"chain: expected one of {sorted(_CHAIN)}, got {name!r}")
    # the digits are prepared once, under their own lock, before any tokenizer reads them
    self._build_once("chain_tfds", lambda d: builtin.load("vqlab_digits", str(d)))
    root = self._build_once(f"generator_chain_{name}", lambda d: _build_tokenizer(d, name))
    return str(root / "run"), str(root / "tokens")


@pytest.fixture(scope="session")
def chain(build_once):
  """2-step digit tokenizers (one index per position, VAR's multi-scale, Infinity's binary
  multi-scale of 16 bits, residual VQ of 4 levels, LFQ of 2^16 codes; TiTok's 32 1D tokens) and 100 exported training tokens of each, with labels; each
  built once per session, on first use, so the xdist workers build different ones."""
  return _Chain(build_once)


def _build_speech_chain(root, data_dir):
  from configs import audio_codec
  from vqlab.train import codec
  # the codec quickstart's default-run variant (phoneme CTC on level 1, training crops
  # through rooms and noise, the GAN from step 2, WER and the phoneme probe in its
  # evaluation): test_codec checks this run too
  c = audio_codec.get_config("semantic,rooms,runlocal")
  c.data.update(data_dir=data_dir, crop_seconds=0.5, eval_seconds=0.5)
  c.model.shape.update(strides=(2, 4, 5, 8))  # 50 frames/s: 25 frames per 0.5 s record
  workdir = str(root / "codec")
  codec.train(c, workdir)
  export_tokens.export(workdir, str(root / "tokens"), split="train", examples=24, batch_size=8)
  export_tokens.export(workdir, str(root / "prompts"), split="synth_test", examples=8,
                       batch_size=8)


@pytest.fixture(scope="session")
def speech_chain(build_once, speech_data_dir):
  """A 2-step speech codec (`configs/audio_codec.py:semantic,rooms,runlocal`: 3 levels of 64
  codes; 50 frames/s here), 24 exported training clips of 0.5 s and 8 held-out prompt clips;
  built once per session."""
  root = build_once("speech_chain", lambda d: _build_speech_chain(d, speech_data_dir))
  return str(root / "codec"), str(root / "tokens"), str(root / "prompts")


def _check_sharded_steps(step, state, batches, mesh_shape, keys, min_fsdp_size):
  """Runs `step(state, batch, None)` over `batches` (arrays or dicts of them) on one device and on a mesh of
  `mesh_shape` (parameters FSDP-sharded above `min_fsdp_size`): the metrics `keys` agree
  step by step, and the parameters after the last step."""
  one = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ref_step = jax.jit(step, in_shardings=(parallel.state_shardings(state, one),
                                         parallel.batch_sharding(one), None))
  mesh = parallel.make_mesh(mesh_shape)
  shardings = parallel.state_shardings(state, mesh, min_fsdp_size=min_fsdp_size)
  for axis in ("fsdp", "tensor"):
    if axis in mesh_shape:  # conv kernels: input channels over fsdp, output over tensor
      assert any(axis in s.spec for s in jax.tree.leaves(shardings))
  batch = parallel.batch_sharding(mesh)
  sharded = jax.jit(step, in_shardings=(shardings, batch, None), out_shardings=(shardings, None))
  ref_state, got_state = state, jax.device_put(state, shardings)
  for x in batches:
    ref_state, ref_metrics = ref_step(ref_state, jax.tree.map(jnp.asarray, x), None)
    got_state, got_metrics = sharded(got_state, jax.device_put(x, batch), None)
    for k in keys:
      np.testing.assert_allclose(got_metrics[k], ref_metrics[k], rtol=5e-4, err_msg=k)
  # parameters after a few Adam steps (lr 1e-3): updates of near-zero gradients are
  # ~sign(g) lr, so summation-order rounding can move a few elements by a fraction of a step
  for a, b in zip(jax.tree.leaves(nnx.state(got_state["nnx"], nnx.Param)),
                  jax.tree.leaves(nnx.state(ref_state["nnx"], nnx.Param))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=3e-4)


@pytest.fixture
def sharded_steps_match():
  """`sharded_steps_match(step, state, batches, mesh_shape, keys, min_fsdp_size)`: the
  sharded step equals one device's (metrics per step, parameters at the end)."""
  return _check_sharded_steps
