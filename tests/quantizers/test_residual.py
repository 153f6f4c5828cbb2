"""Residual, grouped and residual-FSQ compositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.quantizers import GroupedResidualVQ, GroupedVQ, ResidualFSQ, ResidualVQ


def _z(seed, shape=(16, 32, 8)):
  return jax.random.normal(jax.random.key(seed), shape)


def test_error_falls_with_every_level_and_bitrate_adds_up():
  rvq = ResidualVQ(8, 64, 4, kmeans_init=True, rngs=nnx.Rngs(0))
  z = _z(0)
  out = rvq(z)  # k-means initialises each level on its own residual
  rvq.eval()
  out = rvq(z)
  errors = [float(jnp.mean((rvq.decode(out.indices, n) - z) ** 2)) for n in range(1, 5)]
  assert all(b < 0.9 * a for a, b in zip(errors, errors[1:])), errors
  np.testing.assert_allclose(rvq.decode(out.indices), out.quantized, atol=1e-5)
  assert [rvq.bits_per_vector(n) for n in range(1, 5)] == [6.0, 12.0, 18.0, 24.0]


def test_quantizer_dropout_keeps_a_prefix_of_levels_per_example():
  rvq = ResidualVQ(8, 32, 5, quantizer_dropout=True, rngs=nnx.Rngs(0))
  z = _z(1, (64, 4, 8))
  out = rvq(z)
  n = np.asarray(out.aux["num_levels"])
  assert n.shape == (64,) and n.min() >= 1 and n.max() <= 5 and len(set(n)) > 2
  idx = np.asarray(out.indices)  # (64, 4, 5)
  for b in range(64):
    assert (idx[b, :, :n[b]] >= 0).all() and (idx[b, :, n[b]:] == -1).all()
  np.testing.assert_allclose(rvq.decode(out.indices), out.quantized, atol=1e-5)
  np.testing.assert_allclose(out.metrics["active_levels"], n.mean(), rtol=1e-6)
  # A fixed bitrate can be asked for at eval time.
  rvq.eval()
  fixed = rvq(z, num_levels=2)
  assert (np.asarray(fixed.indices)[..., 2:] == -1).all()


def test_quantizer_dropout_probability_keeps_every_level_for_the_rest():
  """DAC's dropout: a fraction p of the examples draw their depth, the others keep all L."""
  rvq = ResidualVQ(8, 32, 4, quantizer_dropout=0.5, rngs=nnx.Rngs(0))
  n = np.asarray(rvq(_z(1, (4000, 8))).aux["num_levels"])
  # all 4 levels: the 50% not dropped plus a quarter of the dropped ones (62.5%)
  np.testing.assert_allclose(np.mean(n == 4), 0.5 + 0.5 / 4, atol=0.03)
  for k in (1, 2, 3):
    np.testing.assert_allclose(np.mean(n == k), 0.5 / 4, atol=0.03)
  with pytest.raises(ValueError, match="quantizer_dropout: expected a probability"):
    ResidualVQ(8, 32, 4, quantizer_dropout=1.5, rngs=nnx.Rngs(0))


def test_straight_through_gradient_to_the_input_is_the_identity():
  """As in EnCodec the residual is not stopped: d(sum of levels)/dz = I, not L * I."""
  rvq = ResidualVQ(8, 32, 3, rngs=nnx.Rngs(0))
  rvq.eval()
  z, g = _z(2, (4, 8)), _z(3, (4, 8))
  dz = jax.grad(lambda z: jnp.sum(rvq(z).quantized * g))(z)
  np.testing.assert_allclose(dz, g, atol=1e-5)


def test_shared_codebook_has_one_set_of_parameters():
  shared = ResidualVQ(8, 32, 4, shared_codebook=True, rngs=nnx.Rngs(0))
  separate = ResidualVQ(8, 32, 4, rngs=nnx.Rngs(0))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(shared) == 32 * 8 and count(separate) == 4 * 32 * 8


def test_grouped_vq_quantizes_each_channel_group_with_its_own_codebook():
  gvq = GroupedVQ(8, 16, 4, rngs=nnx.Rngs(0))
  gvq.eval()
  z = _z(4, (3, 5, 8))
  out = gvq(z)
  assert out.indices.shape == (3, 5, 4)
  for g in range(4):
    part = gvq.groups[g](z[..., 2 * g:2 * g + 2])
    np.testing.assert_array_equal(out.indices[..., g], part.indices)
  np.testing.assert_allclose(gvq.decode(out.indices), out.quantized, atol=1e-6)


def test_grouped_residual_vq_indices_and_round_trip():
  grvq = GroupedResidualVQ(8, 16, 2, 3, rngs=nnx.Rngs(0))
  grvq.eval()
  z = _z(5, (3, 5, 8))
  out = grvq(z)
  assert out.indices.shape == (3, 5, 2, 3)
  np.testing.assert_allclose(grvq.decode(out.indices), out.quantized, atol=1e-5)


def test_residual_fsq_refines_at_each_level():
  rfsq = ResidualFSQ([5, 5, 5], 4)
  z = 0.9 * jnp.tanh(_z(6, (4096, 3)))
  out = rfsq(z)
  c = 1 + 1 / 4
  target = jnp.tanh(z / c) * c  # the soft-clamped input that the levels quantize
  errors = [float(jnp.mean((rfsq.decode(out.indices, n) - target) ** 2)) for n in range(1, 5)]
  # Each level shrinks the grid 5x, so the squared error falls by about 25x.
  assert all(b < 0.1 * a for a, b in zip(errors, errors[1:])), errors
  np.testing.assert_allclose(rfsq.decode(out.indices), out.quantized, atol=1e-6)


def test_bad_arguments():
  r = nnx.Rngs(0)
  with pytest.raises(ValueError, match="groups"):
    GroupedVQ(8, 16, 3, rngs=r)
  with pytest.raises(ValueError, match="num_levels"):
    ResidualVQ(8, 16, 0, rngs=r)
  with pytest.raises(ValueError, match="indices"):
    ResidualVQ(8, 16, 2, rngs=r).decode(jnp.zeros((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="last dimension 8"):
    ResidualVQ(8, 16, 2, rngs=r)(jnp.zeros((4, 7)))
  with pytest.raises(ValueError, match="num_levels: expected in \\[1, 2\\], got 3"):
    ResidualVQ(8, 16, 2, rngs=r).decode(jnp.zeros((4, 2), jnp.int32), num_levels=3)
  with pytest.raises(ValueError, match="batch axis"):
    ResidualVQ(8, 16, 2, rngs=r)(jnp.zeros((8,)))


def test_residual_fsq_matches_vector_quantize_pytorch():
  torch = pytest.importorskip("torch")
  vqp = pytest.importorskip("vector_quantize_pytorch")
  z = np.array(0.9 * jnp.tanh(_z(7, (2, 50, 3))))
  ref = vqp.ResidualFSQ(dim=3, levels=[5, 5, 5], num_quantizers=4)
  ref.eval()
  ref_q, ref_idx = ref(torch.from_numpy(z))
  out = ResidualFSQ([5, 5, 5], 4)(jnp.asarray(z))
  np.testing.assert_array_equal(out.indices, ref_idx.numpy())
  np.testing.assert_allclose(out.quantized, ref_q.detach().numpy(), atol=1e-5)


def test_index_sizes_follow_the_indices_trailing_axes():
  from vqlab.quantizers import LFQ
  from vqlab.quantizers.residual import index_sizes, stacked_indices
  rngs = nnx.Rngs(0)
  cases = [(ResidualVQ(8, 16, 3, rngs=rngs), (16,) * 3), (ResidualVQ(8, 16, 1, rngs=rngs), (16,)),
           (GroupedResidualVQ(8, 16, groups=2, num_levels=3, rngs=rngs), (16,) * 6),
           (GroupedVQ(8, 32, groups=2, rngs=rngs), (32, 32)), (LFQ(bits=5), (32,))]
  for q, sizes in cases:
    z = jax.random.normal(jax.random.key(1), (2, 3, q.dim))
    indices = q(z).indices
    assert index_sizes(q) == sizes
    trailing = indices.shape[2:]  # after (B, positions)
    assert stacked_indices(q) == bool(trailing)
    assert int(np.prod(trailing)) == len(sizes)  # one level still has its axis: (..., 1)
