"""Meshes and array placement for sharded jobs (jit + NamedSharding, no pmap).

The mesh has the named axes ("data", "fsdp", "tensor"). Batches are split over
("data", "fsdp"). Parameters (and the optimizer state and EMA copies, which keep the
parameters' metadata) are placed by their `logical_axes` metadata through `RULES`
(logical name -> mesh axis): the transformer's width over fsdp, its hidden, head and
vocabulary axes over tensor; conv kernels' input channels over fsdp, output channels
over tensor. A rule is skipped where the mesh axis does not divide the
dimension, where an earlier dimension already took that mesh axis, or (fsdp) where the
array has fewer than `min_fsdp_size` elements. Arrays without names (norms, codebooks,
the discriminator, attention of the ViT) are FSDP-sharded along their largest dimension
that fsdp divides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A mesh over `devices` (default all) with sizes {axis: n}; one axis may be -1 (the
  rest). Unnamed axes have size 1; default: everything on "data"."""
  shape = dict(shape or {"data": -1})
  unknown = sorted(set(shape) - set(AXES))
  if unknown:
    raise ValueError(f"mesh: expected axes among {AXES}, got {unknown}")
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = [shape.get(a, 1) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: expected at most one axis of size -1, got {shape}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if devices.size % known:
      raise ValueError(f"mesh: {devices.size} devices do not split into {shape}")
    sizes[sizes.index(-1)] = devices.size // known
  if math.prod(sizes) != devices.size:
    raise ValueError(f"mesh: expected sizes whose product is {devices.size} devices, got "
                     f"{dict(zip(AXES, sizes))}")
  return Mesh(devices.reshape(sizes), AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_fsdp_size: int = 2**12) -> P:
  """Split the largest dimension that `fsdp` divides; replicate small arrays."""
  if fsdp == 1 or math.prod(shape) < min_fsdp_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])
  return P()


def parse_rules(text: str) -> tuple[tuple[str, str | None], ...]:
  """"embed=fsdp,mlp=tensor,vocab=none" -> rules (the config's `mesh.rules`)."""
  rules = []
  for item in filter(None, (t.strip() for t in text.split(","))):
    name, sep, axis = item.partition("=")
    if not sep or not name.strip() or axis.strip() not in AXES + ("none",):
      raise ValueError(f"mesh.rules: expected 'logical=mesh_axis' items with a mesh axis in "
                       f"{AXES} or none, got {item!r}")
    rules.append((name.strip(), None if axis.strip() == "none" else axis.strip()))
  return tuple(rules)


# logical axis -> mesh axis (the configs' default `mesh.rules`); names not listed (None,
# "classes", ...) stay replicated
DEFAULT_RULES = "embed=fsdp,mlp=tensor,heads=tensor,vocab=tensor,conv_in=fsdp,conv_out=tensor"
RULES = parse_rules(DEFAULT_RULES)


def config_shardings(state, mesh: Mesh, mesh_config):
  """`state_shardings` with the config's `mesh.min_fsdp_size` and `mesh.rules`."""
  return state_shardings(state, mesh, mesh_config.min_fsdp_size,
                         parse_rules(mesh_config.rules))


def logical_spec(shape: tuple[int, ...], names: tuple, mesh_shape: Mapping[str, int],
                 rules=RULES, min_fsdp_size: int = 2**12) -> P:
  """The PartitionSpec of an array whose dimensions are named `names` (see above)."""
  if len(names) != len(shape):
    raise ValueError(f"logical_axes {names} do not fit an array of shape {shape}")
  rules, taken, spec = dict(rules), set(), []
  for dim, name in zip(shape, names):
    axis = rules.get(name)
    n = mesh_shape.get(axis, 1)
    small = axis == "fsdp" and math.prod(shape) < min_fsdp_size
    if axis is None or n == 1 or dim % n or axis in taken or small:
      spec.append(None)
    else:
      spec.append(axis)
      taken.add(axis)
  return P(*spec)


def state_shardings(state, mesh: Mesh, min_fsdp_size: int = 2**12, rules=RULES):
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs / nnx Variables."""
  def place(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("logical_axes")
      shape = tuple(np.shape(x.get_value()))
      spec = (logical_spec(shape, names, mesh.shape, rules, min_fsdp_size) if names
              else fsdp_spec(shape, mesh.shape["fsdp"], min_fsdp_size))
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), mesh.shape["fsdp"], min_fsdp_size))
  return jax.tree.map(place, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data and fsdp devices."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def _bytes(x, sharding=None) -> tuple[int, int]:
  """(global bytes, bytes on one device) of an array or ShapeDtypeStruct."""
  dtype = x.dtype
  itemsize = (jax.random.key_data(jnp.zeros((), dtype)).nbytes  # typed PRNG keys
              if jnp.issubdtype(dtype, jax.dtypes.prng_key) else np.dtype(dtype).itemsize)
  local = sharding.shard_shape(x.shape) if sharding is not None else x.shape
  return math.prod(x.shape) * itemsize, math.prod(local) * itemsize


def state_bytes(state) -> int:
  return sum(_bytes(x)[0] for x in jax.tree.leaves(state))


def placement_report(mesh: Mesh, state, shardings) -> str:
  """The mesh, processes and devices, and the state's memory in total and per device,
  split into optimizer state (leaves under an `opt_state`) and the rest."""
  totals = {"optimizer": [0, 0], "parameters and statistics": [0, 0]}
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  for (path, x), sharding in zip(flat, jax.tree.leaves(shardings)):
    kind = "optimizer" if "opt_state" in jax.tree_util.keystr(path) else "parameters and statistics"
    whole, local = _bytes(x, sharding)
    totals[kind][0] += whole
    totals[kind][1] += local
  mib = lambda b: f"{b / 2**20:,.1f} MiB"
  parts = "; ".join(f"{k} {mib(t)} ({mib(d)} per device)" for k, (t, d) in totals.items())
  return (f"mesh {dict(mesh.shape)}: {jax.device_count()} {jax.devices()[0].platform} "
          f"devices, {jax.process_count()} process(es); {parts}")


def put(tree, shardings):
  """`jax.device_put` that also works when the shardings span several processes: every
  process passes the same host values (as after a seeded init) and keeps its shards."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, sharding):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = one(jax.random.key_data(x), NamedSharding(sharding.mesh, P()))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(one, tree, shardings)


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly multi-process, batch-sharded) array as numpy; with
  several processes every process must call it (it is a collective)."""
  if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
