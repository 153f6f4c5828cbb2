"""Each custom VJP against its analytic gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.quantizers import estimators

sg = jax.lax.stop_gradient


def _rows(seed, n=37, d=6, k=11):
  keys = jax.random.split(jax.random.key(seed), 4)
  z = jax.random.normal(keys[0], (n, d))
  c = jax.random.normal(keys[1], (k, d))
  g = jax.random.normal(keys[2], (n, d))
  return z, c, g, keys[3]


def test_straight_through_passes_gradient_to_input_only():
  z, c, g, _ = _rows(0)
  q = jnp.take(c, jnp.arange(z.shape[0]) % c.shape[0], axis=0)
  out, vjp = jax.vjp(estimators.straight_through, z, q)
  dz, dq = vjp(g)
  np.testing.assert_array_equal(out, q)
  np.testing.assert_array_equal(dz, g)
  np.testing.assert_array_equal(dq, jnp.zeros_like(q))


def _rotation_surrogate(e, q):
  """Fifty et al. eq. 4 written out: sg(|q|/|e| R) e with R = I - 2rr^T + 2 q^ e^^T."""
  def one(e, q):
    e_hat, q_hat = e / jnp.linalg.norm(e), q / jnp.linalg.norm(q)
    r = (e_hat + q_hat) / jnp.linalg.norm(e_hat + q_hat)
    rot = jnp.eye(e.shape[0]) - 2 * jnp.outer(r, r) + 2 * jnp.outer(q_hat, e_hat)
    return sg(jnp.linalg.norm(q) / jnp.linalg.norm(e) * rot) @ e
  return jax.vmap(one)(e, sg(q))


def test_rotation_trick_matches_explicit_rotation():
  z, c, g, _ = _rows(1)
  q = jnp.take(c, jnp.arange(z.shape[0]) % 11, axis=0)
  out, vjp = jax.vjp(estimators.rotation_trick, z, q)
  dz, dq = vjp(g)
  # The explicit rotation maps z onto q exactly: the forward pass is the code.
  np.testing.assert_allclose(_rotation_surrogate(z, q), q, atol=1e-5)
  np.testing.assert_array_equal(out, q)
  _, ref_vjp = jax.vjp(_rotation_surrogate, z, q)
  ref_dz, ref_dq = ref_vjp(g)
  np.testing.assert_allclose(dz, ref_dz, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(dq, 0 * ref_dq)
  # A rotation times |q|/|e| scales every gradient's norm by exactly that ratio.
  ratio = jnp.linalg.norm(q, axis=-1) / jnp.linalg.norm(z, axis=-1)
  np.testing.assert_allclose(jnp.linalg.norm(dz, axis=-1), ratio * jnp.linalg.norm(g, axis=-1),
                             rtol=1e-5)


def test_rotation_trick_is_identity_when_code_equals_input():
  z, _, g, _ = _rows(2)
  _, vjp = jax.vjp(estimators.rotation_trick, z, z)
  np.testing.assert_allclose(vjp(g)[0], g, atol=1e-5)


@pytest.mark.parametrize("block_size", [10_000, 50])  # one chunk, and many uneven chunks
def test_index_backprop_matches_soft_one_hot_surrogate(block_size):
  z, c, g, _ = _rows(3)
  idx = jnp.argmax(z @ c.T, axis=-1).astype(jnp.int32)

  def surrogate(z, c):
    p = jax.nn.softmax(z @ c.T, axis=-1)
    w = jax.nn.one_hot(idx, c.shape[0]) - sg(p) + p
    return w @ c

  out, vjp = jax.vjp(lambda z, c: estimators.index_backprop(z, c, idx, block_size), z, c)
  ref_out, ref_vjp = jax.vjp(surrogate, z, c)
  np.testing.assert_allclose(out, ref_out, atol=1e-6)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_index_backprop_input_gradient_is_the_soft_path_derivative():
  """d/dz equals the finite-difference derivative of softmax(zC^T) C."""
  z, c, g, _ = _rows(4, n=5, d=3, k=4)
  idx = jnp.argmax(z @ c.T, axis=-1).astype(jnp.int32)
  _, vjp = jax.vjp(lambda z: estimators.index_backprop(z, c, idx), z)
  soft = lambda z: jax.nn.softmax(z @ c.T, axis=-1) @ c
  eps = 1e-3
  numeric = np.zeros(z.shape)
  for i in range(z.shape[0]):
    for j in range(z.shape[1]):
      dz = jnp.zeros_like(z).at[i, j].set(eps)
      numeric[i, j] = jnp.sum(g * (soft(z + dz) - soft(z - dz))) / (2 * eps)
  np.testing.assert_allclose(vjp(g)[0], numeric, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_gumbel_softmax_matches_relaxed_surrogate(temperature):
  z, c, g, key = _rows(5)
  noise = jax.random.gumbel(key, (z.shape[0], c.shape[0]))
  logits = -jnp.sum((z[:, None] - c[None]) ** 2, -1)
  idx = jnp.argmax(logits + noise, axis=-1).astype(jnp.int32)

  def surrogate(z, c):
    lg = -jnp.sum((z[:, None] - c[None]) ** 2, -1)
    y = jax.nn.softmax((lg + noise) / temperature, axis=-1)
    return (jax.nn.one_hot(idx, c.shape[0]) - sg(y) + y) @ c

  fn = lambda z, c: estimators.gumbel_softmax(z, c, noise, idx, temperature, 64)
  out, vjp = jax.vjp(fn, z, c)
  ref_out, ref_vjp = jax.vjp(surrogate, z, c)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unknown_estimator_is_rejected():
  with pytest.raises(ValueError, match="estimator: expected one of"):
    estimators.check_estimator("magic")
