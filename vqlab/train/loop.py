"""The training loop every trainer shares: workdir checks, resume, the step loop with
metrics / periodic work / checkpoints, and state <-> checkpoint conversion.

A trainer's state is a dict whose values are `nnx.State`s (model, optimizers, EMA ...)
or plain arrays; checkpoints hold it as pure nested dicts plus the grain iterator state.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from tqdm import tqdm

from vqlab import parallel
from vqlab.checkpoint import Checkpointer
from vqlab.train.common import MetricWriter, check_free_space, check_workdir


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    fixed_sections: Sequence[str]) -> None:
  """A writable workdir; one with checkpoints resumes only if `fixed_sections` of the
  config (the model's shape) are unchanged: nothing there is touched otherwise."""
  check_workdir(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json())
  changed = [f"{section}.{k}" for section in fixed_sections
             for k in sorted(set(old.get(section, {})) | set(new[section]))
             if old.get(section, {}).get(k) != new[section].get(k)]
  if changed:
    raise ValueError(f"config: {workdir!r} holds checkpoints of another model (changed: "
                     f"{changed}); use a new workdir, nothing there was touched")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir: expected a run (config.json) in {workdir!r}")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def to_checkpoint(state: dict) -> dict:
  """Pure nested dicts of arrays: what orbax stores."""
  return {k: nnx.to_pure_dict(v) if isinstance(v, nnx.State) else v for k, v in state.items()}


def from_checkpoint(template: dict, restored: dict) -> dict:
  """The restored arrays put back into the template's `nnx.State`s (in place)."""
  out = {}
  for k, v in template.items():
    if isinstance(v, nnx.State):
      nnx.replace_by_pure_dict(v, restored[k])
      out[k] = v
    else:
      out[k] = restored[k]
  return out


def checkpointer(workdir: str, keep: int) -> Checkpointer:
  return Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep)


def restore_run(workdir: str, state: dict, step: int | None = None) -> tuple[int, dict]:
  """(step, state) of a finished or running run's checkpoint (default the latest)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    step, restored, _ = ckpt.restore(to_checkpoint(state), step)
  finally:
    ckpt.close()
  return step, from_checkpoint(state, restored)


def restore_placed(workdir: str, init_state: Callable, step: int | None = None, mesh=None):
  """(config, graphdef, state, step) of a run's checkpoint (default the latest), its state
  template from `init_state(config)`, placed on `mesh` (default: every device,
  parameters replicated)."""
  config = load_config(workdir)
  mesh = mesh or parallel.make_mesh({"data": -1})
  graphdef, state = init_state(config)
  state = parallel.put(state, parallel.state_shardings(state, mesh))
  step, state = restore_run(workdir, state, step)
  return config, graphdef, state, step


def resume(ckpt: Checkpointer, state: dict, it) -> tuple[int, dict]:
  """(start step, state): the latest checkpoint's, iterator included, or (0, state)."""
  if ckpt.latest_step() is None:
    return 0, state
  start, restored, data_state = ckpt.restore(to_checkpoint(state))
  if data_state is not None:
    it.set_state(data_state)
  if jax.process_index() == 0:
    print(f"resumed from step {start} in {ckpt.directory}")
  return start, from_checkpoint(state, restored)


class Preempted(SystemExit):
  """Raised by `run` after a SIGTERM: the step finished and was checkpointed. Exits 0."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


class _TermFlag:
  """Notes SIGTERM during the loop (main thread only) instead of dying mid-step."""

  def __init__(self):
    self.set, self._old = False, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._note)
    return self

  def _note(self, signum, frame):
    self.set = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def any_process(self) -> bool:
    """Every process stops at the same step if any one of them was told to."""
    if jax.process_count() == 1:
      return self.set
    from jax.experimental import multihost_utils
    return bool(multihost_utils.process_allgather(self.set).any())


NONFINITE = ("stop", "skip")  # config train.nonfinite


def check_nonfinite_mode(mode: str) -> None:
  if mode not in NONFINITE:
    raise ValueError(f"train.nonfinite: expected one of {NONFINITE}, got {mode!r}")


def guard_nonfinite(step_fn: Callable, mode: str) -> Callable:
  """`mode` "stop": `step_fn` as it is (the loop stops at the next logged or saved step).
  "skip": a step whose loss is not finite returns the state it was given (parameters,
  optimizer, statistics, RNG) and reports `skipped` = 1; jit the result."""
  check_nonfinite_mode(mode)
  if mode == "stop":
    return step_fn

  def keep_if(ok, new, old):
    if jnp.issubdtype(new.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          jnp.where(ok, jax.random.key_data(new), jax.random.key_data(old)),
          impl=jax.random.key_impl(new))
    return jnp.where(ok, new, old)

  def guarded(state, *args, **kwargs):
    new, metrics = step_fn(state, *args, **kwargs)
    ok = jnp.isfinite(metrics["loss"])
    return (jax.tree.map(functools.partial(keep_if, ok), new, state),
            {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)})

  return guarded


def check_finite(step: int, metrics: dict) -> None:
  """A non-finite loss stops the run before anything is saved, naming the terms. A
  step the "skip" guard dropped (skipped = 1) left the state as it was: not an error."""
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if bad and not metrics.get("skipped"):
    raise FloatingPointError(f"step {step}: non-finite {', '.join(bad)}; no checkpoint "
                             f"written for this step (the last good one stays latest)")


def run(state: dict, it, step_fn: Callable[[dict, Any, int], tuple[dict, dict]], *,
        start: int, total: int, ckpt: Checkpointer, writer: MetricWriter, log_every: int,
        checkpoint_every: int, periodic: Iterable[tuple[int, Callable[[dict, int], None]]] = (),
        postfix: Sequence[str] = ("loss",)) -> dict:
  """Steps start+1 .. total: `step_fn(state, batch, step)` -> (state, metrics); every
  `log_every` the metrics (+ steps/s) go to the writer and the bar; each (every, fn) of
  `periodic` runs fn(state, step); checkpoints every `checkpoint_every` and at the end.
  Metrics are checked finite at every log and checkpoint step (FloatingPointError, no
  checkpoint). SIGTERM: the current step finishes, is checkpointed, and `Preempted`
  (exit status 0) is raised. The checkpointer is closed (async saves finished) whatever
  happens."""
  window_start, window_steps = time.perf_counter(), 0
  bar = tqdm(range(start, total), initial=start, total=total, desc="train",
             disable=jax.process_index() != 0, mininterval=2, dynamic_ncols=True)
  try:
    with _TermFlag() as term:
      for step in bar:
        state, metrics = step_fn(state, next(it), step)
        window_steps += 1
        done = step + 1
        stop = term.any_process()
        last = done == total or stop
        log, save = done % log_every == 0 or last, done % checkpoint_every == 0 or last
        if log or save:
          scalars = {k: float(v) for k, v in metrics.items()}
          check_finite(done, scalars)
        if log:
          now = time.perf_counter()
          scalars["steps_per_second"] = window_steps / (now - window_start)
          window_start, window_steps = now, 0
          writer.write(done, scalars)
          bar.set_postfix({k: f"{scalars[k]:.4g}" for k in postfix if k in scalars})
        if not stop:
          for every, fn in periodic:
            if done % every == 0 or last:
              fn(state, done)
        if save:
          ckpt.save(done, to_checkpoint(state), it.get_state())
        if stop:
          if jax.process_index() == 0:
            print(f"\nSIGTERM: step {done} finished and checkpointed; the same command "
                  "resumes from it")
          raise Preempted(done)
  finally:
    bar.close()
    ckpt.close()  # waits for the async save: nothing half-written is left behind
    writer.close()
  return state


def place_state(workdir: str, state, mesh, mesh_config):
  """(state on the mesh, its shardings) by the config's rules; prints the placement
  and checks the disk can hold two checkpoints of it, before training starts."""
  shardings = parallel.config_shardings(state, mesh, mesh_config)
  state = parallel.put(state, shardings)
  if jax.process_index() == 0:
    print(parallel.placement_report(mesh, state, shardings))
  check_free_space(workdir, 2 * parallel.state_bytes(state))
  return state, shardings


def abstract_state(init: Callable[[], tuple[Any, Any]], mesh, mesh_config):
  """(graphdef, abstract state, shardings) of `init() -> (graphdef, state)` without
  allocating the state (dry runs)."""
  box = {}

  def state_only():
    box["graphdef"], state = init()
    return state

  abstract = jax.eval_shape(state_only)
  return box["graphdef"], abstract, parallel.config_shardings(abstract, mesh, mesh_config)


def dry_run(jitted: Callable, mesh, abstract, shardings, *other_args) -> dict:
  """Lower and compile a jitted step `(state, *other_args)` for the abstract state on
  `shardings`, run nothing; prints the placement and returns memory per device (XLA's
  analysis) and FLOPs per step."""
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings)
  compiled = jitted.lower(state, *other_args).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  out = {"flops_per_step": float(cost.get("flops", float("nan")))}
  mem = compiled.memory_analysis()
  if mem is not None:
    for name in ("argument", "output", "temp", "generated_code"):
      out[f"{name}_mib_per_device"] = getattr(mem, f"{name}_size_in_bytes") / 2**20
  if jax.process_index() == 0:
    print(parallel.placement_report(mesh, abstract, shardings))
    print("dry run (compiled, not run): " + ", ".join(f"{k} {v:,.4g}" for k, v in out.items()))
  return out
