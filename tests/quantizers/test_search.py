"""Blocked nearest-code search equals the naive search, in bounded memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.quantizers.search import block_shape, nearest_code, nearest_code_naive


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
    bn, bk = block_shape(n, k, budget)
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
