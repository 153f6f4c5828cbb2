"""The audio-codec trainer (SoundStream / EnCodec-style: SEANet + residual VQ).

  vqlab codec --config configs/audio_codec.py --workdir runs/codec

grain crops of speech (resampled, loudness-normalised) -> one sharded `jax.jit` step
(vqlab.train.loop: batch over data x fsdp, named conv kernels split by the mesh rules)
-> orbax checkpoints with auto-resume -> metrics.jsonl + TensorBoard -> wav files and
spectrogram PNGs of held-out clips (audio/) -> summary.json with SI-SDR, mel distance
(and PESQ / STOI when installed) at every number of residual levels, code usage per level
and the bitrate of every setting.

Generator loss: wave_l1 |x - x^|_1 + mel * DAC's multi-scale log-mel L1 + stft *
multi-scale STFT loss + quantizer * the quantizer's loss, and from `disc_start` on,
adversarial * hinge (multi-period + multi-scale STFT discriminators) + feature *
relative feature matching. Quantizer dropout (in the quantizer's args) trains one model
for every bitrate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vqlab import parallel
from vqlab.data import builtin, speech
from vqlab.data.pipeline import audio_dataset, iterate
from vqlab.eval import audio_metrics
from vqlab.losses import spectral
from vqlab.models import audio_codec
from vqlab.models import audio_discriminators as discs
from vqlab.train import loop
from vqlab.train.common import MetricWriter, config_main, spectrogram_grid
from vqlab.train.tokenizer import local_batch_size, make_optimizer


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The loss settings the compiled step closes over."""
  sample_rate: int
  wave_l1: float
  mel: float
  stft: float
  quantizer: float
  adversarial: float
  feature: float


def check_config(config: ml_collections.ConfigDict) -> None:
  shape = audio_codec.make_shape(config.model.shape.to_dict())
  shape.check()
  loop.check_nonfinite_mode(config.train.nonfinite)
  if config.train.steps < 1 or config.train.batch_size < 1:
    raise ValueError(f"train.steps, train.batch_size: expected >= 1, got "
                     f"{config.train.steps}, {config.train.batch_size}")
  d = config.data
  if d.sample_rate < 1:
    raise ValueError(f"data.sample_rate: expected > 0 Hz, got {d.sample_rate}")
  for name in ("crop_seconds", "eval_seconds"):
    samples = d[name] * d.sample_rate
    if samples < max(spectral.DAC_WINDOWS) // 2 + 1:
      raise ValueError(f"data.{name}: expected at least {max(spectral.DAC_WINDOWS) / 2 / d.sample_rate:.3f} s "
                       f"(the largest mel window), got {d[name]}")
  for name, value in config.loss.items():
    if value < 0:
      raise ValueError(f"loss.{name}: expected >= 0, got {value}")


def is_codec_config(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's config is this trainer's (the image tokenizer's has no sample rate)."""
  return "sample_rate" in config.data


def crop_length(config: ml_collections.ConfigDict, seconds: float) -> int:
  return int(round(seconds * config.data.sample_rate))


# ----------------------------------------------------------------------------- state


def build_model(config: ml_collections.ConfigDict, seed: int) -> audio_codec.AudioCodec:
  m = config.model
  return audio_codec.build(m.shape.to_dict(), m.quantizer.kind, m.quantizer.args.to_dict(),
                           config.data.sample_rate, rngs=nnx.Rngs(seed))


def build_discriminator(config: ml_collections.ConfigDict) -> discs.AudioDiscriminator:
  d = config.disc
  return discs.AudioDiscriminator(tuple(d.periods), tuple(map(tuple, d.stft_resolutions)),
                                  d.width, d.max_width, rngs=nnx.Rngs(config.seed + 1))


def init_state(config: ml_collections.ConfigDict):
  """(graphdef, {"nnx": codec, discriminators and both optimizers})."""
  model, disc = build_model(config, config.seed), build_discriminator(config)
  opt_g = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=nnx.Param)
  opt_d = nnx.Optimizer(disc, make_optimizer(config, config.train.disc_lr), wrt=nnx.Param)
  graphdef, state = nnx.split((model, disc, opt_g, opt_d))
  # unique buffers: the step donates its state
  return graphdef, {"nnx": jax.tree.map(lambda x: jnp.array(x, copy=True), state)}


# ----------------------------------------------------------------------------- step


def reconstruction_terms(x, recon, loss: LossSpec) -> dict[str, jax.Array]:
  terms = {"wave_l1": jnp.mean(jnp.abs(recon - x)),
           "mel_loss": spectral.multiscale_mel_loss(recon, x, loss.sample_rate)}
  if loss.stft:
    terms["stft_loss"] = spectral.multiscale_stft_loss(recon, x)
  return terms


def train_step(state, audio, *, graphdef, loss: LossSpec, gan: bool):
  """One codec (+ discriminator when `gan`) update on audio (B, T); (state, metrics)."""
  model, disc, opt_g, opt_d = nnx.merge(graphdef, state["nnx"])
  x = audio[..., None].astype(jnp.float32)
  disc_graph, disc_state = nnx.split(disc)
  frozen_disc = lambda y: nnx.merge(disc_graph, disc_state, copy=True)(y)

  def generator_loss(model):
    recon, q = model(x)
    terms = reconstruction_terms(x, recon, loss)
    total = (loss.wave_l1 * terms["wave_l1"] + loss.mel * terms["mel_loss"]
             + loss.stft * terms.get("stft_loss", 0.0) + loss.quantizer * q.loss)
    terms.update(quantizer_loss=q.loss, **{f"q/{k}": v for k, v in q.metrics.items()})
    if gan:
      fake_out, real_out = frozen_disc(recon), frozen_disc(x)
      terms["adversarial_loss"] = discs.generator_hinge(fake_out)
      terms["feature_loss"] = discs.feature_matching(real_out, fake_out)
      total = (total + loss.adversarial * terms["adversarial_loss"]
               + loss.feature * terms["feature_loss"])
    return total, (recon, terms)

  (total, (recon, terms)), grads = nnx.value_and_grad(
      generator_loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(model)
  opt_g.update(model, grads)
  metrics = {"loss": total, **terms, "grad_norm/codec": optax.global_norm(grads),
             "si_sdr": jnp.mean(audio_metrics.si_sdr(recon, x))}
  if gan:
    fake = jax.lax.stop_gradient(recon)

    def disc_loss(disc):
      return discs.discriminator_hinge(disc(x), disc(fake))

    d, d_grads = nnx.value_and_grad(disc_loss, argnums=nnx.DiffState(0, nnx.Param))(disc)
    opt_d.update(disc, d_grads)
    metrics.update({"disc_loss": d, "grad_norm/discriminator": optax.global_norm(d_grads)})
  return {"nnx": nnx.state((model, disc, opt_g, opt_d))}, metrics


def eval_model(graphdef, state) -> audio_codec.AudioCodec:
  model = nnx.merge(graphdef, state["nnx"])[0]
  model.eval()
  return model


@functools.partial(jax.jit, static_argnames=("graphdef",))
def reconstruct(state, audio, num_levels=None, *, graphdef):
  """(reconstruction (B, T, C), indices (B, F, levels)) with the first `num_levels` levels
  (an int or an int32 array: one compiled function serves every bitrate)."""
  recon, q = eval_model(graphdef, state)(audio, num_levels)
  return recon, q.indices


def compile_steps(config: ml_collections.ConfigDict, graphdef, shardings, mesh) -> dict:
  c = config.loss
  loss = LossSpec(config.data.sample_rate, c.wave_l1, c.mel, c.stft, c.quantizer,
                  c.adversarial, c.feature)
  return {gan: jax.jit(loop.guard_nonfinite(
                   functools.partial(train_step, graphdef=graphdef, loss=loss, gan=gan),
                   config.train.nonfinite),
                       in_shardings=(shardings, parallel.batch_sharding(mesh)),
                       out_shardings=(shardings, None), donate_argnums=0)
          for gan in (False, True)}


def uses_gan(config: ml_collections.ConfigDict, step: int) -> bool:
  return (config.loss.adversarial > 0 or config.loss.feature > 0) and step >= config.loss.disc_start


# ----------------------------------------------------------------------------- data


def datasets(config: ml_collections.ConfigDict, split: str, *, train: bool, batch_size: int,
             num_examples: int | None = None, drop_remainder: bool = True,
             split_by_process: bool = True):
  """Batches {"audio": (b, T)} for this process: random crops of `crop_seconds`, shuffled
  and endless for training; else crops of `eval_seconds` fixed by the evaluation seed,
  enough passes for `num_examples` (default one per utterance)."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  processes = jax.process_count() if split_by_process else 1
  wanted = (num_examples or len(source)) * processes
  return audio_dataset(
      source, batch_size=batch_size, sample_rate=d.sample_rate,
      length=crop_length(config, d.crop_seconds if train else d.eval_seconds),
      seed=config.seed if train else config.seed + 1, key=d.key,
      target_dbfs=d.target_dbfs if d.normalize else None, source_rate=d.source_rate,
      shuffle=train, num_epochs=None if train else max(1, math.ceil(wanted / len(source))),
      process_index=jax.process_index() if split_by_process else 0, process_count=processes,
      in_memory=d.in_memory, drop_remainder=drop_remainder)


# ----------------------------------------------------------------------------- eval


def evaluate(config: ml_collections.ConfigDict, graphdef, state, mesh, *, split: str,
             num_examples: int) -> dict[str, Any]:
  """Held-out clips reconstructed with 1 .. L residual levels: SI-SDR, mel distance,
  PESQ / STOI (when installed) and the bitrate of each; code usage per level (all levels)."""
  model = eval_model(graphdef, state)
  levels = model.num_levels
  batch = config.train.batch_size
  ds = datasets(config, split, train=False, batch_size=local_batch_size(batch, mesh),
                num_examples=num_examples)
  sharding = parallel.batch_sharding(mesh)
  sums: dict[str, list] = {}
  counts = np.zeros((levels, model.quantizer.codebook_size), np.int64)
  seen = 0
  for i, b in enumerate(iterate(ds, config.data.threads, config.data.prefetch)):
    if i * batch >= num_examples:
      break
    audio = jax.make_array_from_process_local_data(sharding, b["audio"])
    for n in range(1, levels + 1):
      recon, indices = reconstruct(state, audio, jnp.int32(n), graphdef=graphdef)
      x, r = parallel.to_host(audio), parallel.to_host(recon)
      scores = {"si_sdr": audio_metrics.si_sdr(r, x),
                "mel_distance": audio_metrics.mel_distance(r, x, config.data.sample_rate)}
      for k, v in scores.items():
        sums.setdefault(f"{k}@{n}", []).append(np.asarray(v))
      for k, v in audio_metrics.pesq_stoi(r, x, config.data.sample_rate).items():
        sums.setdefault(f"{k}@{n}", []).append(np.full(len(x), v))
    flat = parallel.to_host(indices).reshape(-1, levels)
    for l in range(levels):
      counts[l] += np.bincount(flat[:, l], minlength=counts.shape[1])
    seen += len(x)
  if not seen:
    raise ValueError(f"data: split {split!r} of {config.data.name!r} gave no full batch of "
                     f"{batch}")
  out = {k: float(np.mean(np.concatenate(v))) for k, v in sums.items()}
  out.update(audio_metrics.level_usage(counts))
  out["si_sdr"], out["mel_distance"] = out[f"si_sdr@{levels}"], out[f"mel_distance@{levels}"]
  out["bitrate@n"] = {n: b for n, b in audio_codec.bitrate_table(model)}
  out.update(examples=seen, levels=levels, frame_rate=model.frame_rate,
             codebook_size=int(model.quantizer.codebook_size))
  return out


def describe(r: dict[str, Any]) -> str:
  rows = [f"  {n} level{'s' if n > 1 else ' '} {r['bitrate@n'][n] / 1000:6.2f} kbps: SI-SDR "
          f"{r[f'si_sdr@{n}']:6.2f} dB, mel distance {r[f'mel_distance@{n}']:.3f}"
          + "".join(f", {m.upper()} {r[f'{m}@{n}']:.3f}" for m in ("pesq", "stoi")
                    if f"{m}@{n}" in r)
          for n in range(1, r["levels"] + 1)]
  usage = ", ".join(f"{r[f'level{l}/usage']:.0%}" for l in range(r["levels"]))
  return "\n".join(rows + [f"  code usage per level ({r['codebook_size']} codes): {usage} "
                           f"({r['examples']} clips, {r['frame_rate']:g} frames/s)"])


# ----------------------------------------------------------------------------- outputs


def save_audio(directory: str, rows: list[tuple[str, np.ndarray]], sample_rate: int,
               writer: MetricWriter | None = None, step: int = 0) -> str:
  """Waveforms (N, T) of each (label, waveforms) row as DIRECTORY/{i}_{label}.wav, and their
  mel spectrograms (one row per label) as DIRECTORY.png; returns the directory."""
  os.makedirs(directory, exist_ok=True)
  for label, waves in rows:
    for i, w in enumerate(waves):
      speech.write_wav(os.path.join(directory, f"{i}_{label}.wav"), w, sample_rate)
  image = spectrogram_grid(rows, sample_rate)
  image.save(directory + ".png")
  if writer is not None:
    writer.write_image(step, "spectrograms", image)
  return directory


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the summary also written to summary.json."""
  check_config(config)
  main_process = jax.process_index() == 0
  mesh = parallel.make_mesh({a: config.mesh[a] for a in parallel.AXES})
  batch = local_batch_size(config.train.batch_size, mesh)
  length = crop_length(config, config.data.crop_seconds)
  if config.dry_run:
    graphdef, abstract, shardings = loop.abstract_state(lambda: init_state(config), mesh,
                                                        config.mesh)
    step = compile_steps(config, graphdef, shardings, mesh)[uses_gan(config, config.train.steps)]
    audio = jax.ShapeDtypeStruct((config.train.batch_size, length), jnp.float32,
                                 sharding=parallel.batch_sharding(mesh))
    return loop.dry_run(step, mesh, abstract, shardings, audio)
  loop.prepare_workdir(workdir, config, ("model", "disc"))
  train_ds = datasets(config, config.data.train_split, train=True, batch_size=batch)
  fixed = next(iterate(datasets(config, config.data.eval_split, train=False,
                                batch_size=config.log.audio_examples,
                                num_examples=config.log.audio_examples,
                                split_by_process=False), threads=0))["audio"]
  loop.write_config(workdir, config)
  graphdef, state = init_state(config)
  state, shardings = loop.place_state(workdir, state, mesh, config.mesh)
  data_sharding = parallel.batch_sharding(mesh)
  steps = compile_steps(config, graphdef, shardings, mesh)
  if main_process:
    model = eval_model(graphdef, state)
    print("bitrates: " + ", ".join(f"{n} levels {b / 1000:.2f} kbps"
                                    for n, b in audio_codec.bitrate_table(model)))

  def step_fn(state, b, step):
    audio = jax.make_array_from_process_local_data(data_sharding, b["audio"])
    return steps[uses_gan(config, step)](state, audio)

  writer = MetricWriter(workdir, enabled=main_process)

  def write_audio(state, done):
    recon, _ = reconstruct(state, parallel.put(fixed, NamedSharding(mesh, P())),
                           graphdef=graphdef)
    if main_process:
      save_audio(os.path.join(workdir, "audio", f"step_{done:07d}"),
                 [("original", fixed), ("reconstruction", parallel.to_host(recon)[..., 0])],
                 config.data.sample_rate, writer, done)

  ckpt = loop.checkpointer(workdir, config.log.keep_checkpoints)
  it = iterate(train_ds, config.data.threads, config.data.prefetch)
  start, state = loop.resume(ckpt, state, it)
  state = loop.run(state, it, step_fn, start=start, total=config.train.steps, ckpt=ckpt,
                   writer=writer, log_every=config.log.every,
                   checkpoint_every=config.log.checkpoint_every,
                   periodic=[(config.log.audio_every, write_audio)],
                   postfix=("loss", "mel_loss", "si_sdr"))
  summary = {"step": config.train.steps,
             **evaluate(config, graphdef, state, mesh, split=config.data.eval_split,
                        num_examples=config.log.eval_examples)}
  if main_process:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"\n{config.data.name} {config.data.eval_split}:\n{describe(summary)}")
    print(f"wrote {workdir}/summary.json, metrics.jsonl, tensorboard/, audio/, checkpoints/")
  return summary


def restore(workdir: str, step: int | None = None, mesh=None):
  """(config, graphdef, state, step) of a codec run's checkpoint (default the latest)."""
  return loop.restore_placed(workdir, init_state, step, mesh)


def load_codec(workdir: str, step: int | None = None) -> audio_codec.AudioCodec:
  """The trained codec of a workdir in eval mode: `codec.encode(wav).indices`,
  `codec.decode(indices, length)`, `codec.stream_encode(...)`."""
  _, graphdef, state, _ = restore(workdir, step)
  return eval_model(graphdef, state)


def main(argv: list[str]) -> None:
  config_main(argv, train, "configs/audio_codec.py[:runlocal]")
