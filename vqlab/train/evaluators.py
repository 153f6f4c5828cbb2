"""Held-out reconstruction evaluators of tokenizer runs, shared by the trainers (after
the last step) and `vqlab eval` (any checkpoint of any tokenizer run):

- images (`evaluate_images`): PSNR, SSIM, code usage and perplexity of fixed crops, and
  rFID (Frechet distance of Inception features, originals vs reconstructions) when
  Inception weights are given; for 1D tokenizers (TiTok) the PSNR of decoding only the
  first k tokens, k = 1, 2, 4, ..., K (ordered tokens keep improving with k); for clips the same per frame, the PSNR of the frames
  after the first against repeating the first frame (the floor a video tokenizer must
  beat), and rFVD (Frechet distance of I3D features) when I3D weights are given;
- audio (`evaluate_audio`): held-out clips reconstructed with 1 .. L residual levels:
  SI-SDR, mel distance, PESQ / STOI (when installed) and the bitrate of each; code usage
  per level; word error rate of whole transcribed utterances at each number of levels
  (`eval.wer_utterances`, PocketSphinx when installed); and on the built-in speech, a
  phoneme probe on each level's frozen tokens (`eval.probe_utterances`): how much of
  what is said each level carries (SpeechTokenizer's disentanglement measure).
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vqlab import parallel
from vqlab.data import builtin, speech, splits
from vqlab.data.pipeline import PrepareAudio, iterate
from vqlab.eval import audio_metrics, digits, i3d, inception, probe, speech_recognition
from vqlab.eval.image_metrics import frames, frechet_distance, gaussian_stats, psnr, ssim
from vqlab.models import audio_codec
from vqlab.quantizers.core import usage_metrics
from vqlab.train import loop
from vqlab.train.common import local_batch_size, to_unit
from vqlab.train.runs import eval_model, kind


DIGITS_CLASSIFIER_VERSION = 1  # bump when the classifier or its training changes


@functools.partial(jax.jit, static_argnames=("graphdef",))
def reconstruct_images(state, images, *, graphdef):
  """Reconstructions (in [-1, 1]) and indices of uint8 images, evaluation weights."""
  recon, q = eval_model(graphdef, state)(to_unit(images))
  return recon, q.indices


@functools.partial(jax.jit, static_argnames=("graphdef",))
def decode_prefix(state, indices, k, *, graphdef):
  """A 1D tokenizer's images from the first `k` of its tokens (k traced: one program)."""
  return eval_model(graphdef, state).decode_prefix(indices, k)


def prefix_lengths(num_tokens: int) -> list[int]:
  """1, 2, 4, ... below K, then K: the prefixes a 1D tokenizer is evaluated at."""
  return sorted({2**i for i in range(num_tokens.bit_length()) if 2**i < num_tokens} |
                {num_tokens})


@functools.partial(jax.jit, static_argnames=("graphdef",))
def reconstruct_audio(state, audio, num_levels=None, *, graphdef):
  """(reconstruction (B, T, C), indices (B, F, levels)) with the first `num_levels` levels
  (an int or an int32 array: one compiled function serves every bitrate)."""
  recon, q = eval_model(graphdef, state)(audio, num_levels)
  return recon, q.indices


@functools.partial(jax.jit, static_argnames=("graphdef",))
def encode_audio(state, audio, *, graphdef):
  """Indices (B, F, levels) of audio (B, T), every level, evaluation weights."""
  return eval_model(graphdef, state).encode(audio).indices


@functools.partial(jax.jit, static_argnames=("graphdef",))
def latent_ladder(state, audio, *, graphdef):
  """Where a codec's bottleneck is: the reconstruction from the encoder's latent with no
  quantization (the ceiling any number of levels approaches), and per number of levels n
  the squared error of the quantized latent summed over the batch, with the latent's
  total variance (their ratio is the share of the latent the first n levels miss); and
  the reconstruction from the latent cut to its top principal direction (over the
  batch's frames): when it matches the unquantized one, the decoder reads one scalar per
  frame and no number of levels can add anything."""
  model = eval_model(graphdef, state)
  length = audio.shape[1]
  z = model.encoder(model.pad(audio)).astype(jnp.float32)
  recon = model.decoder(z)[:, :length]
  errors = jnp.stack([jnp.sum(jnp.square(z - model.quantize(z, n).quantized))
                      for n in range(1, model.num_levels + 1)])
  mean = jnp.mean(z, axis=(0, 1))
  variance = jnp.sum(jnp.square(z - mean))
  top = jnp.linalg.svd((z - mean).reshape(-1, z.shape[-1]), full_matrices=False)[2][0]
  on_top = mean + jnp.einsum("bfd,d->bf", z - mean, top)[..., None] * top
  return recon, z, errors, variance, model.decoder(on_top)[:, :length]


@jax.jit
def _i3d_pair(params, x, recon):
  return i3d.i3d_features(params, x), i3d.i3d_features(params, recon)


@jax.jit
def _inception_pair(params, x, recon):
  return inception.inception_features(params, x), inception.inception_features(params, recon)


def _batches(config, split: str, num_examples: int, mesh, key: str, split_fn):
  """Global batches of `key` covering `num_examples` of the split (this process's part)."""
  batch = config.train.batch_size
  ds = split_fn(config, split, train=False, batch_size=local_batch_size(batch, mesh),
                num_examples=num_examples)
  sharding = parallel.batch_sharding(mesh)
  it = iterate(ds, config.data.threads, config.data.prefetch, config.data.get("workers", 0))
  try:
    for i, b in enumerate(it):
      if i * batch >= num_examples:
        return
      yield jax.make_array_from_process_local_data(sharding, b[key])
  finally:
    it.close()


def _no_batch(config, split):
  return ValueError(f"data: split {split!r} of {config.data.name!r} gave no full batch of "
                    f"{config.train.batch_size}")


def evaluate_images(config: ml_collections.ConfigDict, graphdef, state, mesh, *, split: str,
                    num_examples: int, inception_params=None, i3d_params=None
                    ) -> dict[str, Any]:
  """PSNR, SSIM, code usage and perplexity of held-out reconstructions (fixed crops);
  rFID when `inception_params` are given. Clips (`data.num_frames` > 0): the same over
  their frames, over the frames after the first the PSNR of the reconstruction
  (`psnr_after_first`) and of repeating the first frame (`psnr_repeat_first`), and rFVD
  when `i3d_params` are given."""
  if i3d_params is not None and not splits.is_video(config):
    raise ValueError("i3d: rFVD is a video metric; expected no I3D weights for an image run")
  psnrs, ssims, counts, real_feats, fake_feats = [], [], None, [], []
  later, repeat, real_clips, fake_clips = [], [], [], []
  model = eval_model(graphdef, state)
  codebook = model.quantizer.codebook_size
  video = splits.is_video(config)
  prefixes = prefix_lengths(model.token_shape[0]) if len(model.token_shape) == 1 else []
  prefix_psnrs: dict[int, list] = {k: [] for k in prefixes}
  for images in _batches(config, split, num_examples, mesh, splits.tokenizer_key(config),
                         splits.tokenizer_split):
    recon, indices = reconstruct_images(state, images, graphdef=graphdef)
    x = to_unit(images)
    if video and x.shape[1] > 1:
      later.append(parallel.to_host(psnr(frames(recon[:, 1:]), frames(x[:, 1:]))))
      first = jnp.broadcast_to(x[:, :1], x[:, 1:].shape)
      repeat.append(parallel.to_host(psnr(frames(first), frames(x[:, 1:]))))
    if i3d_params is not None:
      real, fake = _i3d_pair(i3d_params, x, recon)
      real_clips.append(parallel.to_host(real))
      fake_clips.append(parallel.to_host(fake))
    for k in prefixes:
      part = decode_prefix(state, indices, jnp.int32(k), graphdef=graphdef)
      prefix_psnrs[k].append(parallel.to_host(psnr(part, x)))
    recon, x = frames(recon), frames(x)
    psnrs.append(parallel.to_host(psnr(recon, x)))
    if min(x.shape[1:3]) >= 11:
      ssims.append(parallel.to_host(ssim(recon, x)))
    if inception_params is not None:
      real, fake = _inception_pair(inception_params, x, recon)
      real_feats.append(parallel.to_host(real))
      fake_feats.append(parallel.to_host(fake))
    flat = parallel.to_host(indices).ravel()
    c = np.bincount(flat[flat >= 0], minlength=codebook)  # -1: a dropped residual level
    counts = c if counts is None else counts + c
  if counts is None:
    raise _no_batch(config, split)
  usage = usage_metrics(jnp.asarray(counts, jnp.float32))
  extra = {}
  if later:
    extra.update(psnr_after_first=float(np.mean(np.concatenate(later))),
                 psnr_repeat_first=float(np.mean(np.concatenate(repeat))),
                 frames=int(config.data.num_frames))
  if i3d_params is not None:
    extra["rfvd"] = frechet_distance(*gaussian_stats(np.concatenate(real_clips)),
                                     *gaussian_stats(np.concatenate(fake_clips)))
  if inception_params is not None:
    extra["rfid"] = frechet_distance(*gaussian_stats(np.concatenate(real_feats)),
                                     *gaussian_stats(np.concatenate(fake_feats)))
  if prefixes:
    extra["psnr_at_tokens"] = {str(k): float(np.mean(np.concatenate(v)))
                               for k, v in prefix_psnrs.items()}
  return {**extra, "psnr": float(np.mean(np.concatenate(psnrs))),
          "ssim": float(np.mean(np.concatenate(ssims))) if ssims else float("nan"),
          "usage": float(usage["usage"]), "perplexity": float(usage["perplexity"]),
          "codebook_size": int(codebook),
          "examples": int(sum(len(p) for p in psnrs)) // (config.data.num_frames if video else 1)}


def describe_images(r: dict[str, Any]) -> str:
  rfid = f"rFID {r['rfid']:.2f}, " if "rfid" in r else ""
  rfid += f"rFVD {r['rfvd']:.1f}, " if "rfvd" in r else ""
  what = f"clips of {r['frames']} frames" if "frames" in r else "images"
  later = (f"; frames after the first: PSNR {r['psnr_after_first']:.2f} dB vs "
           f"{r['psnr_repeat_first']:.2f} dB repeating the first frame"
           if "psnr_after_first" in r else "")
  if "psnr_at_tokens" in r:
    later += "; PSNR from the first k tokens: " + ", ".join(
        f"k={k} {v:.2f} dB" for k, v in r["psnr_at_tokens"].items())
  return (f"{rfid}PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, code usage {r['usage']:.1%} "
          f"of {r['codebook_size']}, perplexity {r['perplexity']:.0f} ({r['examples']} "
          f"{what}){later}")


def evaluate_audio(config: ml_collections.ConfigDict, graphdef, state, mesh, *, split: str,
                   num_examples: int) -> dict[str, Any]:
  """Held-out clips reconstructed with 1 .. L residual levels: SI-SDR, mel distance,
  PESQ / STOI (when installed) and the bitrate of each; code usage per level (all levels);
  the same from the unquantized latent, the share of the latent each number of levels
  misses and the latent's effective rank (`latent_ladder`), which tell whether the
  quantizer or the autoencoder limits the codec; WER when `eval.wer_utterances`."""
  model = eval_model(graphdef, state)
  levels, rate = model.num_levels, config.data.sample_rate
  sums: dict[str, list] = {}
  counts = np.zeros((levels, model.quantizer.codebook_size), np.int64)
  seen = 0
  latent_errors, latent_variance, latents = np.zeros(levels), 0.0, []
  for audio in _batches(config, split, num_examples, mesh, "audio", splits.audio_split):
    x = parallel.to_host(audio)
    unquantized, z, errors, variance, one_direction = latent_ladder(state, audio,
                                                                    graphdef=graphdef)
    u = parallel.to_host(unquantized)
    latents.append(parallel.to_host(z))
    sums.setdefault("si_sdr@unquantized", []).append(np.asarray(audio_metrics.si_sdr(u, x)))
    sums.setdefault("mel_distance@unquantized", []).append(
        np.asarray(audio_metrics.mel_distance(u, x, rate)))
    sums.setdefault("mel_distance@top_direction", []).append(np.asarray(
        audio_metrics.mel_distance(parallel.to_host(one_direction), x, rate)))
    latent_errors += np.asarray(parallel.to_host(errors), np.float64)
    latent_variance += float(parallel.to_host(variance))
    for n in range(1, levels + 1):
      recon, indices = reconstruct_audio(state, audio, jnp.int32(n), graphdef=graphdef)
      r = parallel.to_host(recon)
      scores = {"si_sdr": audio_metrics.si_sdr(r, x),
                "mel_distance": audio_metrics.mel_distance(r, x, rate)}
      for k, v in scores.items():
        sums.setdefault(f"{k}@{n}", []).append(np.asarray(v))
      for k, v in audio_metrics.pesq_stoi(r, x, rate).items():
        sums.setdefault(f"{k}@{n}", []).append(np.full(len(x), v))
    flat = parallel.to_host(indices).reshape(-1, levels)
    for l in range(levels):
      counts[l] += np.bincount(flat[:, l], minlength=counts.shape[1])
    seen += len(x)
  if not seen:
    raise _no_batch(config, split)
  out = {k: float(np.mean(np.concatenate(v))) for k, v in sums.items()}
  out.update({f"latent_error@{n}": float(e / max(latent_variance, 1e-30))
              for n, e in enumerate(latent_errors, 1)})
  out["latent_rank"] = float(audio_metrics.effective_rank(np.concatenate(latents)))
  out.update(audio_metrics.level_usage(counts))
  out["si_sdr"], out["mel_distance"] = out[f"si_sdr@{levels}"], out[f"mel_distance@{levels}"]
  out["bitrate@n"] = {n: b for n, b in audio_codec.bitrate_table(model)}
  out.update(examples=seen, levels=levels, frame_rate=model.frame_rate,
             latent_width=int(model.shape.latent_dim),
             codebook_size=int(model.quantizer.codebook_size))
  utterances = config.get("eval", {}).get("wer_utterances", 0)
  if utterances:
    out.update(evaluate_wer(config, graphdef, state, mesh, split=split,
                            max_utterances=utterances))
  if config.get("eval", {}).get("probe_utterances", 0):
    out.update(evaluate_phoneme_probes(config, graphdef, state, mesh))
  return out


def _whole_utterance_batches(waves: list[np.ndarray], hop: int, batch_size: int, mesh):
  """(the utterances of a batch, their batch (batch_size, length) zero-padded, replicated
  on the mesh) for whole utterances of any lengths. One padded length for all: one
  compiled function. Zeros after the end change nothing before it in a causal codec; in a
  centred one they touch the last half-window only."""
  length = audio_codec.num_frames(max(map(len, waves)), hop) * hop
  replicated = NamedSharding(mesh, P())
  for start in range(0, len(waves), batch_size):
    part = waves[start:start + batch_size]
    batch = np.zeros((batch_size, length), np.float32)
    for i, w in enumerate(part):
      batch[i, :len(w)] = w
    yield part, parallel.put(batch, replicated)


def level_tokens(config: ml_collections.ConfigDict, graphdef, state, mesh, split: str,
                 num_utterances: int, batch_size: int = 8
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per whole utterance of a built-in speech split: its codes (frames, levels) and the
  espeak-ng phoneme at each frame's centre."""
  model = eval_model(graphdef, state)
  rate, hop = config.data.sample_rate, model.hop
  utterances = splits.aligned_speech(config, split, num_utterances)
  waves = [u["audio"] for u in utterances]
  codes = []
  for part, audio in _whole_utterance_batches(waves, hop, batch_size, mesh):
    indices = parallel.to_host(encode_audio(state, audio, graphdef=graphdef))
    codes.extend(indices[i, :audio_codec.num_frames(len(w), hop)] for i, w in enumerate(part))
  labels = [speech.frame_labels(u["phoneme_starts"], u["phoneme_ids"], len(c), hop / rate,
                                rate, centre=0.5) for u, c in zip(utterances, codes)]
  return codes, labels


def evaluate_phoneme_probes(config: ml_collections.ConfigDict, graphdef, state, mesh
                            ) -> dict[str, Any]:
  """Frame phone error rate of a probe on each level's frozen tokens alone
  (`phone_error@level{l}`), fitted on `eval.probe_utterances` espeak-ng training
  utterances and scored on the held-out synth_test split (`eval.probe_held_out` of it, 0:
  all); `phone_error@majority` is the floor of a probe that always names the commonest
  phoneme."""
  e = config.eval
  if config.data.name != "vqlab_speech":
    print(f"phoneme probe: skipped, it needs the built-in speech's espeak-ng phonemes "
          f"(data.name 'vqlab_speech'), got {config.data.name!r}")
    return {}
  codebook = int(eval_model(graphdef, state).quantizer.codebook_size)
  fit_codes, fit_labels = level_tokens(config, graphdef, state, mesh, "train",
                                       e.probe_utterances)
  codes, labels = level_tokens(config, graphdef, state, mesh, "synth_test",
                               e.get("probe_held_out", 0))
  held = np.concatenate(labels)
  out = {"phone_error@majority": float(1 - np.bincount(held).max() / len(held)),
         "probe_utterances": len(fit_codes), "probe_held_out": len(codes)}
  for l in range(fit_codes[0].shape[1]):
    out[f"phone_error@level{l + 1}"] = probe.phone_error_rate(
        [c[:, l] for c in fit_codes], fit_labels, [c[:, l] for c in codes], labels, codebook,
        len(speech.PHONEMES), steps=e.get("probe_steps", 400), seed=config.seed)
  return out


def transcribed_utterances(config: ml_collections.ConfigDict, split: str,
                           max_utterances: int) -> tuple[list[np.ndarray], list[str]]:
  """Whole utterances of `split` that have a transcript (resampled and loudness-
  normalised as the codec sees them), and their transcripts; at most `max_utterances`."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  prepare = PrepareAudio(d.key, d.sample_rate, d.target_dbfs if d.normalize else None,
                         d.source_rate)
  waves, texts = [], []
  for i in range(len(source)):
    example = source[i]
    text = example.get("text", b"")
    text = text.decode() if isinstance(text, bytes) else str(text)
    if speech_recognition.normalize_text(text):
      waves.append(prepare.map(example)["audio"])
      texts.append(text)
    if len(texts) == max_utterances:
      break
  return waves, texts


def evaluate_wer(config: ml_collections.ConfigDict, graphdef, state, mesh, *, split: str,
                 max_utterances: int, batch_size: int = 4) -> dict[str, Any]:
  """Word error rate of PocketSphinx's transcripts of whole held-out utterances, the
  originals (`wer_original`, the recogniser's floor) and the reconstructions with 1 .. L
  levels (`wer@n`); nothing (and a message) without pocketsphinx or transcripts."""
  if not speech_recognition.available():
    print("WER: skipped, pocketsphinx is not installed (pip install pocketsphinx)")
    return {}
  waves, texts = transcribed_utterances(config, split, max_utterances)
  if not texts:
    print(f"WER: skipped, no utterance of {config.data.name} {split} has a transcript")
    return {}
  model = eval_model(graphdef, state)
  rate, levels = config.data.sample_rate, model.num_levels
  recognizer = speech_recognition.Recognizer()
  heard = {"original": [recognizer.transcribe(w, rate) for w in waves]}
  for part, audio in _whole_utterance_batches(waves, model.hop, batch_size, mesh):
    for n in range(1, levels + 1):
      recon, _ = reconstruct_audio(state, audio, jnp.int32(n), graphdef=graphdef)
      recon = parallel.to_host(recon)[..., 0]
      heard.setdefault(n, []).extend(recognizer.transcribe(r[:len(w)], rate)
                                     for r, w in zip(recon, part))
  out = {f"wer@{n}": speech_recognition.word_error_rate(texts, heard[n])
         for n in range(1, levels + 1)}
  out.update(wer_original=speech_recognition.word_error_rate(texts, heard["original"]),
             wer_utterances=len(texts),
             wer_words=sum(len(speech_recognition.normalize_text(t)) for t in texts))
  return out


def describe_audio(r: dict[str, Any]) -> str:
  rows = [f"  {n} level{'s' if n > 1 else ' '} {r['bitrate@n'][n] / 1000:6.2f} kbps: SI-SDR "
          f"{r[f'si_sdr@{n}']:6.2f} dB, mel distance {r[f'mel_distance@{n}']:.3f}"
          + "".join(f", {m.upper()} {r[f'{m}@{n}']:.3f}" for m in ("pesq", "stoi")
                    if f"{m}@{n}" in r)
          for n in range(1, r["levels"] + 1)]
  usage = ", ".join(f"{r[f'level{l}/usage']:.0%}" for l in range(r["levels"]))
  if "mel_distance@unquantized" in r:
    rows.insert(0, f"  unquantized latent: SI-SDR {r['si_sdr@unquantized']:6.2f} dB, mel "
                   f"distance {r['mel_distance@unquantized']:.3f} (the ceiling of the levels); "
                   f"effective rank {r['latent_rank']:.1f} of {r['latent_width']}")
    missed = ", ".join(f"{r[f'latent_error@{n}']:.1%}" for n in range(1, r["levels"] + 1))
    rows.append(f"  share of the latent's variance the first 1 .. {r['levels']} levels miss: "
                f"{missed}")
    if "mel_distance@top_direction" in r:
      rows.append(f"  the latent cut to its top principal direction: mel distance "
                  f"{r['mel_distance@top_direction']:.3f} (if it matches the unquantized one, "
                  f"the decoder reads one scalar per frame)")
  rows.append(f"  code usage per level ({r['codebook_size']} codes): {usage} "
              f"({r['examples']} clips, {r['frame_rate']:g} frames/s)")
  if "wer_original" in r:
    wer = ", ".join(f"{n}: {r[f'wer@{n}']:.0%}" for n in range(1, r["levels"] + 1))
    rows.append(f"  WER (PocketSphinx, {r['wer_utterances']} whole utterances, "
                f"{r['wer_words']} words): originals {r['wer_original']:.0%}; levels {wer}")
  if "phone_error@majority" in r:
    per = ", ".join(f"{l}: {r[f'phone_error@level{l}']:.0%}" for l in range(1, r["levels"] + 1))
    rows.append(f"  phoneme probe on each level's tokens (frame error; fitted on "
                f"{r['probe_utterances']} espeak-ng utterances, {r['probe_held_out']} held "
                f"out): levels {per}; the commonest phoneme alone {r['phone_error@majority']:.0%}")
  return "\n".join(rows)


def evaluate(config: ml_collections.ConfigDict, graphdef, state, mesh, *,
             split: str | None = None, num_examples: int | None = None,
             inception_params=None, i3d_params=None) -> dict[str, Any]:
  """The evaluator of the run's kind, images / clips (tokenizer) or audio (codec), on
  `split` (default the config's eval split) and `num_examples` (default
  `log.eval_examples`)."""
  split = split or config.data.eval_split
  num_examples = num_examples or config.log.eval_examples
  if kind(config) == "codec":
    if inception_params is not None or i3d_params is not None:
      raise ValueError("inception / i3d: rFID is an image metric and rFVD a video one; "
                       "expected no Inception or I3D weights for an audio codec run")
    return evaluate_audio(config, graphdef, state, mesh, split=split,
                          num_examples=num_examples)
  return evaluate_images(config, graphdef, state, mesh, split=split,
                         num_examples=num_examples, inception_params=inception_params,
                         i3d_params=i3d_params)


def describe(config: ml_collections.ConfigDict, r: dict[str, Any],
             split: str | None = None) -> str:
  """What `evaluate` found, for the console (audio: one line per bitrate)."""
  head = f"{config.data.name} {split or config.data.eval_split}:"
  if kind(config) == "codec":
    return f"{head}\n{describe_audio(r)}"
  return f"{head} {describe_images(r)}"


class TokenizerJob(loop.Job):
  """The base of the tokenizer trainers (image, audio): a model and a discriminator that
  a resumed run may not change, evaluated by `evaluate` after the last step."""
  fixed_sections = ("model", "disc")

  def evaluate(self, graphdef, state):
    return evaluate(self.config, graphdef, state, self.mesh)

  def describe(self, summary):
    return describe(self.config, summary)


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images, labels), (test images, labels)) of the built-in digits, the split of
  the `vqlab_digits` dataset (4,500 / 500); read once per process (every sample setting a
  generator is scored at compares with the same test digits)."""
  from vqlab.data.builtin import DIGITS_TEST_SIZE
  from vqlab.data.digits import load_mnist_digits, split_indices
  images, labels = load_mnist_digits(pad_to=32)
  train, test = split_indices(len(images), DIGITS_TEST_SIZE)
  return (images[train], labels[train]), (images[test], labels[test])


def digits_classifier(cache_dir: str | None = None, *, min_accuracy: float = 0.98):
  """(parameters, meta) of the digits sample-metric classifier (vqlab/eval/digits.py),
  trained once on the training digits and cached in `cache_dir` (default $VQLAB_CACHE or
  ~/.cache/vqlab). Training one that scores below `min_accuracy` on the 500 test digits
  is an error: its FID and class accuracy would not mean what they say."""
  cache_dir = cache_dir or os.environ.get("VQLAB_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "vqlab")
  path = os.path.join(cache_dir, f"digits_classifier_v{DIGITS_CLASSIFIER_VERSION}.npz")
  if os.path.exists(path):
    return digits.load(path)
  os.makedirs(cache_dir, exist_ok=True)
  with open(path + ".lock", "w") as lock:  # processes that start together train it once
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path):
      (train_x, train_y), (test_x, test_y) = digits_split()
      print(f"digits classifier: training on {len(train_x)} digits (once; cached in {path})")
      params = digits.train(train_x, train_y)
      acc = digits.accuracy(params, test_x, test_y)
      if acc < min_accuracy:
        raise RuntimeError(f"digits classifier: held-out accuracy {acc:.4f}, expected >= "
                           f"{min_accuracy}")
      digits.save(path, params, {"test_accuracy": acc, "train_examples": len(train_x)})
  return digits.load(path)


def class_balanced_samples(sample_fn, num_classes: int, examples: int, batch_size: int,
                           seed: int):
  """Yields (labels, sample_fn(labels, key)) batch by batch until `examples` samples are
  made, the labels cycling through the classes so that every class is equally
  represented (the last batch is full; the caller trims to `examples`)."""
  for i in range(math.ceil(examples / batch_size)):
    labels = (i * batch_size + jnp.arange(batch_size, dtype=jnp.int32)) % num_classes
    yield labels, sample_fn(labels, jax.random.key(seed + i))


def digits_sample_metrics(sample_fn, num_classes: int, examples: int, batch_size: int,
                          seed: int) -> dict[str, Any]:
  """Digits FID / precision / recall against the 500 test digits and class accuracy of
  `examples` class-balanced samples; `sample_fn(labels, key)` gives images in [-1, 1]."""
  params, meta = digits_classifier()
  _, (test_x, _) = digits_split()
  samples, labels = [], []
  for y, images in class_balanced_samples(sample_fn, num_classes, examples, batch_size,
                                          seed + 2_000_003):
    samples.append(np.asarray(images))
    labels.append(np.asarray(y))
  samples, labels = np.concatenate(samples)[:examples], np.concatenate(labels)[:examples]
  out = digits.sample_metrics(params, test_x, samples, labels if num_classes > 1 else None)
  out["classifier_test_accuracy"] = float(meta["test_accuracy"])
  return out
