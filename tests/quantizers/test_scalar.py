"""FSQ, LFQ and BSQ: grids, index <-> code round trips, conventions, losses."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.quantizers import BSQ, FSQ, LFQ
from vqlab.quantizers.core import binary_entropy_terms, entropy


@pytest.mark.parametrize("levels,symmetric", [([3, 4, 5], False), ([8, 5, 5, 5], False),
                                              ([2, 3, 4], True), ([7, 6], True)])
def test_fsq_round_trip_over_every_code(levels, symmetric):
  fsq = FSQ(levels, symmetric=symmetric)
  all_idx = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
  codes = fsq.decode(all_idx)
  assert codes.shape == (fsq.codebook_size, len(levels))
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), all_idx)
  # Quantizing a code returns the code itself (each code is a fixed point of the grid).
  assert len({tuple(np.round(np.asarray(c), 6)) for c in codes}) == fsq.codebook_size


def test_fsq_outputs_lie_on_the_grid_and_first_axis_is_least_significant():
  levels = [8, 5, 5, 5]
  fsq = FSQ(levels)
  z = 3 * jax.random.normal(jax.random.key(0), (4096, 4))
  out = fsq(z)
  for d, l in enumerate(levels):
    grid = (np.arange(l) - l // 2) / (l // 2)
    values = np.asarray(out.quantized[:, d])
    assert np.abs(values[:, None] - grid[None]).min(axis=1).max() < 1e-6
  np.testing.assert_allclose(fsq.decode(out.indices), out.quantized, atol=1e-6)
  # index = sum digit_i * prod(levels[:i]): digit vector (1, 0, 0, 0) is index 1.
  code = fsq.decode(jnp.array([1, levels[0]]))
  np.testing.assert_allclose(code[0], (np.array([1, 0, 0, 0]) - np.array(levels) // 2)
                             / (np.array(levels) // 2))
  np.testing.assert_allclose(code[1], (np.array([0, 1, 0, 0]) - np.array(levels) // 2)
                             / (np.array(levels) // 2))


def test_fsq_bound_formula_and_straight_through_gradient():
  levels = np.array([8, 5])
  z = jnp.linspace(-3, 3, 50)[:, None] * jnp.ones((1, 2))
  half_l = (levels - 1) * (1 + 1e-3) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  want = np.round(np.tanh(np.asarray(z) + np.arctanh(offset / half_l)) * half_l - offset) / (levels // 2)
  np.testing.assert_allclose(FSQ(list(levels))(z).quantized, want, atol=1e-6)
  # Straight-through rounding: d quantized / dz = d bound(z) / dz / (L // 2).
  grad = jax.grad(lambda z: FSQ(list(levels))(z).quantized.sum())(z)
  bound_grad = (1 - np.tanh(np.asarray(z) + np.arctanh(offset / half_l)) ** 2) * half_l / (levels // 2)
  np.testing.assert_allclose(grad, bound_grad, rtol=1e-5, atol=1e-6)


def test_symmetric_fsq_levels_are_symmetric_around_zero():
  for l in [2, 3, 4, 7]:
    codes = np.sort(np.asarray(FSQ([l], symmetric=True).decode(jnp.arange(l))[:, 0]))
    np.testing.assert_allclose(codes, -codes[::-1], atol=1e-6)
    np.testing.assert_allclose(codes, np.linspace(-1, 1, l), atol=1e-6)


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_binary_round_trip_and_msb_first(cls):
  q = cls(bits=5)
  all_idx = jnp.arange(32, dtype=jnp.int32)
  codes = q.decode(all_idx)
  np.testing.assert_array_equal(q.codes_to_indices(codes), all_idx)
  # Index 1 = only the last (least significant) bit set.
  assert np.asarray(codes[1] > 0).tolist() == [False, False, False, False, True]
  z = jax.random.normal(jax.random.key(1), (2, 9, 5))
  out = q(z)
  np.testing.assert_allclose(q.decode(out.indices), out.quantized, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.quantized) > 0, np.asarray(z) > 0)


def test_bsq_codes_lie_on_the_unit_sphere():
  q = BSQ(bits=6)
  out = q(jax.random.normal(jax.random.key(2), (100, 6)))
  np.testing.assert_allclose(jnp.linalg.norm(out.quantized, axis=-1), 1.0, atol=1e-6)


def _exact_binary_entropies(logits):
  """Brute force over all 2^D codes."""
  n, d = logits.shape
  bits = np.array(list(itertools.product([0, 1], repeat=d)), np.float64)
  p1 = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  probs = np.prod(np.where(bits[None] == 1, p1[:, None], 1 - p1[:, None]), axis=-1)
  per_sample = np.mean(-np.sum(probs * np.log(probs), -1))
  avg = probs.mean(0)
  return per_sample, -np.sum(avg * np.log(avg))


def test_binary_entropy_is_exact_with_one_group_and_a_sum_over_groups_otherwise():
  logits = 2 * jax.random.normal(jax.random.key(3), (64, 6))
  per_sample, codebook = binary_entropy_terms(logits, 6)
  want_ps, want_cb = _exact_binary_entropies(logits)
  np.testing.assert_allclose(per_sample, want_ps, rtol=1e-5)
  np.testing.assert_allclose(codebook, want_cb, rtol=1e-5)
  _, grouped = binary_entropy_terms(logits, 3)
  parts = [_exact_binary_entropies(logits[:, g:g + 3])[1] for g in (0, 3)]
  np.testing.assert_allclose(grouped, sum(parts), rtol=1e-5)


def test_lfq_loss_matches_its_definition():
  q = LFQ(bits=4, entropy_weight=0.1, diversity_gamma=1.5, commitment_weight=0.25,
          inv_temperature=2.0, entropy_group_bits=4)
  z = jax.random.normal(jax.random.key(5), (128, 4))
  out = q(z)
  # softmax over the 16 codes of -|z - c|^2 * inv_temperature, by brute force
  codes = q.decode(jnp.arange(16))
  logits = -2.0 * jnp.sum((z[:, None] - codes[None]) ** 2, -1)
  probs = jax.nn.softmax(logits, -1)
  per_sample = jnp.mean(entropy(probs))
  codebook = entropy(probs.mean(0))
  commit = jnp.mean((z - jnp.sign(z)) ** 2)
  np.testing.assert_allclose(out.loss, 0.1 * (per_sample - 1.5 * codebook) + 0.25 * commit,
                             rtol=1e-4)


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="levels"):
    FSQ([1, 5])
  with pytest.raises(ValueError, match="levels"):
    FSQ([2, 5])  # 2 needs the symmetric variant
  with pytest.raises(ValueError, match="codebook_size"):
    LFQ(bits=4, codebook_size=32)
  with pytest.raises(ValueError, match="codebook_size"):
    BSQ(codebook_size=1000)
  with pytest.raises(ValueError, match="last dimension 3"):
    FSQ([3, 3, 3])(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="rngs"):
    FSQ([3, 3], dim=8)
  with pytest.raises(ValueError, match="indices"):
    FSQ([3, 3]).decode(jnp.zeros((2,), jnp.float32))


torch = pytest.importorskip("torch")
vqp = pytest.importorskip("vector_quantize_pytorch")


@pytest.mark.parametrize("levels,symmetric", [([8, 5, 5, 5], False), ([4, 4, 3], True)])
def test_fsq_matches_vector_quantize_pytorch(levels, symmetric):
  z = np.random.default_rng(0).normal(size=(2, 300, len(levels))).astype(np.float32) * 2
  ref = vqp.FSQ(levels=levels, preserve_symmetry=symmetric)
  ref_q, ref_idx = ref(torch.from_numpy(z))
  out = FSQ(levels, symmetric=symmetric)(jnp.asarray(z))
  np.testing.assert_array_equal(out.indices, ref_idx.numpy())
  np.testing.assert_allclose(out.quantized, ref_q.numpy(), atol=1e-6)


def test_lfq_matches_vector_quantize_pytorch():
  z = np.random.default_rng(1).normal(size=(2, 64, 8)).astype(np.float32)
  ref = vqp.LFQ(dim=8, codebook_size=256, entropy_loss_weight=0.1, diversity_gamma=1.0,
                commitment_loss_weight=0.25)
  ref_q, ref_idx, ref_loss = ref(torch.from_numpy(z), inv_temperature=100.0)
  out = LFQ(bits=8, entropy_group_bits=8)(jnp.asarray(z))
  np.testing.assert_array_equal(out.indices, ref_idx.numpy())
  np.testing.assert_allclose(out.quantized, ref_q.detach().numpy(), atol=1e-6)
  np.testing.assert_allclose(out.loss, ref_loss.item(), rtol=1e-3, atol=1e-4)
