"""Mesh construction, FSDP placement, and a sharded train step equal to one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import quantizer_study as study_config
from vqlab import parallel
from vqlab.data.digits import load_mnist_digits
from vqlab.train import quantizer_study


def test_mesh_sizes_and_errors():
  mesh = parallel.make_mesh({"data": -1, "fsdp": 4})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="expected axes"):
    parallel.make_mesh({"model": 2})
  with pytest.raises(ValueError, match="do not split"):
    parallel.make_mesh({"data": -1, "fsdp": 3})


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((6, 1024), 4) == P(None, "fsdp")
  assert parallel.fsdp_spec((1030, 5), 4) == P()  # nothing divisible: replicated
  assert parallel.fsdp_spec((16,), 4) == P()      # small: replicated


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 2, "fsdp": 4}],
                         ids=["data", "data+fsdp"])
def test_sharded_train_step_matches_one_device(mesh_shape):
  config = study_config.get_config("runlocal")
  config.width = 32  # conv kernels of 3*3*32*32 = 9,216 elements: big enough to FSDP-shard
  model = quantizer_study.build_model(config, "vq_ema_restart", 0)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  images = jnp.asarray(load_mnist_digits()[0][:16])

  def step(state, images):
    model, optimizer = nnx.merge(graphdef, state)
    metrics = quantizer_study.train_step_fn(model, optimizer, images)
    return nnx.state((model, optimizer)), metrics

  ref_state, ref_metrics = jax.jit(step)(state, images)
  mesh = parallel.make_mesh(mesh_shape)
  shardings = parallel.state_shardings(state, mesh, min_fsdp_size=4096)
  sharded = jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(shardings, None))
  state_on_mesh = jax.device_put(state, shardings)
  if "fsdp" in mesh_shape:  # parameters really are split
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any("fsdp" in spec for spec in specs)
  got_state, got_metrics = sharded(state_on_mesh, jax.device_put(images, parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(got_metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(nnx.state(got_state, nnx.Param)),
                  jax.tree.leaves(nnx.state(ref_state, nnx.Param))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
