"""The training loop every trainer shares: workdir checks, resume, the step loop with
metrics / periodic work / checkpoints, and state <-> checkpoint conversion.

A trainer's state is a dict whose values are `nnx.State`s (model, optimizers, EMA ...)
or plain arrays; checkpoints hold it as pure nested dicts plus the grain iterator state.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
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
from vqlab.checkpoint import CheckpointMismatch, Checkpointer
from vqlab.data.pipeline import iterate
from vqlab.nn import precision
from vqlab.train import utilisation
from vqlab.train.common import (MetricWriter, WorkdirLock, check_free_space, check_workdir,
                                local_batch_size, read_jsonl)


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
  """'a.b: old -> new' for every leaf field that differs between two config dicts."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += changed_fields(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def saved_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    fixed_sections: Sequence[str]) -> None:
  """A writable workdir; one with checkpoints resumes only if `fixed_sections` of the
  config (the model's shape) are unchanged: nothing there is touched otherwise."""
  check_workdir(workdir)
  old = saved_config(workdir)
  if old is None or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  new = json.loads(config.to_json())
  changed = changed_fields({s: old.get(s, {}) for s in fixed_sections},
                           {s: new[s] for s in fixed_sections})
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


def resume(ckpt: Checkpointer, state: dict, it, config: ml_collections.ConfigDict | None = None,
           workdir: str | None = None) -> tuple[int, dict]:
  """(start step, state): the latest checkpoint's, iterator included, or (0, state). A
  checkpoint of another state tree (e.g. a `train.*` field that adds an EMA) is refused
  naming the fields that differ from the run's config.json; nothing is touched."""
  if ckpt.latest_step() is None:
    return 0, state
  try:
    start, restored, data_state = ckpt.restore(to_checkpoint(state))
  except CheckpointMismatch as e:
    old = saved_config(workdir) if workdir else None
    fields = changed_fields(old, json.loads(config.to_json())) if old and config else []
    why = (f"this config differs from the run's config.json in {fields}" if fields else
           "the config is the run's own: the state layout of the code changed")
    raise CheckpointMismatch(f"{e}. {why}; rerun with the run's config or use a new "
                             "workdir (nothing was changed)") from None
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


def is_finite(x: jax.Array) -> jax.Array:
  """No NaN / inf in `x`. x * 0 is 0 for finite x and NaN for NaN or inf, so this is one
  fused multiply-sum (no overflow, whatever its scale)."""
  return jnp.isfinite(jnp.sum(x * jnp.zeros((), x.dtype), dtype=jnp.float32))


def finite_leaves(tree) -> list[jax.Array]:
  """One bool per floating leaf of `tree` (inside a traced step)."""
  return [is_finite(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


# a restored state's check, a small program per leaf shape (as checkpoint.checksums)
leaf_is_finite = jax.jit(is_finite)


def _all_finite(tree) -> jax.Array:
  leaves = finite_leaves(tree)
  return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def guard_nonfinite(step_fn: Callable, mode: str) -> Callable:
  """`step_fn` reporting `nonfinite` = 1 when its loss or the state it returns
  (parameters, optimizer moments, statistics) is not finite: the loop never saves such a
  state. Mode "stop": the state is returned as it is (the run stops at the next check,
  no memory is spent on a copy). "skip": such a step returns the state it was given
  (RNG included) instead; jit the result."""
  check_nonfinite_mode(mode)

  def keep_if(ok, new, old):
    if jnp.issubdtype(new.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          jnp.where(ok, jax.random.key_data(new), jax.random.key_data(old)),
          impl=jax.random.key_impl(new))
    return jnp.where(ok, new, old)

  def guarded(state, *args, **kwargs):
    new, metrics = step_fn(state, *args, **kwargs)
    ok = jnp.isfinite(metrics["loss"]) & _all_finite(new)
    if mode == "skip":
      new = jax.tree.map(functools.partial(keep_if, ok), new, state)
    return new, {**metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}

  return guarded


class Diverged(FloatingPointError):
  """The run stopped on non-finite steps; what led to them was set aside, not saved."""


class _Health:
  """The `nonfinite` flag of every step, read at log and save steps (no sync in between).

  A checkpoint is written only of a state whose last step was finite. When the run stops
  ("stop": the first non-finite step; "skip": `max_skips` in a row) the checkpoint of the
  step just before the first non-finite one, if there is one, is set aside too: its state
  is what produced it (e.g. a learning rate that made the weights huge but still finite)."""

  def __init__(self, mode: str, max_skips: int):
    self.mode, self.max_skips = mode, max_skips
    self.pending: list[tuple[int, Any]] = []
    self.streak_from: int | None = None  # first step of the current run of non-finite steps
    self.skipped = 0

  def add(self, step: int, metrics: dict) -> None:
    flag = metrics.get("nonfinite")
    if flag is None:  # an unguarded step function: its loss is all there is to check
      flag = 1.0 - jnp.isfinite(metrics["loss"]).astype(jnp.float32)
    self.pending.append((step, flag))

  def check(self, ckpt: Checkpointer) -> None:
    """Read the flags since the last check; `Diverged` when the run must stop."""
    steps = [s for s, _ in self.pending]
    flags = jax.device_get([f for _, f in self.pending])
    self.pending = []
    for step, flag in zip(steps, flags):
      if float(flag):
        self.skipped += 1
        self.streak_from = step if self.streak_from is None else self.streak_from
        if self.mode == "stop" or step - self.streak_from + 1 >= self.max_skips:
          self._stop(ckpt, step)
      else:
        self.streak_from = None

  @property
  def last_ok(self) -> bool:
    return self.streak_from is None

  def _stop(self, ckpt: Checkpointer, step: int) -> None:
    first = self.streak_from
    ckpt.wait()
    suspect = [s for s in ckpt.all_steps() if s >= first - 1]
    aside = f"; checkpoint {suspect} (whose state led to it) moved to " \
        f"{ckpt.set_aside(suspect, 'diverged')}" if suspect else ""
    left = ckpt.all_steps()
    what = (f"step {first}: non-finite loss or state" if self.mode == "stop" else
            f"steps {first}-{step}: {step - first + 1} non-finite steps in a row "
            f"(train.max_skips={self.max_skips})")
    hint = ("raise train.max_skips if bad batches come in runs" if self.mode == "skip" else
            "or (for rare bad batches) train.nonfinite='skip'")
    raise Diverged(f"{what}; nothing of it was saved{aside}. The same command resumes from "
                   f"{'checkpoint ' + str(left[-1]) if left else 'the start'}: lower "
                   f"train.lr, set train.grad_clip, {hint}")


def run(state: dict, it, step_fn: Callable[[dict, Any, int], tuple[dict, dict]], *,
        start: int, total: int, ckpt: Checkpointer, writer: MetricWriter, log_every: int,
        checkpoint_every: int, periodic: Iterable[tuple[int, Callable[[dict, int], None]]] = (),
        postfix: Sequence[str] = ("loss",), nonfinite: str = "stop", max_skips: int = 20,
        report: dict | None = None, throughput: utilisation.Throughput | None = None,
        profile: tuple[int, int, str] | None = None) -> dict:
  """Steps start+1 .. total: `step_fn(state, batch, step)` -> (state, metrics); every
  `log_every` the metrics and the timing of `throughput` (steps/s, and the `perf/`
  numbers step_fn feeds it) go to the writer and the bar; each (every, fn) of `periodic`
  runs fn(state, step); checkpoints every `checkpoint_every` and at the end. The timing
  leaves out periodic work and checkpoint writes: it is the steps' own. `profile` =
  (first, last, directory): a `jax.profiler` trace of steps first .. last (1-based).

  Non-finite steps (the `nonfinite` flag of `guard_nonfinite`, else the loss) are read at
  every log and save step: `nonfinite` "stop" ends the run at the first (`Diverged`),
  "skip" after `max_skips` in a row; a save falls on a finite step (one due on a skipped
  step waits for the next finite one); `report["skipped_steps"]` counts them. SIGTERM:
  the current step finishes, is checkpointed, and `Preempted` (exit status 0) is raised.
  The checkpointer is closed (async saves finished) whatever happens."""
  check_nonfinite_mode(nonfinite)
  health = _Health(nonfinite, max_skips)
  save_due = False
  own_throughput = throughput is None
  throughput = utilisation.Throughput() if own_throughput else throughput
  throughput.restart()
  bar = tqdm(range(start, total), initial=start, total=total, desc="train",
             disable=jax.process_index() != 0, mininterval=2, dynamic_ncols=True)
  try:
    with _TermFlag() as term:
      for step in bar:
        if profile and step + 1 == profile[0]:
          jax.profiler.start_trace(profile[2])
        state, metrics = step_fn(state, next(it), step)
        if profile and step + 1 == profile[1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          print(f"\nwrote a profile of steps {profile[0]}..{profile[1]} to {profile[2]} "
                f"(tensorboard --logdir {profile[2]})")
        if own_throughput:
          throughput.add()
        done = step + 1
        health.add(done, metrics)
        stop = term.any_process()
        last = done == total or stop
        log = done % log_every == 0 or last
        save_due = save_due or done % checkpoint_every == 0 or last
        if log or save_due:
          health.check(ckpt)
        if log:
          scalars = {k: float(v) for k, v in metrics.items()}
          scalars.update(throughput.scalars())
          writer.write(done, scalars)
          bar.set_postfix({k: f"{scalars[k]:.4g}" for k in postfix if k in scalars})
        aside = time.perf_counter()
        if not stop:
          for every, fn in periodic:
            if done % every == 0 or last:
              fn(state, done)
        if save_due and (health.last_ok or last):
          if not health.last_ok and jax.process_index() == 0:
            print(f"\nstep {done}: saving the state of step {health.streak_from - 1} (the "
                  f"last {done - health.streak_from + 1} steps were skipped as non-finite)")
          ckpt.save(done, to_checkpoint(state), it.get_state())
          save_due = False
        throughput.exclude(time.perf_counter() - aside)
        if stop:
          if jax.process_index() == 0:
            print(f"\nSIGTERM: step {done} finished and checkpointed; the same command "
                  "resumes from it")
          raise Preempted(done)
  finally:
    bar.close()
    ckpt.close()  # waits for the async save: nothing half-written is left behind
    writer.close()
    if report is not None:
      report["skipped_steps"] = health.skipped
  if health.skipped and jax.process_index() == 0:
    print(f"\n{health.skipped} steps were skipped as non-finite (train.nonfinite='skip')")
  return state


def place_state(workdir: str, state, mesh, mesh_config, keep: int = 1):
  """(state on the mesh, its shardings) by the config's rules; prints the placement
  and checks the disk can hold the `keep` checkpoints of it still to be written (+1:
  orbax writes the next before deleting the oldest), before training starts."""
  shardings = parallel.config_shardings(state, mesh, mesh_config)
  state = parallel.put(state, shardings)
  if jax.process_index() == 0:
    print(parallel.placement_report(mesh, state, shardings))
  path = os.path.join(workdir, "checkpoints")
  have = len([d for d in os.listdir(path) if d.isdigit()]) if os.path.isdir(path) else 0
  check_free_space(workdir, max(keep + 1 - have, 1) * parallel.state_bytes(state))
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
  analysis) and model FLOPs per step (the count the logs' MFU uses)."""
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings)
  compiled = jitted.lower(state, *other_args).compile()
  out = {"flops_per_step": utilisation.step_flops(jitted, state, *other_args)}
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
  if t.get("max_skips", 1) < 1:
    raise ValueError(f"train.max_skips: expected >= 1, got {t.max_skips}")
  if t.steps < 1 or t.batch_size < 1:
    raise ValueError(f"train.steps, train.batch_size: expected >= 1, got {t.steps}, "
                     f"{t.batch_size}")
  accum = t.get("grad_accum_steps", 1)
  if accum < 1 or t.batch_size % accum:
    raise ValueError(f"train.grad_accum_steps: expected a divisor of train.batch_size="
                     f"{t.batch_size}, got {accum}")
  profile = config.get("profile_steps", ())
  if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
    raise ValueError(f"profile_steps: expected (first, last) steps with 1 <= first <= last, "
                     f"got {tuple(profile)}")
  precision.check_compute_dtype(t.compute_dtype, "train.compute_dtype")
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

  def units(self, batch: dict) -> dict[str, float]:
    """What one global batch holds besides examples, for the throughput logs:
    {"tokens": ...} or {"audio_seconds": ...}; logged as perf/<unit>_per_second."""
    return {}

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
  with WorkdirLock(workdir, enabled=job.main_process):
    return _train_in(job, mesh, batch_size)


def last_logged_step(workdir: str) -> dict[str, float]:
  """The train metrics of the last logged step in metrics.jsonl ({} without one)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = [r for r in read_jsonl(path) if "loss" in r] if os.path.exists(path) else []
  return {k: v for k, v in utilisation.without_timing(rows[-1]).items() if k != "step"} \
      if rows else {}


def _train_in(job: Job, mesh, batch_size: int) -> dict[str, Any]:
  """The part of `train_job` that holds the workdir's lock. config.json is written once
  the model is built and the checkpoint (if any) restored: an invalid config or a refused
  resume leave the workdir as they found it."""
  config, workdir = job.config, job.workdir
  train_ds = job.train_data(batch_size)
  graphdef, state = job.init_state()
  state, shardings = place_state(workdir, state, mesh, config.mesh, config.log.keep_checkpoints)
  steps, args = job.compile(graphdef, shardings), job.step_args()
  job.started(graphdef, state)
  data_sharding = parallel.batch_sharding(mesh)
  peak, _ = utilisation.peak_flops(jax.devices()[0], config.train.compute_dtype)
  throughput = utilisation.Throughput(peak, jax.device_count())
  flops = {}  # per variant, from the first step that runs it

  def step_fn(state, batch, step):
    batch = {k: jax.make_array_from_process_local_data(data_sharding, v)
             for k, v in batch.items()}
    variant = job.variant(step)
    first = variant not in flops
    if first:
      flops[variant] = utilisation.step_flops(steps[variant], state, batch, *args)
    state, job.last_metrics = steps[variant](state, batch, *args)
    if first:  # this step compiled: its time is not the step's
      jax.block_until_ready(state)
      throughput.restart()
    else:
      throughput.add(flops[variant], config.train.batch_size, job.units(batch))
    return state, job.last_metrics

  ckpt = checkpointer(workdir, config.log.keep_checkpoints)
  it = iterate(train_ds, config.data.threads, config.data.prefetch,
               config.data.get("workers", 0))
  try:
    start, state = resume(ckpt, state, it, config, workdir)
  except BaseException:
    ckpt.close()
    raise
  write_config(workdir, config)
  job.writer = MetricWriter(workdir, enabled=job.main_process)
  job.writer.truncate_after(start)  # steps redone after a kill are logged once
  if start >= config.train.steps:  # finished earlier, evaluated again: its last logged step
    job.last_metrics = last_logged_step(workdir)
  periodic = job.periodic(graphdef)
  report: dict[str, Any] = {}
  try:
    state = run(state, it, step_fn, start=start, total=config.train.steps, ckpt=ckpt,
                writer=job.writer, log_every=config.log.every,
                checkpoint_every=config.log.checkpoint_every, periodic=periodic,
                postfix=job.postfix, nonfinite=config.train.nonfinite,
                max_skips=config.train.get("max_skips", 20), report=report,
                throughput=throughput,
                profile=(*config.profile_steps, os.path.join(workdir, "profile"))
                if config.get("profile_steps") else None)
  finally:
    it.close()  # the data workers, if any
  summary = {"step": config.train.steps, **job.evaluate(graphdef, state)}
  if report["skipped_steps"]:
    summary["skipped_steps"] = report["skipped_steps"]
  check_summary_finite(summary, workdir, config.log.keep_checkpoints)
  if job.main_process:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"\n{job.describe(summary)}")
    print(f"wrote {workdir}/summary.json, metrics.jsonl, tensorboard/, {job.outputs}, "
          "checkpoints/")
  return summary


def check_summary_finite(summary: dict[str, Any], workdir: str, keep: int) -> None:
  """A model that evaluates to NaN / inf gets no summary.json and its final checkpoint is
  set aside (to checkpoints-diverged/: a rerun resumes from the one before): `Diverged`."""
  def nonfinite(tree, path):
    if isinstance(tree, dict):
      return [p for k, v in tree.items() for p in nonfinite(v, f"{path}{k}.")]
    if isinstance(tree, (list, tuple)):
      return [p for i, v in enumerate(tree) for p in nonfinite(v, f"{path}{i}.")]
    ok = not isinstance(tree, numbers.Real) or math.isfinite(tree)
    return [] if ok else [path[:-1]]

  bad = nonfinite(summary, "")
  if bad:
    ckpt = checkpointer(workdir, keep)
    try:
      final = [s for s in ckpt.all_steps() if s >= summary["step"]]
      aside = ckpt.set_aside(final, "diverged")
      left = ckpt.all_steps()
    finally:
      ckpt.close()
    raise Diverged(f"the trained model evaluates to non-finite {bad}: no summary.json "
                   f"written, its checkpoint {final} moved to {aside}. The same command "
                   f"resumes from {'checkpoint ' + str(left[-1]) if left else 'the start'}: "
                   "lower train.lr or set train.grad_clip")
