"""`vqlab units`: k-means units of speech features, scored against espeak-ng's phonemes and
exported as token records (configs/speech_units.py says what and why).

WORKDIR/: summary.json (unit quality on the eval and train splits and of random units),
units.npz (the feature normalisation and centres: `assign` maps new features to units),
tokens/<split>/ (records of `export_length` de-duplicated units, vqlab.data.tokens), and
config.json. A finished workdir is not recomputed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.data import speech, splits, tokens
from vqlab.eval import units as unit_metrics
from vqlab.losses.spectral import mel_spectrogram
from vqlab.models import hubert
from vqlab.quantizers.search import nearest_code
from vqlab.quantizers.vq import kmeans

FEATURES = ("mfcc", "logmel", "hubert")
MFCC_COEFFICIENTS = 13


def _deltas(c: np.ndarray, width: int = 2) -> np.ndarray:
  """HTK regression deltas over +-`width` frames (edges repeated)."""
  padded = np.pad(c, ((width, width), (0, 0)), mode="edge")
  n = len(c)
  num = sum(k * (padded[width + k:width + k + n] - padded[width - k:width - k + n])
            for k in range(1, width + 1))
  return num / (2 * sum(k * k for k in range(1, width + 1)))


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Orthonormal DCT-II, (n_in, n_out): log-mel -> cepstra."""
  k, n = np.arange(n_out)[None, :], np.arange(n_in)[:, None]
  m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
  m[:, 0] /= np.sqrt(2.0)
  return m.astype(np.float32)


BUCKET_SECONDS = 1.0  # inputs padded to whole buckets: one compiled shape per bucket


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _log_mel(wave, rate: int, n_fft: int, hop: int, n_mels: int):
  return jnp.log(mel_spectrogram(wave[None], rate, n_fft, hop, n_mels)[0] + 1e-5)


@functools.lru_cache(maxsize=2)
def _teacher(path: str) -> tuple[dict, hubert.HubertConfig]:
  return hubert.load_npz(path)


_hubert_features = jax.jit(hubert.features, static_argnames=("config", "layer"))


def frame_grid(config: ml_collections.ConfigDict) -> tuple[int, float]:
  """(hop in samples, where frame t is centred in hops after t * hop) of the features:
  the STFT's centred frames, or the teacher's conv frames."""
  u = config.units
  if u.features == "hubert":
    teacher = _teacher(u.teacher)[1]
    return teacher.hop, hubert.frame_centre(teacher)
  return u.hop, 0.0


def check_features(config: ml_collections.ConfigDict) -> None:
  u = config.units
  if u.features not in FEATURES:
    raise ValueError(f"units.features: expected one of {FEATURES}, got {u.features!r}")


def features(wave: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """(frames, dim) features of a waveform, frame t centred at (t + `frame_grid(config)[1]`)
  hops: MFCC / log-mel (centred STFT frames) or a converted HuBERT's layer
  `units.teacher_layer` (its hop; GSLM's units are HuBERT base's layer 6)."""
  u = config.units
  check_features(config)
  bucket = int(BUCKET_SECONDS * config.data.sample_rate)
  padded = np.pad(wave, (0, -len(wave) % bucket))
  if u.features == "hubert":  # padded to few shapes; `lengths` keeps the frames exact
    params, teacher = _teacher(u.teacher)
    x = hubert.normalize_wave(jnp.asarray(wave))[None] if u.teacher_normalize else wave[None]
    x = jnp.pad(jnp.asarray(x, jnp.float32), ((0, 0), (0, len(padded) - len(wave))))
    f = _hubert_features(params, x, teacher, int(u.teacher_layer),
                         jnp.asarray([len(wave)]))
    return np.asarray(f[0, :max(hubert.num_frames(len(wave), teacher), 0)])
  frames = 1 + len(wave) // u.hop  # the centred STFT's frames of the unpadded wave
  logmel = np.asarray(_log_mel(jnp.asarray(padded), config.data.sample_rate, u.n_fft, u.hop,
                               u.n_mels))[:frames]
  if u.features == "logmel":
    return logmel
  c = logmel @ _dct_matrix(u.n_mels, MFCC_COEFFICIENTS)
  d = _deltas(c)
  return np.concatenate([c, d, _deltas(d)], axis=1)


def _split_frames(config, split: str):
  """Per utterance: (features, frame labels) of the split."""
  u = config.units
  out = []
  hop, centre = frame_grid(config)
  for utt in splits.aligned_speech(config, split, u.examples or None):
    f = features(utt["audio"], config)
    labels = speech.frame_labels(utt["phoneme_starts"], utt["phoneme_ids"], len(f),
                                 hop / config.data.sample_rate, config.data.sample_rate,
                                 centre=centre)
    out.append((f, labels))
  return out


_nearest = jax.jit(nearest_code)


def assign(feats: np.ndarray, mean: np.ndarray, std: np.ndarray, centres: np.ndarray
           ) -> np.ndarray:
  """The unit (nearest centre) of each frame of raw features."""
  x = (feats - mean) / std
  idx, _ = _nearest(jnp.asarray(np.pad(x, ((0, -len(x) % 256), (0, 0)))), jnp.asarray(centres))
  return np.asarray(idx)[:len(x)]  # frames padded to a multiple of 256: few compiled shapes


def _records(per_utterance: list[np.ndarray], length: int):
  for u in per_utterance:
    d = unit_metrics.deduplicate(u)
    for start in range(0, len(d) - length + 1, length):
      yield {"indices": d[start:start + length].astype(np.int32)}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  u = config.units
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    print(f"units: {workdir} is finished (summary.json); delete it to recompute")
    return summary
  check_features(config)
  if u.features == "hubert":  # read (and checked) before the workdir is made
    if not u.get("teacher"):
      raise ValueError("units.features='hubert': needs units.teacher, a HuBERT .npz from "
                       "`vqlab convert hubert`")
    layers = _teacher(u.teacher)[1].num_layers
    if not 0 <= int(u.teacher_layer) <= layers:
      raise ValueError(f"units.teacher_layer: expected 0 .. {layers}, got {u.teacher_layer}")
  os.makedirs(workdir, exist_ok=True)
  shutil.rmtree(os.path.join(workdir, "tokens"), ignore_errors=True)  # an unfinished try's
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  train_set, eval_set = _split_frames(config, u.train_split), _split_frames(config, u.eval_split)
  all_train = np.concatenate([f for f, _ in train_set])
  mean, std = all_train.mean(axis=0), all_train.std(axis=0) + 1e-5
  rng = np.random.default_rng(config.seed)
  fit = all_train[rng.permutation(len(all_train))[:u.max_train_frames]]
  centres, _ = kmeans(jnp.asarray((fit - mean) / std), u.num_units,
                      jax.random.key(config.seed), iters=u.kmeans_iters)
  centres = np.asarray(centres)
  np.savez(os.path.join(workdir, "units.npz"), mean=mean, std=std, centres=centres,
           features=u.features)
  hop = frame_grid(config)[0]
  summary: dict[str, Any] = {"features": u.features, "num_units": u.num_units,
                             "frame_rate": config.data.sample_rate / hop}
  assigned = {}
  for name, split_set in (("eval", eval_set), ("train", train_set)):
    per_utt = [assign(f, mean, std, centres) for f, _ in split_set]
    assigned[name] = per_utt
    labels = np.concatenate([lab for _, lab in split_set])
    q = unit_metrics.unit_quality(labels, np.concatenate(per_utt), len(speech.PHONEMES),
                                  u.num_units)
    summary.update({f"{name}/{k}": v for k, v in q.items()})
    if name == "eval":  # the floor: as many units, drawn at random per frame
      random = rng.integers(0, u.num_units, len(labels))
      q = unit_metrics.unit_quality(labels, random, len(speech.PHONEMES), u.num_units)
      summary.update({f"random/{k}": v for k, v in q.items()})
      seconds = sum(len(f) for f, _ in split_set) * hop / config.data.sample_rate
      runs_ = [np.concatenate([[0], np.flatnonzero(np.diff(lab)) + 1]) for _, lab in split_set]
      summary["eval/deduplicated_units_per_second"] = sum(
          len(unit_metrics.deduplicate(p)) for p in per_utt) / seconds
      summary["eval/phoneme_segments_per_second"] = sum(len(r) for r in runs_) / seconds
  for name, split in (("train", u.train_split), ("eval", u.eval_split)):
    meta = {"modality": "units", "codebook_size": int(u.num_units), "frames": int(u.export_length),
            "levels": 1, "features": u.features, "split": split, "dataset": config.data.name,
            "deduplicated": True, "units_workdir": os.path.abspath(workdir)}
    summary[f"{name}/records"] = tokens.write_tokens(
        os.path.join(workdir, "tokens", split), _records(assigned[name], u.export_length), meta)
  print(report(summary))
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)  # last: a workdir with summary.json is whole
  return summary


def report(s: dict[str, Any]) -> str:
  rows = [f"{s['num_units']} k-means units of {s['features']} at {s['frame_rate']:g} frames/s "
          "against espeak-ng's phonemes:", "  split        phone purity  cluster purity  PNMI"]
  for name in ("eval", "train", "random"):
    rows.append(f"  {name:12s} {s[f'{name}/phone_purity']:12.3f}  "
                f"{s[f'{name}/cluster_purity']:14.3f}  {s[f'{name}/pnmi']:.3f}")
  rows.append(f"  de-duplicated: {s['eval/deduplicated_units_per_second']:.1f} units/s "
              f"(phoneme segments: {s['eval/phoneme_segments_per_second']:.1f}/s)")
  return "\n".join(rows)
