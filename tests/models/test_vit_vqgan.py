"""ViT-VQGAN: patch arithmetic, positions, shapes at the paper's size, a quantizer between."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models.vit_vqgan import BASE, TINY, ViTDecoder, ViTEncoder, ViTShape
from vqlab.nn.vit import patchify, sincos_2d, unpatchify
from vqlab.quantizers import VectorQuantizer


def test_patchify_round_trip_and_raster_order():
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  tokens = patchify(x, 4)
  assert tokens.shape == (2, 6, 48)
  np.testing.assert_array_equal(unpatchify(tokens, 4, 8, 12), x)
  np.testing.assert_array_equal(tokens[0, 1].reshape(4, 4, 3), x[0, :4, 4:8])  # 2nd patch
  with pytest.raises(ValueError, match="patch"):
    patchify(x, 5)


def test_sincos_positions_formula():
  pos = sincos_2d(3, 5, 8)
  assert pos.shape == (15, 8)
  row, col = 2, 3
  w = 1.0 / 10000 ** (np.arange(2) / 2)
  want = np.concatenate([np.sin(row * w), np.cos(row * w), np.sin(col * w), np.cos(col * w)])
  np.testing.assert_allclose(pos[row * 5 + col], want, rtol=1e-6)


def test_base_size_shapes_and_parameters():
  def run():
    rngs = nnx.Rngs(0)
    enc, dec = ViTEncoder(BASE, rngs), ViTDecoder(BASE, rngs)
    z = enc(jnp.zeros((1, 256, 256, 3)))
    return z, dec(z), nnx.state(enc, nnx.Param)
  z, x, params = jax.eval_shape(run)
  assert z.shape == (1, 32, 32, 768) and x.shape == (1, 256, 256, 3)
  count = sum(np.prod(p.shape) for p in jax.tree.leaves(params))
  assert 85e6 < count < 87e6  # ViT-Base: ~85M in its 12 blocks, plus embeddings


def test_tiny_round_trip_through_factorized_cosine_codes():
  rngs = nnx.Rngs(0)
  enc, dec = ViTEncoder(TINY, rngs), ViTDecoder(TINY, rngs)
  vq = VectorQuantizer(TINY.latent_dim, 256, code_dim=8, metric="cosine", rngs=rngs)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  q = vq(enc(x))
  assert q.indices.shape == (2, 8, 8)
  y = dec(q.quantized)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  with pytest.raises(ValueError, match="x: expected"):
    enc(jnp.zeros((1, 16, 16, 3)))


def test_remat_keeps_fewer_activations_and_the_same_gradients(remat_shrinks_residuals):
  """`remat` in the ViT encoder and decoder: residuals kept for the backward pass shrink
  from none to "block" to "full"; gradients do not change."""
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)

  def build(remat):
    shape = ViTShape(image_size=32, patch_size=4, width=64, depth=3, heads=4, latent_dim=16,
                     remat=remat)
    return ViTEncoder(shape, nnx.Rngs(0)), ViTDecoder(shape, nnx.Rngs(1))

  remat_shrinks_residuals(build, lambda m: jnp.mean(jnp.square(m[1](m[0](x)))), atol=1e-7)
  with pytest.raises(ValueError, match="remat: expected one of"):
    ViTShape(remat="all").check()
