"""Checkpoints: orbax, async, everything a bit-identical continuation needs.

A checkpoint holds one pytree of arrays (NNX state of the model, optimizer and quantizer
statistics, RNG keys, step counters) and the data iterator's state (a small JSON dict,
e.g. grain's `get_state()`). Typed PRNG keys are stored as their raw key data and
re-wrapped on restore. Restoring onto an abstract tree of `jax.ShapeDtypeStruct`s with
shardings places every array where the caller's mesh wants it.

What a restore checks, in order: the checkpoint's tree (paths, shapes, dtypes, from its
metadata) against the caller's (`CheckpointMismatch`, nothing touched: another model or
another config, not damage), then every array's contents against the checksum written
with it (`CorruptCheckpoint`: bytes changed on disk). A checkpoint that fails the second,
or cannot be read at all, is set aside and the previous one restored.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _small_arrays_from_one_replica() -> None:
  """orbax saves a replicated array in parallel: each replica writes 1/R of it, a slice
  compiled once per device and shape (232 compiles, ~10 s, at the first save of a small
  codec on 8 devices). Below 1 MiB per replica the slicing costs more than it saves, so
  smaller arrays are written by one replica; large ones keep the parallel write. The
  on-disk format is the same. With an orbax whose handler differs, its defaults stand."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  if not hasattr(default, "_array_metadata_store"):
    return
  try:
    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=default._array_metadata_store,
        min_slice_bytes_for_replica_parallel=2**20)
  except TypeError:
    return
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # not a warning: replacing the default is the point
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_log.setLevel(level)


_small_arrays_from_one_replica()


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


class CheckpointMismatch(ValueError):
  """The checkpoint holds another tree than the caller's state: not damage, a different
  model or state layout. Nothing is moved or deleted."""


class CorruptCheckpoint(OSError):
  """A checkpoint whose arrays do not match the checksum saved with them."""


class DiskFull(OSError):
  """Not enough space for the next checkpoint; the previous ones are intact."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """path -> leaf of nested mappings / sequences (paths as 'a/b/0', keys as strings, so a
  tree and orbax's metadata of it compare equal)."""
  if isinstance(tree, Mapping):
    items = tree.items()
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  else:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(_flat(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def _words(x: jax.Array) -> jax.Array:
  """An array's bits as uint32 words (one per element; 8- and 16-bit types widened)."""
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = jnp.dtype(f"uint{x.dtype.itemsize * 8}")
  if x.dtype != unsigned:
    x = jax.lax.bitcast_convert_type(x, unsigned)
  return x.astype(jnp.uint32)


@jax.jit
def _checksum(x: jax.Array) -> jax.Array:
  """(2,) uint32: the sum of an array's words and their position-weighted sum
  (Fletcher-style: a changed, swapped or shifted word changes one of them), mod 2**32.
  Integer sums are exact in any order, so the result does not depend on the sharding."""
  w = _words(x)
  pos = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * pos, dtype=jnp.uint32)])


def checksums(tree: Any) -> dict[str, list[int]]:
  """path -> [sum, weighted sum] of every array of `tree` (keys as their uint32 data).
  One small program per leaf shape, not one over the whole tree: XLA compiles a tree of
  hundreds of leaves in seconds, for every new tree; a leaf's program is reused by every
  leaf, tree and run of that shape (dispatches are async: one wait for all)."""
  flat = _flat(_keys_to_data(tree))
  values = jax.device_get([_checksum(x) for x in flat.values()])
  return {path: [int(a), int(b)] for path, (a, b) in zip(flat, values)}


def tree_size(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(_keys_to_data(tree)))


class Checkpointer:
  """Checkpoints in `directory`, the newest `max_to_keep` kept; saves are async."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep: expected >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self._remove_partial_saves()
    self._saving, self._failed = None, False
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save))

  def _remove_partial_saves(self) -> None:
    """Temporary directories of saves cut short (a crash, a full disk) are deleted: orbax
    only renames a save to its step when it is complete, so nothing in them is a checkpoint."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if ".orbax-checkpoint-tmp" in name:
        print(f"removing {name} in {self.directory}: a save that did not finish",
              file=sys.stderr)
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None) -> bool:
    """Start saving (returns at once when async); True if a checkpoint was started. The
    checksum of every array is saved with it; `DiskFull` (nothing started) when the
    disk cannot hold one more checkpoint of this size."""
    self._wait_for_save()
    self.check_space(tree_size(state), step)
    self._saving = step
    args = {"state": ocp.args.StandardSave(_keys_to_data(state)),
            "meta": ocp.args.JsonSave({"format": 1, "checksums": checksums(state)})}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    try:
      return self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except OSError as e:
      self._raise_as_disk_full(e, step)
      raise

  def check_space(self, state_bytes: int, step: int | str = "next") -> None:
    """`DiskFull` unless the disk has room for one more checkpoint of `state_bytes`
    (orbax writes the new one before deleting the oldest)."""
    need = int(state_bytes * 1.1) + 2**20  # + metadata
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise DiskFull(errno.ENOSPC, self._full_message(step, free, need))

  def _full_message(self, step, free: int, need: int | None = None) -> str:
    steps = self.all_steps()
    need = f", a checkpoint needs about {need / 2**20:,.1f} MiB" if need else ""
    return (f"disk full: {free / 2**20:,.1f} MiB free in {self.directory}{need}; "
            f"checkpoint {step} was not written, the previous ones ({steps or 'none'}) are "
            "intact; free space (or raise log.checkpoint_every / lower "
            "log.keep_checkpoints) and rerun the same command to resume")

  def _raise_as_disk_full(self, e: BaseException, step) -> None:
    """`DiskFull` from `e` when it is one (orbax reports ENOSPC in several guises)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
      raise DiskFull(errno.ENOSPC, self._full_message(
          step, shutil.disk_usage(self.directory).free)) from e

  def _wait_for_save(self) -> None:
    """The previous async save, finished; a disk error in it becomes `DiskFull`."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax re-raises the writer thread's error
      self._failed = True
      self._raise_as_disk_full(e, self._saving)
      raise

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any, dict | None]:
    """(step, state, data_state) of `step` (default the latest readable one) onto
    `abstract_state`'s shapes, dtypes and shardings (arrays or ShapeDtypeStructs).

    Without `step`, a checkpoint that cannot be read (missing files, or contents that
    fail their checksum) is reported, moved to `<directory>-unreadable/` so later saves
    can reuse its step, and the previous one is tried. (A save cut short never looks
    complete: orbax writes to a temporary directory and renames it at the end.) A
    checkpoint of another tree raises `CheckpointMismatch` and nothing is moved."""
    if step is not None:
      if step not in self.all_steps():
        raise FileNotFoundError(f"step: expected one of the checkpoints "
                                f"{self.all_steps()} in {self.directory}, got {step}")
      return self._restore(abstract_state, step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"directory: expected a checkpoint in {self.directory}, "
                              "found none")
    errors = []
    for s in steps:
      try:
        return self._restore(abstract_state, s)
      except CheckpointMismatch:
        raise
      except Exception as e:  # noqa: BLE001 - any read failure: fall back to an older one
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
        print(f"checkpoint {s} in {self.directory} is unreadable ({errors[-1]}); "
              f"trying the previous one", file=sys.stderr)
        self._set_aside(s)
    raise RuntimeError(f"no readable checkpoint in {self.directory}: " + " | ".join(errors))

  def set_aside(self, steps: list[int], why: str) -> str:
    """Move checkpoints `steps` to `<directory>-<why>/` (kept, never deleted); returns it."""
    for s in steps:
      self._set_aside(s, why)
    return f"{self.directory}-{why}"

  def _set_aside(self, step: int, why: str = "unreadable") -> None:
    if jax.process_index() == 0:
      aside = f"{self.directory}-{why}"
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)),
                  os.path.join(aside, f"{step}-{int(time.time())}"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"vqlab set aside checkpoint {step}")
    self.manager.reload()

  def _check_tree(self, abstract_data: Any, step: int) -> None:
    """`CheckpointMismatch` naming the paths whose presence, shape or dtype differ."""
    from etils import epath
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state")
    saved = _flat(metadata.tree)
    want = _flat(abstract_data)
    missing = sorted(set(want) - set(saved))
    extra = sorted(set(saved) - set(want))
    shapes = [f"{p} {tuple(saved[p].shape)} {saved[p].dtype} -> {tuple(want[p].shape)} "
              f"{want[p].dtype}" for p in sorted(set(want) & set(saved))
              if tuple(saved[p].shape) != tuple(want[p].shape)
              or jnp.dtype(saved[p].dtype) != jnp.dtype(want[p].dtype)]
    if missing or extra or shapes:
      parts = [f"{label} ({len(v)}): {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
               for label, v in (("not in the checkpoint", missing),
                                ("only in the checkpoint", extra), ("changed", shapes)) if v]
      raise CheckpointMismatch(f"checkpoint {step} in {self.directory} holds another state "
                               f"than this job's: {'; '.join(parts)}")

  def _restore(self, abstract_state: Any, step: int) -> tuple[int, Any, dict | None]:
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        abstract_state)
    abstract_data = _abstract_key_data(abstract)
    self._check_tree(abstract_data, step)
    args = {"state": ocp.args.StandardRestore(abstract_data)}
    has = {item: os.path.isdir(os.path.join(self.directory, str(step), item))
           for item in ("data", "meta")}
    for item in ("data", "meta"):
      if has[item]:
        args[item] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    if has["meta"]:
      saved, got = restored["meta"]["checksums"], checksums(restored["state"])
      bad = sorted(p for p in got if saved.get(p) != got[p])
      if bad:
        raise CorruptCheckpoint(f"checkpoint {step}: {len(bad)} arrays differ from their "
                                f"checksums ({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''})")
    else:
      print(f"checkpoint {step} in {self.directory} has no checksums (written by an older "
            "vqlab): restored unchecked", file=sys.stderr)
    state = _data_to_keys(restored["state"], abstract_state)
    return step, state, (restored["data"] if has["data"] else None)

  def wait(self) -> None:
    """Block until async saves are on disk (`DiskFull` if the last one ran out of space)."""
    self._wait_for_save()

  def close(self) -> None:
    try:
      if not self._failed:  # a failed save was reported already
        self._wait_for_save()
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 - the failed save's error, raised once above
        if not self._failed:
          raise
