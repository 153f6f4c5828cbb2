"""Checkpoints: orbax, async, everything a bit-identical continuation needs.

A checkpoint holds one pytree of arrays (NNX state of the model, optimizer and quantizer
statistics, RNG keys, step counters) and the data iterator's state (a small JSON dict,
e.g. grain's `get_state()`). Typed PRNG keys are stored as their raw key data and
re-wrapped on restore. Restoring onto an abstract tree of `jax.ShapeDtypeStruct`s with
shardings places every array where the caller's mesh wants it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_key_data(tree: Any) -> Any:
  """The abstract tree orbax restores: key leaves become their uint32 key data."""
  def leaf(x):
    if not _is_key(x):
      return x
    data = jax.eval_shape(jax.random.key_data, x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


def _data_to_keys(tree: Any, like: Any) -> Any:
  def leaf(x, ref):
    if not _is_key(ref):
      return x
    if isinstance(ref, jax.ShapeDtypeStruct):  # no array to ask: the default key impl
      return jax.random.wrap_key_data(x)
    return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
  return jax.tree.map(leaf, tree, like)


class Checkpointer:
  """Checkpoints in `directory`, the newest `max_to_keep` kept; saves are async."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep: expected >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None) -> bool:
    """Start saving (returns at once when async); True if a checkpoint was started."""
    args = {"state": ocp.args.StandardSave(_keys_to_data(state))}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any, dict | None]:
    """(step, state, data_state) of `step` (default the latest readable one) onto
    `abstract_state`'s shapes, dtypes and shardings (arrays or ShapeDtypeStructs).

    Without `step`, a checkpoint that cannot be read (corrupt or missing files) is
    reported, moved to `<directory>-unreadable/` so later saves can reuse its step, and
    the previous one is tried. (A save cut short never looks complete: orbax writes to a
    temporary directory and renames it at the end.)"""
    if step is not None:
      return self._restore(abstract_state, step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"directory: expected a checkpoint in {self.directory}, "
                              "found none")
    errors = []
    for s in steps:
      try:
        return self._restore(abstract_state, s)
      except Exception as e:  # noqa: BLE001 - any read failure: fall back to an older one
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
        print(f"checkpoint {s} in {self.directory} is unreadable ({errors[-1]}); "
              f"trying the previous one", file=sys.stderr)
        self._set_aside(s)
    raise RuntimeError(f"no readable checkpoint in {self.directory}: " + " | ".join(errors))

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      aside = self.directory + "-unreadable"
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)),
                  os.path.join(aside, f"{step}-{int(time.time())}"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"vqlab set aside checkpoint {step}")
    self.manager.reload()

  def _restore(self, abstract_state: Any, step: int) -> tuple[int, Any, dict | None]:
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        abstract_state)
    args = {"state": ocp.args.StandardRestore(_abstract_key_data(abstract))}
    has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    state = _data_to_keys(restored["state"], abstract_state)
    return step, state, (restored["data"] if has_data else None)

  def wait(self) -> None:
    """Block until async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
