"""VQGAN encoder / decoder and PatchGAN: shapes at the paper sizes, blocks' arithmetic."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models.discriminator import PatchGAN
from vqlab.models.vqgan import F8, F16, TINY, Decoder, Downsample, Encoder, Upsample
from vqlab.quantizers import VectorQuantizer


@pytest.mark.parametrize("shape", [F16, F8], ids=["f16", "f8"])
def test_paper_sizes_map_256px_to_the_right_latent_grid(shape):
  """Abstract evaluation only (no FLOPs): 256 px -> 16x16 (f16) or 32x32 (f8) latents."""
  def run():
    rngs = nnx.Rngs(0)
    enc, dec = Encoder(shape, rngs), Decoder(shape, rngs)
    z = enc(jnp.zeros((1, 256, 256, 3)))
    return z, dec(z), nnx.state(enc, nnx.Param), nnx.state(dec, nnx.Param)
  z, x, enc_params, dec_params = jax.eval_shape(run)
  side = 256 // shape.downsample_factor
  assert z.shape == (1, side, side, shape.embed_dim) and x.shape == (1, 256, 256, 3)
  count = lambda s: sum(np.prod(l.shape) for l in jax.tree.leaves(s))
  # taming's f16 VQGAN: about 29M encoder and 42M decoder parameters
  if shape is F16:
    assert 25e6 < count(enc_params) < 35e6 and 38e6 < count(dec_params) < 48e6


def test_tiny_vqgan_round_trip_with_a_quantizer():
  rngs = nnx.Rngs(0)
  enc, dec = Encoder(TINY, rngs), Decoder(TINY, rngs)
  vq = VectorQuantizer(TINY.embed_dim, 64, rngs=rngs)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  q = vq(enc(x))
  assert q.quantized.shape == (2, 16, 16, TINY.embed_dim)
  y = dec(q.quantized)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_allclose(dec.conv_out(dec.features(q.quantized)), y, atol=1e-6)


def test_downsample_pads_after_and_upsample_repeats():
  rngs = nnx.Rngs(0)
  down = Downsample(1, rngs)
  down.conv.kernel[...] = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)  # picks x[2i, 2j]
  down.conv.bias[...] = jnp.zeros((1,))
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(down(x)[0, ..., 0], x[0, ::2, ::2, 0])
  up = Upsample(1, rngs)
  up.conv.kernel[...] = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)  # identity
  up.conv.bias[...] = jnp.zeros((1,))
  np.testing.assert_array_equal(up(x)[0, ::2, ::2, 0], x[0, ..., 0])
  np.testing.assert_array_equal(up(x)[0, 1::2, 1::2, 0], x[0, ..., 0])


def test_patchgan_gives_30x30_patches_at_256px():
  d = jax.eval_shape(lambda: PatchGAN(3, rngs=nnx.Rngs(0))(jnp.zeros((2, 256, 256, 3))))
  assert d.shape == (2, 30, 30, 1)
  small = PatchGAN(3, width=8, n_layers=2, rngs=nnx.Rngs(0))
  assert small(jnp.zeros((2, 32, 32, 3))).shape == (2, 6, 6, 1)


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="norm_groups"):
    Encoder(dataclasses.replace(TINY, channels=12), nnx.Rngs(0))
  with pytest.raises(ValueError, match="resolution"):
    Encoder(dataclasses.replace(TINY, resolution=33), nnx.Rngs(0))
  with pytest.raises(ValueError, match="norm"):
    PatchGAN(3, norm="layer", rngs=nnx.Rngs(0))


# the causal 3D case (60 s to compile) runs the same `run_blocks`: CI's slow step
@pytest.mark.parametrize("arch", ["vqgan", pytest.param("causal3d", marks=pytest.mark.slow)])
def test_remat_keeps_fewer_activations_and_the_same_gradients(arch, remat_shrinks_residuals):
  """`remat` in the conv tokenizers' encoder and decoder: the residuals kept for the
  backward shrink from "none" to "block" (conv and matmul outputs) to "full" (block
  inputs); gradients do not change."""
  from vqlab.models import causal3d
  if arch == "vqgan":
    base = dataclasses.replace(TINY, attn_resolutions=(16,))  # an attention block too
    make = lambda s, r: (Encoder(s, r), Decoder(s, r))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  else:
    base = causal3d.TINY
    make = lambda s, r: (causal3d.Encoder3D(s, r), causal3d.Decoder3D(s, r))
    x = jax.random.normal(jax.random.key(1), (2, 5, 32, 32, 1))
  remat_shrinks_residuals(
      lambda remat: make(dataclasses.replace(base, remat=remat), nnx.Rngs(0)),
      lambda m: jnp.mean(jnp.square(m[1](m[0](x)) - x)))
  with pytest.raises(ValueError, match="remat: expected one of"):
    dataclasses.replace(base, remat="blocks").check()
