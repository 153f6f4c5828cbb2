"""Meshes and array placement for sharded jobs (jit + NamedSharding, no pmap).

The mesh has the named axes ("data", "fsdp", "tensor"). Batches are split over
("data", "fsdp"); parameters and optimizer state are FSDP-sharded by default: each
array of at least `min_fsdp_size` elements is split along its largest dimension that the
fsdp axis divides, everything else is replicated. (Logical-axis rules for tensor
parallelism are issue 6's; this default needs no annotations on the model.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
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


def state_shardings(state, mesh: Mesh, min_fsdp_size: int = 2**12):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs): FSDP as above."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp, min_fsdp_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data and fsdp devices."""
  return NamedSharding(mesh, P(("data", "fsdp")))
