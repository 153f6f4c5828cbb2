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
from vqlab.data.pipeline import iterate
from vqlab.train.common import (MetricWriter, check_free_space, check_workdir,
                                local_batch_size)


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


# ----------------------------------------------------------------------------- the job


def check_train_config(config: ml_collections.ConfigDict) -> None:
  """The `train` fields every job reads."""
  t = config.train
  check_nonfinite_mode(t.nonfinite)
  if t.steps < 1 or t.batch_size < 1:
    raise ValueError(f"train.steps, train.batch_size: expected >= 1, got {t.steps}, "
                     f"{t.batch_size}")
  if t.get("schedule") == "cosine" and t.warmup_steps >= t.steps:
    raise ValueError(f"train.warmup_steps: expected fewer than train.steps={t.steps} for "
                     f"the cosine schedule, got {t.warmup_steps}")


def jit_step(step_fn: Callable, config: ml_collections.ConfigDict, shardings, mesh,
             num_args: int = 0) -> Callable:
  """`step_fn(state, batch, *args) -> (state, metrics)` jitted as every trainer's step:
  under the `train.nonfinite` guard, the state on `shardings` and donated, the batch (a
  dict of arrays) split over data x fsdp, `num_args` further arguments as they come."""
  return jax.jit(guard_nonfinite(step_fn, config.train.nonfinite),
                 in_shardings=(shardings, parallel.batch_sharding(mesh)) + (None,) * num_args,
                 out_shardings=(shardings, None), donate_argnums=0)


class Job:
  """One training job: the hooks a trainer fills in. `train_job` runs the skeleton
  around them, the same for every trainer:

    check -> mesh, local batch -> load -> [dry run: compile for the abstract state, stop]
    -> prepare workdir -> train_data -> config.json -> init_state -> place on the mesh
    -> compile -> started -> metric writer, periodic -> resume -> `run` -> evaluate
    -> summary.json

  A trainer holds what is its own (its state, step, data, periodic work, evaluation);
  every field it reads is in `config`. `train_job` sets `mesh`, `writer` (when training)
  and `last_metrics` (the metrics of the last step).
  """

  fixed_sections: Sequence[str] = ("model",)  # config sections a resumed run may not change
  postfix: Sequence[str] = ("loss",)  # metrics on the progress bar
  outputs: str = "images/"  # what `periodic` writes, for the closing line

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.main_process = jax.process_index() == 0
    self.mesh = self.writer = None
    self.last_metrics: dict = {}

  def check(self) -> None:
    """Everything that can be checked before a file is read or an array allocated."""
    check_train_config(self.config)

  def load(self) -> None:
    """Read what the job needs in every mode (a tokenizer, weights): fail early."""

  def init_state(self) -> tuple[Any, dict]:
    """(graphdef, state dict): `nnx.State`s and arrays, every leaf its own buffer."""
    raise NotImplementedError

  def train_data(self, batch_size: int):
    """The endless grain dataset of this process's training batches (dicts of arrays)."""
    raise NotImplementedError

  def compile(self, graphdef, shardings) -> dict[Any, Callable]:
    """{variant: `jit_step(...)`}; `variant(step)` picks the one for each step."""
    raise NotImplementedError

  def variant(self, step: int) -> Any:
    return None

  def step_args(self) -> tuple:
    """What the compiled steps take after (state, batch): frozen networks' states."""
    return ()

  def abstract_batch(self) -> dict:
    """One global batch as `jax.ShapeDtypeStruct`s on the batch sharding (dry runs)."""
    raise NotImplementedError

  def started(self, graphdef, state) -> None:
    """Once the state is placed (before resuming): a report for the console."""

  def periodic(self, graphdef) -> list[tuple[int, Callable[[dict, int], None]]]:
    """(every, fn(state, step)) run during training: images, audio, samples."""
    return []

  def evaluate(self, graphdef, state) -> dict[str, Any]:
    """The summary's numbers after the last step."""
    return {}

  def describe(self, summary: dict[str, Any]) -> str:
    return ""


def train_job(job: Job) -> dict[str, Any]:
  """Train (or resume) `job` in its workdir; returns the summary also written to
  summary.json. With `config.dry_run` it only compiles the last step's variant for the
  config's mesh and global batch and reports memory and FLOPs (nothing is written)."""
  config, workdir = job.config, job.workdir
  job.check()
  job.mesh = mesh = parallel.make_mesh({a: config.mesh[a] for a in parallel.AXES})
  batch_size = local_batch_size(config.train.batch_size, mesh)
  job.load()
  if config.dry_run:
    graphdef, abstract, shardings = abstract_state(job.init_state, mesh, config.mesh)
    step = job.compile(graphdef, shardings)[job.variant(config.train.steps - 1)]
    return dry_run(step, mesh, abstract, shardings, job.abstract_batch(), *job.step_args())
  prepare_workdir(workdir, config, job.fixed_sections)
  train_ds = job.train_data(batch_size)
  write_config(workdir, config)
  graphdef, state = job.init_state()
  state, shardings = place_state(workdir, state, mesh, config.mesh)
  steps, args = job.compile(graphdef, shardings), job.step_args()
  job.started(graphdef, state)
  data_sharding = parallel.batch_sharding(mesh)

  def step_fn(state, batch, step):
    batch = {k: jax.make_array_from_process_local_data(data_sharding, v)
             for k, v in batch.items()}
    state, job.last_metrics = steps[job.variant(step)](state, batch, *args)
    return state, job.last_metrics

  job.writer = MetricWriter(workdir, enabled=job.main_process)
  periodic = job.periodic(graphdef)
  ckpt = checkpointer(workdir, config.log.keep_checkpoints)
  it = iterate(train_ds, config.data.threads, config.data.prefetch)
  start, state = resume(ckpt, state, it)
  state = run(state, it, step_fn, start=start, total=config.train.steps, ckpt=ckpt,
              writer=job.writer, log_every=config.log.every,
              checkpoint_every=config.log.checkpoint_every, periodic=periodic,
              postfix=job.postfix)
  summary = {"step": config.train.steps, **job.evaluate(graphdef, state)}
  if job.main_process:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"\n{job.describe(summary)}")
    print(f"wrote {workdir}/summary.json, metrics.jsonl, tensorboard/, {job.outputs}, "
          "checkpoints/")
  return summary
