"""The audio-codec trainer (SoundStream / EnCodec-style: SEANet + residual VQ).

  vqlab train --config configs/audio_codec.py --workdir runs/codec   (or `vqlab codec`)

grain crops of speech (resampled, loudness-normalised) -> one sharded `jax.jit` step
(vqlab.train.loop: batch over data x fsdp, named conv kernels split by the mesh rules)
-> orbax checkpoints with auto-resume -> metrics.jsonl + TensorBoard -> wav files and
spectrogram PNGs of held-out clips (audio/) -> summary.json with SI-SDR, mel distance
(and PESQ / STOI when installed) at every number of residual levels, code usage per level
and the bitrate of every setting.

Generator loss: wave_l1 |x - x^|_1 + mel * DAC's multi-scale log-mel L1 + stft *
multi-scale STFT loss + quantizer * the quantizer's loss; for the first
`mse_warmup_steps` steps mel * the waveform's squared error over its power replaces the
reconstruction terms (why: `warmup_mse`). From `disc_start` on,
adversarial * hinge (multi-period + multi-scale STFT discriminators) + feature *
relative feature matching. Quantizer dropout (in the quantizer's args) trains one model
for every bitrate. `phoneme_ctc` > 0 distils content into the first level: CTC of a linear
phoneme head on level 1's vectors against espeak-ng's phonemes of each crop
(vqlab.losses.semantic; the built-in speech only).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vqlab import parallel
from vqlab.data import speech, splits
from vqlab.data.pipeline import iterate
from vqlab.eval import audio_metrics
from vqlab.losses import semantic, spectral
from vqlab.models import audio_codec, hubert
from vqlab.models import audio_discriminators as discs
from vqlab.nn import precision
from vqlab.quantizers import factory
from vqlab.train import evaluators, loop
from vqlab.train.common import accumulated_value_and_grad, make_optimizer, save_audio
from vqlab.train.runs import eval_model


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
  phoneme_ctc: float = 0.0
  blank_id: int = 0
  feature_distill: float = 0.0
  teacher: hubert.HubertConfig | None = None  # the frozen teacher of feature_distill
  teacher_layer: int | str = "avg"
  teacher_axis: str = "time"
  teacher_normalize: bool = False


def relative_squared_error(x: jax.Array, recon: jax.Array) -> jax.Array:
  """sum (x - x^)^2 / sum x^2 over the batch: 1 for a silent output, 0 for a perfect one."""
  return jnp.sum(jnp.square(recon - x)) / jnp.maximum(jnp.sum(jnp.square(x)), 1e-12)


HUBERT_RATE = 16000  # every published HuBERT / WavLM checkpoint's input rate


def check_config(config: ml_collections.ConfigDict) -> None:
  shape = audio_codec.make_shape(config.model.shape.to_dict())
  shape.check()
  loop.check_train_config(config)
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
  splits.acoustics(config)  # data.augment's probabilities and ranges
  if distills_features(config):
    t = config.teacher
    if not t.weights:
      raise ValueError("loss.feature_distill: needs teacher.weights, a HuBERT .npz from "
                       "`vqlab convert hubert`")
    if d.sample_rate != HUBERT_RATE:
      raise ValueError(f"loss.feature_distill: the teacher (HuBERT) takes {HUBERT_RATE} Hz "
                       f"audio; data.sample_rate is {d.sample_rate}")
    if t.axis not in semantic.DISTILL_AXES:
      raise ValueError(f"teacher.axis: expected one of {semantic.DISTILL_AXES}, got {t.axis!r}")
    teacher_layer(config)
  if phoneme_classes(config) and (d.name != "vqlab_speech"
                                  or d.train_split not in ("train", "synth_test")):
    raise ValueError(f"loss.phoneme_ctc: needs espeak-ng's phonemes, i.e. data.name "
                     f"'vqlab_speech' and train_split 'train' or 'synth_test'; got "
                     f"{d.name!r}, {d.train_split!r}")


# Phonemes per second a crop can hold: espeak-ng at 220 words a minute says ~17.
MAX_PHONEME_RATE = 30


def distills_features(config: ml_collections.ConfigDict) -> bool:
  """Whether level 1 is distilled towards a teacher's features (`loss.feature_distill`)."""
  return config.loss.get("feature_distill", 0.0) > 0


def phoneme_classes(config: ml_collections.ConfigDict) -> int:
  """Outputs of the phoneme head: espeak-ng's phonemes + the CTC blank (0: no head)."""
  return len(speech.PHONEMES) + 1 if config.loss.get("phoneme_ctc", 0.0) > 0 else 0


def max_phonemes(config: ml_collections.ConfigDict) -> int:
  return math.ceil(config.data.crop_seconds * MAX_PHONEME_RATE) if phoneme_classes(config) else 0


# ----------------------------------------------------------------------------- state


def build_model(config: ml_collections.ConfigDict, seed: int) -> audio_codec.AudioCodec:
  m = config.model
  return audio_codec.build(m.shape.to_dict(), m.quantizer.kind, factory.spec_args(m.quantizer),
                           config.data.sample_rate, rngs=nnx.Rngs(seed),
                           phoneme_classes=phoneme_classes(config),
                           teacher_dim=teacher_dim(config))


def teacher_dim(config: ml_collections.ConfigDict) -> int:
  """Width of the teacher head (0: no feature distillation); `CodecJob.load` sets
  teacher.dim from the teacher's weights before the model is built."""
  if not distills_features(config):
    return 0
  if not config.teacher.get("dim", 0):
    raise ValueError("teacher.dim: unknown before the teacher's weights are read "
                     "(CodecJob.load sets it)")
  return int(config.teacher.dim)


def teacher_layer(config: ml_collections.ConfigDict) -> int | str:
  """teacher.layer as `hubert.features` takes it: a layer number or "avg" (the command
  line gives a number as a string: the field's default is "avg")."""
  layer = config.teacher.get("layer", "avg")
  if isinstance(layer, str) and layer.isdigit():
    layer = int(layer)
  if layer != "avg" and not (isinstance(layer, int) and layer >= 0):
    raise ValueError(f"teacher.layer: expected a layer number >= 0 or 'avg', got {layer!r}")
  return layer


def load_teacher(config: ml_collections.ConfigDict) -> tuple[dict, hubert.HubertConfig]:
  """The frozen teacher of `loss.feature_distill` (a converted HuBERT), checked against
  the codec: one teacher frame is one codec frame (`check_config` checks the rate)."""
  params, teacher = hubert.load_npz(config.teacher.weights)
  hop = audio_codec.make_shape(config.model.shape.to_dict()).hop
  if teacher.hop != hop:
    raise ValueError(f"teacher.weights: the teacher's frames are {teacher.hop} samples, the "
                     f"codec's {hop} (model.shape.strides); distillation pairs them one to "
                     "one (HuBERT: 320 samples at 16 kHz, the quickstart's strides 2 4 5 8)")
  if config.teacher.get("dim", 0) not in (0, teacher.hidden_size):
    raise ValueError(f"teacher.dim: {config.teacher.dim}, but the teacher's features are "
                     f"{teacher.hidden_size} wide")
  layer = teacher_layer(config)
  if layer != "avg" and layer > teacher.num_layers:
    raise ValueError(f"teacher.layer: expected <= {teacher.num_layers} (the teacher's "
                     f"layers), got {layer}")
  config.teacher.dim = teacher.hidden_size
  return params, teacher


def build_discriminator(config: ml_collections.ConfigDict) -> discs.AudioDiscriminator:
  d = config.disc
  return discs.AudioDiscriminator(tuple(d.periods), tuple(map(tuple, d.stft_resolutions)),
                                  d.width, d.max_width, rngs=nnx.Rngs(config.seed + 1))


def init_state(config: ml_collections.ConfigDict):
  """(graphdef, {"nnx": codec, discriminators and both optimizers})."""
  model, disc = build_model(config, config.seed), build_discriminator(config)
  for module in (model, disc):
    precision.set_compute_dtype(module, config.train.compute_dtype)
  opt_g = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=nnx.Param)
  opt_d = nnx.Optimizer(disc, make_optimizer(config, config.train.disc_lr), wrt=nnx.Param)
  graphdef, state = nnx.split((model, disc, opt_g, opt_d))
  # unique buffers: the step donates its state
  return graphdef, {"nnx": jax.tree.map(lambda x: jnp.array(x, copy=True), state)}


# ----------------------------------------------------------------------------- step


def reconstruction_terms(x, recon, loss: LossSpec) -> dict[str, jax.Array]:
  terms = {"wave_l1": jnp.mean(jnp.abs(recon - x)),
           "wave_mse": relative_squared_error(x, recon),
           "mel_loss": spectral.multiscale_mel_loss(recon, x, loss.sample_rate)}
  if loss.stft:
    terms["stft_loss"] = spectral.multiscale_stft_loss(recon, x)
  return terms


def train_step(state, batch, teacher_params=None, *, graphdef, loss: LossSpec, gan: bool,
               warmup_mse: bool = False, micro_batches: int = 1):
  """One codec (+ discriminator when `gan`) update on batch["audio"] (B, T) (and its
  "phonemes" / "phoneme_count" under phoneme_ctc; the frozen teacher's `teacher_params`
  under feature_distill); (state, metrics).

  `warmup_mse`: the reconstruction loss is mel * the relative squared error of the
  waveform instead. Why: under the log-mel loss from the start, the codec first learns
  the average spectrum through its biases and then sits on a plateau where its output
  barely depends on its input (the latent collapses to one direction or to nothing; the
  audio issue's flat ladder); a waveform error has no input-independent solution, so a
  few hundred steps of it start the information flowing (benchmarks/codec_plateau.py).

  `micro_batches` > 1 (train.grad_accum_steps): both updates from that many slices of the
  batch in turn (common.accumulated_value_and_grad), each slice's losses weighted 1 / m.
  Terms that are means over examples give the large-batch step; the ones normalised by a
  whole-batch total (the warm-up's relative error, feature matching's scale, the STFT
  loss's spectral convergence) and the quantizer's statistics (EMA codebooks, dead codes)
  are per slice, as a batch norm's would be."""
  model, disc, opt_g, opt_d = nnx.merge(graphdef, state["nnx"])
  audio = batch["audio"]
  x = audio[..., None].astype(jnp.float32)
  disc_graph, disc_state = nnx.split(disc)
  frozen_disc = lambda y: nnx.merge(disc_graph, disc_state, copy=True)(y)
  share = 1.0 / micro_batches

  def generator_loss(model, part):
    audio = part["audio"]
    x = audio[..., None].astype(jnp.float32)
    recon, q, z = model.reconstruct(x)
    terms = reconstruction_terms(x, recon, loss)
    # how many directions the latent uses: a collapsing encoder shows here first
    terms["latent_rank"] = jax.lax.stop_gradient(audio_metrics.effective_rank(z))
    if warmup_mse:
      reconstruction = loss.mel * terms["wave_mse"]
    else:
      reconstruction = (loss.wave_l1 * terms["wave_l1"] + loss.mel * terms["mel_loss"]
                        + loss.stft * terms.get("stft_loss", 0.0))
    total = reconstruction + loss.quantizer * q.loss
    terms.update(quantizer_loss=q.loss, **{f"q/{k}": v for k, v in q.metrics.items()})
    if loss.phoneme_ctc:
      terms["phoneme_ctc"] = semantic.phoneme_ctc(model.phoneme_logits(q), part["phonemes"],
                                                  part["phoneme_count"], loss.blank_id)
      total = total + loss.phoneme_ctc * terms["phoneme_ctc"]
    if loss.feature_distill:
      wave = hubert.normalize_wave(audio) if loss.teacher_normalize else audio
      target = hubert.features(teacher_params, wave.astype(jnp.float32), loss.teacher,
                               loss.teacher_layer)
      terms["feature_distill"] = semantic.feature_distillation(
          model.teacher_features(q), target, loss.teacher_axis)
      total = total + loss.feature_distill * terms["feature_distill"]
    if gan:
      fake_out, real_out = frozen_disc(recon), frozen_disc(x)
      terms["adversarial_loss"] = discs.generator_hinge(fake_out)
      terms["feature_loss"] = discs.feature_matching(real_out, fake_out)
      total = (total + loss.adversarial * terms["adversarial_loss"]
               + loss.feature * terms["feature_loss"])
    terms = jax.tree.map(lambda t: t * share, terms)
    return total * share, {**terms, "recon": recon}

  (total, terms), grads = accumulated_value_and_grad(
      generator_loss, model, dict(batch), micro_batches, row_keys=("recon",))
  recon = terms.pop("recon")
  opt_g.update(model, grads)
  metrics = {"loss": total, **terms, "grad_norm/codec": optax.global_norm(grads),
             "si_sdr": jnp.mean(audio_metrics.si_sdr(recon, x))}
  if gan:
    def disc_loss(disc, part):
      real = part["audio"][..., None].astype(jnp.float32)
      return discs.discriminator_hinge(disc(real), disc(part["fake"])) * share, ()

    (d, _), d_grads = accumulated_value_and_grad(
        disc_loss, disc, {"audio": audio, "fake": jax.lax.stop_gradient(recon)}, micro_batches)
    opt_d.update(disc, d_grads)
    metrics.update({"disc_loss": d, "grad_norm/discriminator": optax.global_norm(d_grads)})
  return {"nnx": nnx.state((model, disc, opt_g, opt_d))}, metrics


def uses_gan(config: ml_collections.ConfigDict, step: int) -> bool:
  return (config.loss.adversarial > 0 or config.loss.feature > 0) and step >= config.loss.disc_start


# ----------------------------------------------------------------------------- job


class CodecJob(evaluators.TokenizerJob):
  postfix = ("loss", "mel_loss", "si_sdr")
  outputs = "audio/"
  teacher = None  # (params, HubertConfig) of loss.feature_distill's teacher, from `load`

  def check(self):
    check_config(self.config)

  def load(self):
    self.teacher = load_teacher(self.config) if distills_features(self.config) else None

  def init_state(self):
    return init_state(self.config)

  def train_data(self, batch_size):
    c = self.config
    return splits.audio_split(c, c.data.train_split, train=True, batch_size=batch_size,
                              max_phonemes=max_phonemes(c))

  def compile(self, graphdef, shardings):
    c = self.config.loss
    t = self.config.get("teacher", {})
    loss = LossSpec(self.config.data.sample_rate, c.wave_l1, c.mel, c.stft, c.quantizer,
                    c.adversarial, c.feature, c.get("phoneme_ctc", 0.0), len(speech.PHONEMES),
                    c.get("feature_distill", 0.0),
                    self.teacher[1] if self.teacher else None,
                    teacher_layer(self.config) if self.teacher else "avg",
                    t.get("axis", "time"), bool(t.get("normalize", False)))

    def step(gan, warmup_mse):
      return functools.partial(train_step, graphdef=graphdef, loss=loss, gan=gan,
                               warmup_mse=warmup_mse,
                               micro_batches=self.config.train.get("grad_accum_steps", 1))

    args = len(self.step_args())
    return {(gan, warmup): loop.jit_step(step(gan, warmup), self.config, shardings, self.mesh,
                                         num_args=args)
            for gan in (False, True) for warmup in (False, True)}

  def step_args(self):
    """The teacher's parameters (frozen: an argument of the step, not a constant in it)."""
    return (self.teacher[0],) if self.teacher else ()

  def variant(self, step):
    """(discriminators on, waveform warm-up): each pair is one compiled step."""
    return uses_gan(self.config, step), step < self.config.loss.get("mse_warmup_steps", 0)

  def units(self, batch):
    audio = batch["audio"]
    return {"audio_seconds": audio.shape[0] * audio.shape[1] / self.config.data.sample_rate}

  def abstract_batch(self):
    c = self.config
    length, b = splits.crop_length(c, c.data.crop_seconds), c.train.batch_size
    sharding = parallel.batch_sharding(self.mesh)
    batch = {"audio": jax.ShapeDtypeStruct((b, length), jnp.float32, sharding=sharding)}
    if max_phonemes(c):
      batch["phonemes"] = jax.ShapeDtypeStruct((b, max_phonemes(c)), jnp.int32,
                                               sharding=sharding)
      batch["phoneme_count"] = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding)
    return batch

  def started(self, graphdef, state):
    if self.main_process:
      model = eval_model(graphdef, state)
      print("bitrates: " + ", ".join(f"{n} levels {b / 1000:.2f} kbps"
                                      for n, b in audio_codec.bitrate_table(model)))

  def periodic(self, graphdef):
    c = self.config
    fixed = next(iterate(splits.audio_split(c, c.data.eval_split, train=False,
                                            batch_size=c.log.audio_examples,
                                            num_examples=c.log.audio_examples,
                                            split_by_process=False), threads=0))["audio"]
    replicated = parallel.put(fixed, NamedSharding(self.mesh, P()))

    def write_audio(state, step):
      recon, _ = evaluators.reconstruct_audio(state, replicated, graphdef=graphdef)
      if self.main_process:
        save_audio(os.path.join(self.workdir, "audio", f"step_{step:07d}"),
                   [("original", fixed), ("reconstruction", parallel.to_host(recon)[..., 0])],
                   c.data.sample_rate, self.writer, step)

    every = c.log.get("ladder_every", 0)
    if not every:
      return [(c.log.audio_every, write_audio)]
    cheap = c.copy_and_resolve_references()  # the ladder only: no WER, no probes
    cheap.eval.update(wer_utterances=0, probe_utterances=0)

    def write_ladder(state, step):
      if step >= c.train.steps:
        return  # the final evaluation (summary.json) is the curve's last point
      r = evaluators.evaluate_audio(cheap, graphdef, state, self.mesh,
                                    split=c.data.eval_split, num_examples=c.log.eval_examples)
      self.writer.write(step, ladder_scalars(r))

    return [(c.log.audio_every, write_audio), (every, write_ladder)]


LADDER_METRICS = ("mel_distance", "stoi", "pesq", "si_sdr")


def ladder_scalars(r: dict[str, Any]) -> dict[str, float]:
  """`ladder/<metric>@<levels>` (and @unquantized) of an `evaluate_audio` result: the
  quality-against-steps curve of every bitrate, logged during training; with the share
  of the latent each depth misses and the latent's rank (is the quantizer the limit, or
  the autoencoder?)."""
  levels = range(1, r["levels"] + 1)
  keys = [f"{m}@{n}" for m in LADDER_METRICS for n in (*levels, "unquantized")]
  keys += [f"latent_error@{n}" for n in levels] + ["latent_rank"]
  return {f"ladder/{k}": r[k] for k in keys if k in r}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the summary also written to summary.json."""
  return loop.train_job(CodecJob(config, workdir))
