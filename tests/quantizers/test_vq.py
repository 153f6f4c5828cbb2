"""VectorQuantizer: losses, codebook updates, variants; sharded == single device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import data_mesh
from vqlab.quantizers import VectorQuantizer
from vqlab.quantizers.search import nearest_code_naive
from vqlab.quantizers.vq import ema_codebook_update, kmeans, restart_dead_codes


def _z(seed, shape=(8, 16, 6)):
  return jax.random.normal(jax.random.key(seed), shape)


def test_loss_is_codebook_plus_beta_commitment_and_output_is_the_code():
  vq = VectorQuantizer(6, 32, beta=0.3, rngs=nnx.Rngs(0))
  z = _z(0)
  out = vq(z)
  codebook = vq.codebook[...]
  idx, _ = nearest_code_naive(z.reshape(-1, 6), codebook)
  np.testing.assert_array_equal(out.indices.reshape(-1), idx)
  q = codebook[idx].reshape(z.shape)
  np.testing.assert_allclose(out.quantized, q, atol=1e-6)
  np.testing.assert_allclose(out.loss, 1.3 * jnp.mean((z - q) ** 2), rtol=1e-5)
  # Gradients: identity to z through the output; codebook learns from its loss only.
  vq.eval()  # plain jax.grad may not mutate the usage statistics
  g = jax.random.normal(jax.random.key(1), z.shape)
  grads = nnx.grad(lambda m: jnp.sum(m(z).quantized * g))(vq)
  np.testing.assert_array_equal(grads["codebook"][...], 0.0)
  dz = jax.grad(lambda z: jnp.sum(vq(z).quantized * g))(z)
  np.testing.assert_allclose(dz, g, atol=1e-6)


def test_ema_update_matches_its_formula():
  k, d, decay, eps = 5, 3, 0.9, 1e-5
  rng = np.random.default_rng(0)
  z = rng.normal(size=(40, d)).astype(np.float32)
  idx = rng.integers(0, k, size=40).astype(np.int32)
  size0, sum0 = rng.uniform(1, 2, size=k), rng.normal(size=(k, d))
  size, sums, codebook = ema_codebook_update(jnp.asarray(size0), jnp.asarray(sum0),
                                             jnp.asarray(z), jnp.asarray(idx), decay, eps)
  counts = np.bincount(idx, minlength=k)
  want_size = size0 * decay + counts * (1 - decay)
  want_sum = sum0 * decay + np.stack([z[idx == i].sum(0) for i in range(k)]) * (1 - decay)
  n = want_size.sum()
  smoothed = (want_size + eps) / (n + k * eps) * n
  np.testing.assert_allclose(size, want_size, rtol=1e-5)
  np.testing.assert_allclose(sums, want_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(codebook, want_sum / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_kmeans_finds_separated_clusters():
  centres = 10 * jax.random.normal(jax.random.key(0), (6, 4))
  z = (centres[jnp.arange(600) % 6] + 0.1 * jax.random.normal(jax.random.key(1), (600, 4)))
  found, counts = kmeans(z, 6, jax.random.key(2), iters=20)
  # Every true centre has a found centre within the noise level.
  dist = jnp.linalg.norm(centres[:, None] - found[None], axis=-1).min(axis=1)
  assert float(dist.max()) < 0.1
  np.testing.assert_array_equal(np.sort(counts), [100] * 6)


def test_kmeans_with_fewer_rows_than_codes_uses_every_row():
  z = jax.random.normal(jax.random.key(3), (5, 3))
  centres, counts = kmeans(z, 300, jax.random.key(4), iters=3)
  assert centres.shape == (300, 3) and float(counts.sum()) == 5
  # every row is its own centre: the quantization error is zero
  np.testing.assert_allclose(nearest_code_naive(z, centres)[1], 0.0, atol=1e-5)


def test_dead_codes_restart_from_batch_rows():
  codebook = jnp.zeros((4, 2))
  usage = jnp.array([5.0, 0.0, 3.0, 0.1])
  z = jnp.arange(20.0).reshape(10, 2)
  new, dead = restart_dead_codes(codebook, usage, z, 1.0, jax.random.key(0))
  np.testing.assert_array_equal(dead, [False, True, False, True])
  np.testing.assert_array_equal(new[0], 0.0)
  for row in new[dead]:
    assert any(np.array_equal(row, zr) for zr in np.asarray(z))


def test_module_restarts_codes_nobody_uses():
  vq = VectorQuantizer(6, 64, dead_code_threshold=0.5, rngs=nnx.Rngs(0))
  z = _z(3) + 100.0  # far from every initial code: a single code wins everything
  vq(z)
  codes = np.asarray(vq.codebook[...])
  batch = np.asarray(z.reshape(-1, 6))
  from_batch = sum(any(np.allclose(c, b) for b in batch) for c in codes)
  assert from_batch >= 60  # all but the few codes that were hit come from the batch
  assert float(vq(z).metrics["usage"]) > 0.3


def _vq_variants():
  return {
      "ema+kmeans+restart": dict(codebook="ema", kmeans_init=True, dead_code_threshold=0.5),
      "learned+kmeans+restart": dict(kmeans_init=True, dead_code_threshold=0.5),
      "cosine+lowdim": dict(metric="cosine", code_dim=3),
  }


@pytest.mark.parametrize("variant", list(_vq_variants()))
def test_sharded_batch_gives_the_single_device_update(variant):
  """Statistics are computed on global arrays under jit: 8 data shards == 1 device."""
  kwargs = _vq_variants()[variant]
  vq = VectorQuantizer(6, 32, rngs=nnx.Rngs(0), **kwargs)
  graphdef, state = nnx.split(vq)

  @jax.jit
  def step(state, z):
    model = nnx.merge(graphdef, state)
    out = model(z)
    return nnx.state(model), out

  z = _z(4, (16, 8, 6))
  ref_state, ref_out = step(state, z)
  mesh = data_mesh()
  z_sharded = jax.device_put(z, NamedSharding(mesh, P("data")))
  assert len(z_sharded.sharding.device_set) == 8
  got_state, got_out = step(state, z_sharded)
  np.testing.assert_array_equal(got_out.indices, ref_out.indices)
  got_state, ref_state = (nnx.state(s, nnx.Not(nnx.RngState)) for s in (got_state, ref_state))
  for (path, a), (_, b) in zip(nnx.to_flat_state(got_state), nnx.to_flat_state(ref_state)):
    np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-6, err_msg=str(path))
  for key in ref_out.metrics:
    np.testing.assert_allclose(got_out.metrics[key], ref_out.metrics[key], rtol=1e-5,
                               err_msg=key)


def test_kmeans_init_runs_once_and_ema_codebook_tracks_data():
  vq = VectorQuantizer(6, 16, codebook="ema", kmeans_init=True, rngs=nnx.Rngs(0))
  z = _z(5, (64, 6))
  vq(z)
  first = np.asarray(vq.codebook[...])
  assert bool(vq.initialized[...])
  # The k-means codebook fits the batch far better than the random initial one.
  err = jnp.mean(nearest_code_naive(z, jnp.asarray(first))[1])
  assert float(err) < 0.5 * float(jnp.mean(jnp.sum(z**2, -1)))
  # On the same batch the k-means centres are a fixed point of the EMA update ...
  vq(z)
  np.testing.assert_allclose(vq.codebook[...], first, rtol=1e-4, atol=1e-5)
  # ... and a new batch moves them a little (EMA), rather than re-running k-means.
  vq(_z(6, (64, 6)))
  step = np.abs(np.asarray(vq.codebook[...]) - first).max()
  assert 1e-4 < step < 0.2


@pytest.mark.parametrize("kind", ["simvq", "vqgan-lc"])
def test_projected_codebook_trains_only_the_projection(kind):
  frozen = jax.random.normal(jax.random.key(9), (32, 10)) if kind == "vqgan-lc" else None
  vq = VectorQuantizer(6, 32, codebook="projected", frozen_codebook=frozen, rngs=nnx.Rngs(0))
  params = nnx.state(vq, nnx.Param)
  assert [str(p[-2]) for p, _ in nnx.to_flat_state(params)] == ["projector"]
  frozen_before = np.asarray(vq.frozen[...])
  opt = nnx.Optimizer(vq, optax.adam(3e-2), wrt=nnx.Param)
  z = _z(6)

  @nnx.jit
  def train_step(vq, opt):
    loss, grads = nnx.value_and_grad(lambda m: m(z).loss)(vq)
    opt.update(vq, grads)
    return loss

  losses = [float(train_step(vq, opt)) for _ in range(60)]
  assert losses[-1] < 0.8 * losses[0]
  np.testing.assert_array_equal(vq.frozen[...], frozen_before)
  np.testing.assert_allclose(vq.codes(), vq.frozen[...] @ vq.projector.kernel[...], rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(), dict(estimator="rotation"), dict(estimator="ibq"),
                                    dict(estimator="gumbel"), dict(codebook="ema"),
                                    dict(metric="cosine", code_dim=4),
                                    dict(codebook="projected")])
def test_decode_reproduces_the_eval_output(kwargs):
  vq = VectorQuantizer(6, 32, rngs=nnx.Rngs(0), **kwargs)
  vq.eval()
  z = _z(7)
  out = vq(z)
  np.testing.assert_allclose(vq.decode(out.indices), out.quantized, atol=1e-5)


def test_bf16_input_keeps_dtype_and_float32_indices():
  vq = VectorQuantizer(6, 512, rngs=nnx.Rngs(0))
  vq.eval()
  z = (_z(8, (64, 64, 6)) * 0.002).astype(jnp.bfloat16)
  out16, out32 = vq(z), vq(z.astype(jnp.float32))
  assert out16.quantized.dtype == jnp.bfloat16 and out16.indices.dtype == jnp.int32
  np.testing.assert_array_equal(out16.indices, out32.indices)
  assert int(out16.indices.max()) > 256


def test_mask_excludes_rows_from_losses_and_statistics():
  vq = VectorQuantizer(6, 32, rngs=nnx.Rngs(0))
  vq.eval()
  z = _z(10, (4, 5, 6))
  mask = jnp.arange(20).reshape(4, 5) < 7
  masked = vq(z, mask=mask)
  kept = vq(z.reshape(20, 6)[:7])
  np.testing.assert_allclose(masked.loss, kept.loss, rtol=1e-5)
  np.testing.assert_allclose(masked.metrics["usage"], kept.metrics["usage"])


def test_bad_arguments_name_what_was_expected():
  r = nnx.Rngs(0)
  with pytest.raises(ValueError, match="last dimension 6"):
    VectorQuantizer(6, 8, rngs=r)(jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="metric"):
    VectorQuantizer(6, 8, metric="dot", rngs=r)
  with pytest.raises(ValueError, match="codebook"):
    VectorQuantizer(6, 8, codebook="magic", rngs=r)
  with pytest.raises(ValueError, match="codebook_size"):
    VectorQuantizer(6, 0, rngs=r)
  with pytest.raises(ValueError, match="frozen_codebook"):
    VectorQuantizer(6, 8, codebook="projected", frozen_codebook=jnp.zeros((9, 3)), rngs=r)
  with pytest.raises(ValueError, match="kmeans_init"):
    VectorQuantizer(6, 8, codebook="projected", kmeans_init=True, rngs=r)
  with pytest.raises(ValueError, match="mask"):
    VectorQuantizer(6, 8, rngs=r)(jnp.zeros((2, 6)), mask=jnp.ones((3,), bool))
  with pytest.raises(ValueError, match="indices"):
    VectorQuantizer(6, 8, rngs=r).decode(jnp.zeros((2,)))
