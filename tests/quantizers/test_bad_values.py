"""One documented behaviour for bad values in every quantizer family (vqlab.quantizers.core):
out-of-range indices, non-finite inputs, empty batches, huge implicit codebooks, and
arguments that used to be accepted silently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.quantizers import (BSQ, FSQ, LFQ, GroupedVQ, MultiScaleVQ, ResidualVQ,
                              VectorQuantizer)
from vqlab.quantizers.core import INVALID
from vqlab.quantizers.search import nearest_code

K = 64
FAMILIES = {
    "vq": lambda r: VectorQuantizer(8, K, rngs=r),
    "vq_ema_kmeans_restart": lambda r: VectorQuantizer(8, K, codebook="ema", kmeans_init=True,
                                                       dead_code_threshold=1.0, rngs=r),
    "gvq": lambda r: GroupedVQ(8, K, 2, rngs=r),
    "rvq": lambda r: ResidualVQ(8, K, 2, rngs=r),
    "fsq": lambda r: FSQ((4, 4, 4), dim=8, rngs=r),
    "lfq": lambda r: LFQ(8, bits=6, rngs=r),
    "bsq": lambda r: BSQ(8, bits=6, rngs=r),
    "msvq": lambda r: MultiScaleVQ(8, K, patch_nums=(1, 2, 4), rngs=r),
}


def _make(name):
  return FAMILIES[name](nnx.Rngs(0, quantizer=1))


def _input(name, batch=4, seed=0):
  shape = (batch, 4, 4, 8) if name == "msvq" else (batch, 3, 8)
  return jax.random.normal(jax.random.key(seed), shape)


def _index_shape(name, q):
  """A valid index array of the family's shape: 2 examples x 3 positions (x 2 groups or
  levels), or 2 multi-scale sequences."""
  if name == "msvq":
    return np.zeros((2, q.seq_len), np.int32)
  if name in ("gvq", "rvq"):
    return np.zeros((2, 3, 2), np.int32)
  return np.zeros((2, 3), np.int32)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad", ["too_large", "negative"])
def test_out_of_range_indices_raise_outside_jit_and_decode_to_nan_inside(name, bad):
  q = _make(name)
  q.eval()
  indices = _index_shape(name, q)
  value = K if bad == "too_large" else -5  # (-1 is a dropped level for residual VQ)
  indices[0, 0] = value  # every group / level of the first position
  with pytest.raises(ValueError, match=r"indices: expected codes in \[0, 64\), got \d+ outside"):
    q.decode(jnp.asarray(indices))
  decoded = np.asarray(nnx.jit(lambda m, i: m.decode(i))(q, jnp.asarray(indices)))
  assert np.isnan(decoded).any()
  if name != "msvq":  # its upsampling spreads a code over the map: others stay finite
    flat = decoded.reshape(2, 3, -1)
    assert np.isnan(flat[0, 0]).all() and np.isfinite(flat[1]).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_non_finite_inputs_get_the_invalid_index_and_stay_out_of_the_statistics(name):
  q = _make(name)
  x = _input(name)
  clean = q(x)  # training mode: statistics move (k-means runs here)
  x_bad = x.at[0, 1, 2].set(jnp.nan) if name != "msvq" else x.at[0, 1, 2, 3].set(jnp.inf)
  before = jax.tree.leaves(nnx.state(q))
  out = q(x_bad)
  assert float(out.metrics["nonfinite_inputs"]) == 1.0 or name in ("gvq",)
  assert np.isfinite(float(out.loss))
  indices = np.asarray(out.indices)
  assert (indices[0] == INVALID).any() and (indices[1:] >= 0).all()
  assert np.isnan(np.asarray(out.quantized)[0]).any()
  assert np.isfinite(np.asarray(out.quantized)[1:]).all()
  for leaf in jax.tree.leaves(nnx.state(q)):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      assert np.isfinite(np.asarray(leaf)).all()
  assert len(before) == len(jax.tree.leaves(nnx.state(q)))
  if name != "msvq":  # the other rows quantize as they would without the bad one
    q.eval()
    np.testing.assert_array_equal(np.asarray(q(x_bad).indices)[1:], np.asarray(q(x).indices)[1:])
  del clean


@pytest.mark.parametrize("name", FAMILIES)
def test_an_empty_batch_gives_zero_loss_and_leaves_the_statistics(name):
  q = _make(name)
  q(_input(name))  # statistics started (k-means done)
  before = _arrays(q)
  out = q(_input(name, batch=0))
  assert float(out.loss) == 0.0
  assert out.indices.shape[0] == 0 and out.quantized.shape[0] == 0
  for a, b in zip(before, _arrays(q)):
    np.testing.assert_array_equal(a, b)


def _arrays(module):
  """Every array of a module's state (RNG keys as their data)."""
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                     else x) for x in jax.tree.leaves(nnx.state(module))]


def test_huge_fsq_codebooks_keep_bounded_usage_statistics():
  q = FSQ((8,) * 10)  # 2^30 codes: a per-code usage EMA would be 4 GiB
  assert q.codebook_size == 2**30 and q.usage[...].size == 0
  x = jax.random.normal(jax.random.key(0), (64, 10))
  out = q(x)
  hit = len(np.unique(np.asarray(out.indices)))
  assert float(out.metrics["usage"]) == pytest.approx(hit / 2**30)
  counts = np.unique(np.asarray(out.indices), return_counts=True)[1] / 64
  assert float(out.metrics["entropy"]) == pytest.approx(-(counts * np.log(counts)).sum(), rel=1e-5)
  small = FSQ((8, 5, 5))  # below the bound: the per-code EMA as before
  assert small.usage[...].shape == (200,)


def test_arguments_that_were_accepted_silently_are_refused():
  r = nnx.Rngs(0)
  with pytest.raises(ValueError, match="levels: expected a non-empty list of ints"):
    FSQ([8, 5.7])
  for build in (lambda: VectorQuantizer(8, 16, beta=-1.0, rngs=r),
                lambda: MultiScaleVQ(8, 16, (1, 2), beta=-1.0, rngs=r),
                lambda: BSQ(8, bits=4, beta=-1.0, rngs=r)):
    with pytest.raises(ValueError, match="beta: expected a finite weight >= 0"):
      build()
  with pytest.raises(ValueError, match="mask: MultiScaleVQ quantizes whole feature maps"):
    MultiScaleVQ(8, 16, (1, 2), rngs=r)(jnp.zeros((1, 2, 2, 8)), mask=jnp.ones((1, 2, 2)))
  with pytest.raises(ValueError, match="kmeans_iters: expected an int >= 1, got 0"):
    VectorQuantizer(8, 16, kmeans_init=True, kmeans_iters=0, rngs=r)
  with pytest.raises(ValueError, match=r"codebook_kd: expected \(K >= 1, D\) codes"):
    nearest_code(jnp.zeros((4, 8)), jnp.zeros((0, 8)))
  # NumPy integers are integers
  assert VectorQuantizer(np.int64(8), np.int64(64), rngs=r).codebook_size == 64
  assert FSQ(np.array([8, 5, 5])).codebook_size == 200


def test_residual_num_levels_is_checked_when_concrete_and_clipped_when_traced():
  q = ResidualVQ(8, 16, 2, rngs=nnx.Rngs(0, quantizer=1))
  q.eval()
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  for bad in (0, 5, np.int64(3)):
    with pytest.raises(ValueError, match=r"num_levels: expected in \[1, 2\]"):
      q(x, num_levels=bad)
  levels = nnx.jit(lambda m, x, n: m(x, num_levels=n).indices)
  np.testing.assert_array_equal(np.asarray(levels(q, x, 0))[..., 1], INVALID)  # -> 1 level
  np.testing.assert_array_equal(levels(q, x, 5), levels(q, x, 2))  # -> all levels
  assert (np.asarray(levels(q, x, 5)) >= 0).all()
