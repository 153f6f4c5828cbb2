"""Small helpers every trainer shares: the workdir, optimizers and schedules, the batch
split, parameter EMAs, metric writers, image grids and audio files, pixels."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image, ImageDraw


def check_workdir(workdir: str) -> None:
  """Fail before training, not after, when results could not be written."""
  probe = os.path.join(workdir, f".write_test.{os.getpid()}")  # processes may share it
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"workdir: expected a writable directory, got {workdir!r} ({e})") from e


class WorkdirLock:
  """One job per workdir: WORKDIR/.lock names its holder (host, pid) and is touched every
  `heartbeat` seconds while held. A live holder is an error naming it. A stale lock is
  taken over with a message: its pid is gone (same host), or, from another host (a job
  requeued elsewhere while the old one was killed), its heartbeat stopped for
  `stale_after` seconds, which this waits for. Only process 0 of a job takes it."""

  def __init__(self, workdir: str, enabled: bool = True, heartbeat: float = 30.0,
               stale_after: float = 300.0):
    self.path = os.path.join(workdir, ".lock")
    self.enabled, self.heartbeat, self.stale_after = enabled, heartbeat, stale_after
    self.me = {"host": socket.gethostname(), "pid": os.getpid()}
    self._stop = threading.Event()

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # half-written by a process that died: stale

  def _in_use(self, holder: dict) -> RuntimeError:
    return RuntimeError(
        f"workdir: {os.path.dirname(self.path)!r} is in use by pid {holder.get('pid')} on "
        f"{holder.get('host')} (since {holder.get('since', '?')}); two jobs on one workdir "
        f"would overwrite each other's checkpoints. Stop that one, or delete {self.path} if "
        "it is certainly dead")

  def _why_stale(self, holder: dict) -> str:
    """Why the holder is gone; raises `_in_use` while it is alive."""
    if not holder:
      return "an unreadable lock"
    if holder.get("host") == self.me["host"]:
      try:
        os.kill(int(holder["pid"]), 0)
      except ProcessLookupError:
        return f"process {holder['pid']} is gone"
      except PermissionError:
        pass  # alive, another user's
      raise self._in_use(holder)
    beat = os.path.getmtime(self.path)
    if time.time() - beat <= self.stale_after:
      print(f"{self.path} is held by pid {holder.get('pid')} on {holder.get('host')}: waiting "
            f"up to {self.stale_after:.0f} s for its heartbeat to stop")
    while time.time() - beat <= self.stale_after:
      time.sleep(min(self.heartbeat, 5.0))
      try:
        if os.path.getmtime(self.path) != beat:
          raise self._in_use(holder)  # it beat again: alive
      except FileNotFoundError:
        return "released"
    return f"no heartbeat for {time.time() - beat:.0f} s"

  def __enter__(self):
    if not self.enabled:
      return self
    while True:
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        holder = self._holder()
        if holder is None:
          continue  # released meanwhile
        why = self._why_stale(holder)
        print(f"taking over the lock of {os.path.dirname(self.path)} from pid "
              f"{holder.get('pid')} on {holder.get('host')}: {why}")
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w") as f:
        json.dump({**self.me, "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
      break
    threading.Thread(target=self._beat, daemon=True).start()
    return self

  def _beat(self):
    while not self._stop.wait(self.heartbeat):
      try:
        os.utime(self.path)
      except OSError:
        return

  def __exit__(self, *exc):
    if self.enabled:
      self._stop.set()
      holder = self._holder() or {}
      if (holder.get("host"), holder.get("pid")) == (self.me["host"], self.me["pid"]):
        os.remove(self.path)


def check_free_space(workdir: str, need_bytes: int) -> None:
  """Fail before training when the disk cannot hold the checkpoints to come."""
  free = shutil.disk_usage(workdir).free
  if free < need_bytes:
    raise OSError(f"workdir: {workdir!r} has {free / 2**20:,.0f} MiB free, expected at least "
                  f"{need_bytes / 2**20:,.0f} MiB for two checkpoints of this state")


def schedule(config: ml_collections.ConfigDict, lr: float) -> optax.Schedule:
  """`train.schedule`: linear warmup to `lr`, then constant or cosine decay to lr / 10."""
  t = config.train
  if t.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(t.warmup_steps, 1)),
                                 optax.constant_schedule(lr)], [max(t.warmup_steps, 1)])
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(t.warmup_steps, 1), t.steps,
                                              end_value=lr * 0.1)
  raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {t.schedule!r}")


def make_optimizer(config: ml_collections.ConfigDict, lr: float) -> optax.GradientTransformation:
  """AdamW on `schedule(config, lr)` with `train.b1, b2, weight_decay`, after global-norm
  clipping at `train.grad_clip` (0: none)."""
  t = config.train
  adam = optax.adamw(schedule(config, lr), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adam) if t.grad_clip else adam


def local_batch_size(global_batch: int, mesh) -> int:
  """This process's rows of a global batch split over the data x fsdp devices."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(f"train.batch_size: expected a multiple of the data x fsdp devices "
                     f"({shards}) and of the processes ({jax.process_count()}), got "
                     f"{global_batch}")
  return global_batch // jax.process_count()


def micro_batch_slices(inputs: dict, micro_batches: int) -> dict:
  """Each array of `inputs` as (micro_batches, rows / micro_batches, ...): slice i holds
  rows i, i + m, i + 2m, ... so that, with the batch split over devices in contiguous
  blocks, every slice has rows on every device (data parallelism holds)."""
  rows = {k: v.shape[0] for k, v in inputs.items()}
  if any(r % micro_batches for r in rows.values()):
    raise ValueError(f"train.grad_accum_steps: expected a divisor of the batch {rows}, got "
                     f"{micro_batches}")
  return jax.tree.map(lambda x: x.reshape(-1, micro_batches, *x.shape[1:]).swapaxes(0, 1),
                      inputs)


def accumulated_value_and_grad(loss_fn, model, inputs: dict, micro_batches: int,
                               row_keys: tuple[str, ...] = (),
                               wrt: nnx.filterlib.Filter = nnx.Param):
  """`nnx.value_and_grad(loss_fn, has_aux=True)(model, inputs)` (gradients of the `wrt`
  state) over `micro_batches` equal slices of the batch axis of `inputs`, one after
  another in a `lax.scan`: only one slice's activations are alive at a time, the peak
  memory of a micro-batch step.

  `loss_fn(model, slice) -> (loss, aux)` must return its slice's share of the whole
  batch's loss (a sum over the slice's examples divided by a total over the batch), so
  that the summed losses, aux values and gradients are the large-batch ones. Entries of
  the aux dict named in `row_keys` are per-example outputs (batch axis first): those are
  put back together in the batch's row order instead of summed. The model's other state
  (RNG streams, statistics) is carried from slice to slice."""
  grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
  if micro_batches == 1:
    return grad_fn(model, inputs)
  slices = micro_batch_slices(inputs, micro_batches)
  graphdef, params, rest = nnx.split(model, wrt, ...)

  def one(carry, piece):  # the parameters ride in the carry: scan traces them itself
    total, params, rest = carry
    m = nnx.merge(graphdef, params, rest)
    (loss, aux), grads = grad_fn(m, piece)
    per_row = {k: aux[k] for k in row_keys}
    if row_keys:  # a dict: its per-example entries leave the sum
      aux = {k: v for k, v in aux.items() if k not in row_keys}
    out = ((loss, aux), grads)
    rest = nnx.state(m, nnx.Not(wrt))
    total = out if total is None else jax.tree.map(jnp.add, total, out)
    return (total, params, rest), per_row

  carry, first = one((None, params, rest), jax.tree.map(lambda x: x[0], slices))
  (((loss, aux), grads), _, rest), others = jax.lax.scan(
      one, carry, jax.tree.map(lambda x: x[1:], slices))
  nnx.update(model, rest)
  # (m, b / m, ...) -> rows in the batch's order: row j m + i is slice i's row j
  for k in row_keys:
    stacked = jnp.concatenate([first[k][None], others[k]])
    aux[k] = stacked.swapaxes(0, 1).reshape(-1, *stacked.shape[2:])
  return (loss, aux), grads


def accumulated_sum(fn, model, inputs: dict, micro_batches: int):
  """The sum over the micro-batch slices (micro_batch_slices) of `fn(model, slice)`, a
  pytree, computed one slice at a time on a copy of the model whose state (RNG streams,
  statistics) is carried from slice to slice and then dropped: a look-ahead pass that
  draws what accumulated_value_and_grad's pass over the same slices will draw."""
  graphdef, state = nnx.split(model)
  slices = micro_batch_slices(inputs, micro_batches)

  def one(carry, piece):
    total, state = carry
    m = nnx.merge(graphdef, state, copy=True)
    out = fn(m, piece)
    total = out if total is None else jax.tree.map(jnp.add, total, out)
    return (total, nnx.state(m)), None

  carry, _ = one((None, state), jax.tree.map(lambda x: x[0], slices))
  (total, _), _ = jax.lax.scan(one, carry, jax.tree.map(lambda x: x[1:], slices))
  return total


def ema_update(ema, params, decay: float):
  """decay * ema + (1 - decay) * params, leaf by leaf (the generators' weight EMA);
  `ema` is returned as it is when the EMA is off (decay 0)."""
  if not decay:
    return ema
  return jax.tree.map(lambda e, w: decay * e + (1.0 - decay) * w, ema, params)


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_pixels(x) -> np.ndarray:
  """Images in [-1, 1] -> uint8 pixels."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def labeled_grid(rows: Sequence[tuple[str, np.ndarray]], min_side: int = 64) -> Image.Image:
  """One row of images (N, H, W, C) uint8 per (label, images); small images are scaled
  up (nearest) so that a side is at least `min_side` pixels."""
  label_w, pad = 110, 2
  n, h, w, c = rows[0][1].shape
  scale = max(1, -(-min_side // max(h, w)))
  h, w = h * scale, w * scale
  mode = "L" if c == 1 else "RGB"
  canvas = Image.new(mode, (label_w + n * (w + pad), len(rows) * (h + pad)), 255 if c == 1
                     else (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for r, (label, pixels) in enumerate(rows):
    y = r * (h + pad)
    draw.text((4, y + h // 2 - 5), label, fill=0 if c == 1 else (0, 0, 0))
    for i in range(n):
      img = Image.fromarray(pixels[i][..., 0] if c == 1 else pixels[i])
      canvas.paste(img.resize((w, h), Image.NEAREST), (label_w + i * (w + pad), y))
  return canvas


def spectrogram_grid(rows: Sequence[tuple[str, np.ndarray]], sample_rate: int,
                     n_fft: int = 512, n_mels: int = 80) -> Image.Image:
  """Log-mel spectrograms (time left to right, low frequencies at the bottom) of
  waveforms (N, T), one row per (label, waveforms), colour-mapped with one dB range."""
  from matplotlib import colormaps
  from vqlab.losses.spectral import mel_spectrogram
  specs = [20 * np.log10(np.maximum(np.asarray(mel_spectrogram(
      jnp.asarray(w), sample_rate, n_fft, n_fft // 4, n_mels)), 1e-5)) for _, w in rows]
  top = max(float(s.max()) for s in specs)
  pixels = [(colormaps["magma"](np.clip((s - top + 80.0) / 80.0, 0, 1)[..., ::-1]
                                .swapaxes(1, 2))[..., :3] * 255).astype(np.uint8) for s in specs]
  return labeled_grid([(label, p) for (label, _), p in zip(rows, pixels)], min_side=n_mels)


def save_image_grid(writer: "MetricWriter", path: str, step: int, tag: str,
                    rows: Sequence[tuple[str, np.ndarray]]) -> str:
  """`labeled_grid(rows)` written to `path` and to TensorBoard as `tag` (process 0 only);
  returns the path."""
  if writer.enabled:
    grid = labeled_grid(rows)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    writer.write_image(step, tag, grid)
  return path


def save_gif(path: str, clips: np.ndarray, seconds_per_frame: float = 0.1) -> str:
  """Clips uint8 (N, T, H, W, C) side by side as one looping GIF; returns the path."""
  n, t, h, w, c = clips.shape
  tiled = clips.transpose(1, 2, 0, 3, 4).reshape(t, h, n * w, c)
  frames = [Image.fromarray(f[..., 0] if c == 1 else f) for f in tiled]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                 duration=int(1000 * seconds_per_frame))
  return path


def save_audio(directory: str, rows: list[tuple[str, np.ndarray]], sample_rate: int,
               writer: "MetricWriter | None" = None, step: int = 0) -> str:
  """Waveforms (N, T) of each (label, waveforms) row as DIRECTORY/{i}_{label}.wav, and their
  mel spectrograms (one row per label) as DIRECTORY.png; returns the directory."""
  from vqlab.data.speech import write_wav
  os.makedirs(directory, exist_ok=True)
  for label, waves in rows:
    for i, w in enumerate(waves):
      write_wav(os.path.join(directory, f"{i}_{label}.wav"), w, sample_rate)
  image = spectrogram_grid(rows, sample_rate)
  image.save(directory + ".png")
  if writer is not None:
    writer.write_image(step, "spectrograms", image)
  return directory


class MetricWriter:
  """Scalars to `metrics.jsonl` (one JSON object per logged step) and TensorBoard event
  files (tensorboardX: no TensorFlow needed). Only process 0 writes; the others no-op."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def truncate_after(self, step: int) -> None:
    """Drop the lines of steps after `step` (those a resumed run will redo)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # the last line of a process killed while writing it
      if record.get("step", 0) <= step:
        kept.append(record)
    if len(kept) < len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.path)

  def write_image(self, step: int, tag: str, image: Image.Image) -> None:
    if self.enabled:
      self._tb.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_app(argv: list[str], body) -> None:
  """Run `body(absl FLAGS)` as an absl app (flags defined by the caller beforehand), with
  JAX's backend probing kept off the console."""
  from absl import app, flags, logging

  def _main(_):
    logging.set_verbosity(logging.WARNING)
    body(flags.FLAGS)

  app.run(_main, argv=argv)


def config_main(argv: list[str], train_fn, example: str) -> None:
  """`--config FILE[:arg] --workdir DIR [--config.x=...]` -> train_fn(config, workdir)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, example, lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints, metrics and images go here; a run "
                      "resumes from it.")
  flags.mark_flags_as_required(["config", "workdir"])
  run_app(argv, lambda f: train_fn(f.config, f.workdir))
