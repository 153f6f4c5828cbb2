"""Blocked nearest-code search equals the naive search, in bounded memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.quantizers.search import (block_shape, first_argmin, nearest_code, nearest_code_naive,
                                     squared_distances)
from vqlab.quantizers import search_pallas
from vqlab.quantizers.search_pallas import nearest_code_fused


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,k,block", [(1000, 300, 7_000), (513, 1025, 4_096), (64, 50, 1)])
def test_blocked_equals_naive(metric, n, k, block):
  kz, kc = jax.random.split(jax.random.key(n + k))
  z = jax.random.normal(kz, (n, 12))
  c = jax.random.normal(kc, (k, 12))
  idx, dist = nearest_code(z, c, metric, block)
  ref_idx, ref_dist = nearest_code_naive(z, c, metric)
  assert idx.dtype == jnp.int32
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_lowest_index_across_blocks():
  c = jnp.tile(jnp.eye(4), (5, 1))  # every code repeated 5 times, 20 codes
  z = jnp.eye(4)
  idx, _ = nearest_code(z, c, "l2", 3)
  np.testing.assert_array_equal(idx, jnp.arange(4))


def test_block_shape_respects_the_budget():
  for n, k, budget in [(65536, 2**18, 2**22), (10, 10, 1), (1000, 7, 64)]:
    for platform in ("cpu", "gpu"):
      bn, bk = block_shape(n, k, budget, platform)
      assert bn * bk <= max(budget, 1) and 1 <= bn <= n and 1 <= bk <= k


def test_bf16_input_gives_the_int32_indices_of_its_float32_value():
  kz, kc = jax.random.split(jax.random.key(3))
  z = jax.random.normal(kz, (4096, 16)).astype(jnp.bfloat16)
  c = jax.random.normal(kc, (5000, 16))
  idx_bf16, _ = nearest_code(z, c, "l2", 2**16)
  idx_f32, _ = nearest_code(z.astype(jnp.float32), c, "l2", 2**16)
  assert idx_bf16.dtype == jnp.int32
  np.testing.assert_array_equal(idx_bf16, idx_f32)
  assert int(idx_bf16.max()) > 256  # indices bf16 could not represent exactly


def test_large_codebook_in_bounded_memory():
  """K = 2^18, D = 16 with 4 MiB blocks (the naive matrix would be 8 GiB): spot-check rows.

  The full N = 65,536 case and its peak memory are in benchmarks/quantizers.py.
  """
  n = 8192
  kz, kc = jax.random.split(jax.random.key(4))
  z = jax.random.normal(kz, (n, 16))
  c = jax.random.normal(kc, (2**18, 16))
  idx, _ = nearest_code(z, c, "l2", 2**20)
  rows = np.r_[0:256, n - 256:n]
  ref, _ = nearest_code_naive(z[rows], c)
  np.testing.assert_array_equal(idx[rows], ref)


def test_bad_shapes_name_the_argument():
  with pytest.raises(ValueError, match="z_nd, codebook_kd"):
    nearest_code(jnp.zeros((3, 4)), jnp.zeros((5, 3)))
  with pytest.raises(ValueError, match="metric"):
    nearest_code(jnp.zeros((3, 4)), jnp.zeros((5, 4)), "manhattan")
  with pytest.raises(ValueError, match="block_size"):
    block_shape(10, 10, 0)


def test_first_argmin_is_argmin_with_ties_to_the_first():
  """Few distinct values: most rows hold their minimum many times, across groups."""
  scores = jax.random.randint(jax.random.key(5), (300, 64 * 9), 0, 6).astype(jnp.float32)
  best, idx = first_argmin(scores, group=64)
  np.testing.assert_array_equal(idx, jnp.argmin(scores, -1))
  np.testing.assert_array_equal(best, jnp.min(scores, -1))
  _, idx = first_argmin(scores[:, :100], group=64)  # not a multiple: plain argmin
  np.testing.assert_array_equal(idx, jnp.argmin(scores[:, :100], -1))


@pytest.mark.parametrize("interpret", [True] + ([False] if search_pallas.available() else []))
@pytest.mark.parametrize("n,k,d", [(100, 300, 8), (257, 1000, 5), (64, 64, 32)])
def test_fused_kernel_equals_naive_on_exact_arithmetic(n, k, d, interpret):
  """Integer-valued inputs make every float32 distance exact in any summation order,
  so the fused kernel (interpreted on CPU; compiled too on a GPU) must return the naive
  search's indices bit for bit, ties (there are many) to the lowest index; the tiles do
  not divide the rows, the codes or (below 16, zero-padded) the dimension."""
  kz, kc = jax.random.split(jax.random.key(n * k + d))
  z = jax.random.randint(kz, (n, d), -2, 3).astype(jnp.float32)
  c = jax.random.randint(kc, (k, d), -2, 3).astype(jnp.float32)
  ref_idx, ref_dist = nearest_code_naive(z, c)
  idx, dist = nearest_code_fused(z, c, bn=32, bk=64, interpret=interpret)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(dist, ref_dist)
  full = np.asarray(squared_distances(z, c))
  ties = np.sum(full == full.min(1, keepdims=True), axis=1) > 1
  assert ties.mean() > 0.05  # rows whose minimum is held by several codes


def test_fused_kernel_through_nearest_code_with_cosine():
  kz, kc = jax.random.split(jax.random.key(11))
  z, c = jax.random.normal(kz, (200, 12)), jax.random.normal(kc, (700, 12))
  idx, dist = nearest_code(z, c, "cosine", kernel="pallas")
  ref_idx, ref_dist = nearest_code_naive(z, c, "cosine")
  assert np.mean(np.asarray(idx) == np.asarray(ref_idx)) > 0.99  # near-ties may differ
  np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="kernel: expected one of"):
    nearest_code(z, c, kernel="triton")
  with pytest.raises(ValueError, match="bk: expected a power of two"):
    nearest_code_fused(z, c, bk=48, interpret=True)
