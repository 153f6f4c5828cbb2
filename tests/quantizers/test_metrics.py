"""Code statistics: definitions, and the same numbers when the batch is sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import data_mesh
from vqlab.quantizers import BSQ, FSQ, LFQ, ResidualVQ
from vqlab.quantizers.core import code_counts, usage_metrics


def test_usage_entropy_perplexity_definitions():
  idx = jnp.array([0, 0, 1, 3, 3, 3, 3, 3], jnp.int32)
  m = usage_metrics(code_counts(idx, 8))
  p = np.array([2, 1, 0, 5]) / 8
  h = -np.sum(p[p > 0] * np.log(p[p > 0]))
  np.testing.assert_allclose(m["usage"], 3 / 8)
  np.testing.assert_allclose(m["entropy"], h, rtol=1e-6)
  np.testing.assert_allclose(m["perplexity"], np.exp(h), rtol=1e-6)


def test_ema_usage_follows_recent_batches():
  fsq = FSQ([3, 3], usage_decay=0.9)
  z_all = jnp.stack(jnp.meshgrid(jnp.linspace(-2, 2, 9), jnp.linspace(-2, 2, 9)), -1).reshape(-1, 2)
  first = fsq(z_all)  # every code: the EMA starts at these counts
  assert float(first.metrics["ema_usage"]) == 1.0
  corner = jnp.full((81, 2), 2.0)  # then only one code, for long enough to forget
  for _ in range(100):  # 9 * 0.9^100 < 1e-3, the usage threshold
    out = fsq(corner)
  assert float(out.metrics["ema_usage"]) == pytest.approx(1 / 9)


@pytest.mark.parametrize("make", [lambda: FSQ([8, 5, 5, 5]), lambda: LFQ(bits=4),
                                  lambda: BSQ(bits=4),
                                  lambda: ResidualVQ(4, 16, 3, kmeans_init=True,
                                                     rngs=nnx.Rngs(0))],
                         ids=["fsq", "lfq", "bsq", "rvq"])
def test_metrics_are_the_same_with_a_sharded_batch(make):
  graphdef, state = nnx.split(make())

  @jax.jit
  def step(state, z):
    model = nnx.merge(graphdef, state)
    out = model(z)
    return out.metrics, out.loss, nnx.state(model, nnx.Not(nnx.RngState))

  z = jax.random.normal(jax.random.key(0), (32, 16, 4))
  ref = step(state, z)
  got = step(state, jax.device_put(z, NamedSharding(data_mesh(), P("data"))))
  for key in ref[0]:
    np.testing.assert_allclose(got[0][key], ref[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(got[1], ref[1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(ref[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
