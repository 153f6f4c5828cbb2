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


def test_logical_spec_follows_the_rules():
  mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  spec = lambda shape, names, **kw: parallel.logical_spec(shape, names, mesh, **kw)
  assert spec((256, 1024), ("embed", "mlp")) == P("fsdp", "tensor")
  assert spec((1024, 256), ("mlp", "embed")) == P("tensor", "fsdp")
  assert spec((1025, 256), ("vocab", "embed")) == P(None, "fsdp")  # 1025 not divisible
  assert spec((11, 256), (None, "embed"), min_fsdp_size=4096) == P(None, None)  # small
  assert spec((256, 256), ("heads", "mlp")) == P("tensor", None)  # one mesh axis per array
  with pytest.raises(ValueError, match="do not fit"):
    spec((4, 4), ("embed",))


def _generators():
  from vqlab.models.generators import MaskedGenerator, NextScaleGenerator, NextTokenGenerator
  from vqlab.nn.transformer import TransformerShape
  plain = TransformerShape(width=64, depth=2, heads=4, qk_norm="rms")
  var = TransformerShape(width=64, depth=2, heads=4, norm="layer", mlp="gelu", qk_norm="l2",
                         adaln=True, qkv_bias=True)
  rngs = nnx.Rngs(0)
  return {"raster": NextTokenGenerator(plain, 32, 5, 4, positions="learned", rngs=rngs),
          "maskgit": MaskedGenerator(plain, 32, 5, 4, rngs=rngs),
          "var": NextScaleGenerator(var, 32, 5, (1, 2, 4), 8, rngs=rngs)}


@pytest.mark.parametrize("kind", ["raster", "maskgit", "var"])
def test_every_generator_parameter_names_its_axes(kind):
  params = nnx.state(_generators()[kind], nnx.Param)
  leaves = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  assert len(leaves) > 10
  for path, v in leaves:
    names = v.get_metadata().get("logical_axes")
    assert names is not None and len(names) == v.get_value().ndim, jax.tree_util.keystr(path)


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["data", "fsdp", "data+fsdp+tensor"])
def test_generator_trajectory_on_8_devices_matches_one_device(mesh_shape):
  model = _generators()["raster"]
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 32)
  labels = jnp.arange(8) % 5

  def step(state, tokens, labels):
    model, optimizer = nnx.merge(graphdef, state)
    def loss_fn(model):
      logits = model(tokens, labels)
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), (loss, grads)

  one = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ref_step = jax.jit(step, in_shardings=(parallel.state_shardings(state, one),
                                         parallel.batch_sharding(one),
                                         parallel.batch_sharding(one)))
  mesh = parallel.make_mesh(mesh_shape)
  shardings = parallel.state_shardings(state, mesh, min_fsdp_size=1024)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  if "tensor" in mesh_shape:
    assert P("fsdp", "tensor") in specs and P("tensor", "fsdp") in specs
    # Adam's two moments keep the parameters' names, so they are split the same way
    param_specs = [s.spec for s in jax.tree.leaves(
        parallel.state_shardings(nnx.state(model, nnx.Param), mesh, min_fsdp_size=1024))]
    for spec in (P("fsdp", "tensor"), P("tensor", "fsdp")):
      assert specs.count(spec) == 3 * param_specs.count(spec) > 0
  batch = parallel.batch_sharding(mesh)
  sharded = jax.jit(step, in_shardings=(shardings, batch, batch), out_shardings=(shardings, None))
  ref_state, got_state = state, jax.device_put(state, shardings)
  for i in range(3):  # the loss trajectory, and the first step's gradients
    toks = jnp.roll(tokens, i, axis=1)
    ref_state, (ref_loss, ref_grads) = ref_step(ref_state, toks, labels)
    got_state, (got_loss, got_grads) = sharded(got_state, jax.device_put(toks, batch),
                                               jax.device_put(labels, batch))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    if i == 0:
      for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # Adam divides by sqrt(v): where a gradient is near zero, the other device count's
  # rounding (which differs between CPUs) can turn it into a full-size update of the other
  # sign. So: every parameter and moment within the most 3 steps of Adam at lr 1e-2 can
  # move one apart (2 x 3 x lr), and all but one entry in a thousand within 1e-3 / 5e-4;
  # a sharding bug moves whole arrays.
  compared, entries, off = 0, 0, 0
  for a, b in zip(jax.tree.leaves(got_state), jax.tree.leaves(ref_state)):
    if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):  # parameters and Adam moments
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      np.testing.assert_array_less(np.abs(a - b), 2 * 3 * 1e-2 + 1e-7)
      off += int(np.sum(np.abs(a - b) > 5e-4 + 1e-3 * np.abs(b)))
      entries += a.size
      compared += 1
  assert compared > 3 * 20 and off <= entries // 1000, (off, entries)
