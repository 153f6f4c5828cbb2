"""grain input pipelines over any random-access source (tfds `as_data_source`, the
built-in datasets): shuffle -> repeat -> per-example random crop (image, clip or audio)
/ flip -> batch.

Every random choice is drawn from grain's per-record generator seeded by `seed`, so a
pipeline is a pure function of (source, config, seed, position) and its iterator state
(`get_state()`, a small dict) restores it exactly: a resumed run sees the same batches.
The global stream (shuffled, repeated, cropped) is the same for any number of
processes; of each global batch of B = P b examples, process p takes rows p b .. p b + b,
so the P local batches placed side by side (`make_array_from_process_local_data`) are the
single-process global batch, row for row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from PIL import Image

from vqlab.data import speech
from vqlab.dsp import colored_noise, resample, room_response


class SelectKeys(grain.transforms.Map):
  """Keep `keys` of a record as numpy arrays (a class, not a lambda: grain's worker
  processes pickle their transforms)."""

  def __init__(self, keys: tuple[str, ...]):
    self.keys = keys

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(element[k]) for k in self.keys}


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """A square uint8 (S, S, C) resized to (size, size, C): area-averaging down, bicubic up."""
  side = image.shape[0]
  if side == size:
    return image
  resample = Image.BOX if side > size else Image.BICUBIC
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  return np.asarray(pil.resize((size, size), resample)).reshape(size, size, image.shape[-1])


class RandomCropFlip(grain.transforms.RandomMap):
  """A random square crop with side in [min_crop, max_crop], resized to `size` with
  area-averaging (down) or bicubic (up), and a random horizontal flip. min_crop =
  max_crop = size and no flip gives plain random crops. Both bounds are capped by the
  image's shorter side: an image smaller than min_crop gives its largest square, scaled
  up (ImageNet holds images under 256 px; taming-transformers rescales them likewise)."""

  def __init__(self, size: int, min_crop: int, max_crop: int, flip: bool):
    if not 1 <= min_crop <= max_crop:
      raise ValueError(f"min_crop, max_crop: expected 1 <= min_crop <= max_crop, got "
                       f"{min_crop}, {max_crop}")
    self.size, self.min_crop, self.max_crop, self.flip = size, min_crop, max_crop, flip

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = element["image"]
    h, w = image.shape[:2]
    short = min(h, w)
    side = int(rng.integers(min(self.min_crop, short), min(self.max_crop, short) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = resize_square(image[y:y + side, x:x + side], self.size)
    if self.flip and rng.random() < 0.5:
      crop = crop[:, ::-1]
    return {**element, "image": np.ascontiguousarray(crop)}


class ProcessRows(grain.MapDataset):
  """This process's rows of the global stream: element k b + j is global element
  k B + p b + j (B = P b, j < b), i.e. row j of process p's block of global batch k."""

  def __init__(self, parent: grain.MapDataset, local_batch: int, index: int, count: int):
    super().__init__(parent)
    self.b, self.p, self.count = local_batch, index, count

  def __len__(self) -> int:  # full global batches, then this process's part of the last
    blocks, rest = divmod(len(self._parent), self.b * self.count)
    return blocks * self.b + min(max(rest - self.p * self.b, 0), self.b)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    k, j = divmod(i, self.b)
    return self._parent[(k * self.count + self.p) * self.b + j]

  def __str__(self) -> str:
    return f"ProcessRows(b={self.b}, p={self.p}, count={self.count})"


def check_batching(batch_size: int, process_index: int, process_count: int) -> None:
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index: expected in [0, {process_count}), got {process_index}")


def _crops(ds: grain.MapDataset, crop: grain.transforms.RandomMap, *, batch_size: int,
           seed: int, shuffle: bool, num_epochs: int | None, keys: tuple[str, ...],
           process_index: int, process_count: int, drop_remainder: bool) -> grain.MapDataset:
  """shuffle -> repeat -> keep keys -> random crop -> this process's rows -> batch."""
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(SelectKeys(keys))
  ds = ProcessRows(ds.random_map(crop, seed=seed), batch_size, process_index, process_count)
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def image_dataset(source, *, batch_size: int, image_size: int, seed: int,
                  min_crop: int | None = None, max_crop: int | None = None,
                  flip: bool = False, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1,
                  keys: tuple[str, ...] = ("image",), in_memory: bool = False,
                  drop_remainder: bool = True) -> grain.MapDataset:
  """Batches of {key: array} with images uint8 (batch_size, image_size, image_size, C).

  num_epochs=None repeats forever (training); an int gives a finite pass (evaluation).
  in_memory=True decodes the records once and keeps them (small datasets:
  the built-in photos are a few large PNGs that would be decoded for every crop).
  """
  check_batching(batch_size, process_index, process_count)
  ds = grain.MapDataset.source(source)
  if in_memory:
    ds = grain.MapDataset.source([{k: np.asarray(r[k]) for k in keys} for r in ds])
  crop = RandomCropFlip(image_size, min_crop or image_size, max_crop or image_size, flip)
  return _crops(ds, crop, batch_size=batch_size, seed=seed, shuffle=shuffle,
                num_epochs=num_epochs, keys=keys, process_index=process_index,
                process_count=process_count, drop_remainder=drop_remainder)


class RandomClip(grain.transforms.RandomMap):
  """`num_frames` consecutive frames from a random start, and a random square crop of
  side min(H, W) (the whole frame when square) resized to `size`, the same for every frame."""

  def __init__(self, num_frames: int, size: int):
    if num_frames < 1:
      raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    self.num_frames, self.size = num_frames, size

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    video = element["video"]
    t, h, w = video.shape[:3]
    if t < self.num_frames:
      raise ValueError(f"video: expected >= num_frames={self.num_frames} frames, got shape "
                       f"{video.shape}")
    start = int(rng.integers(0, t - self.num_frames + 1))
    side = min(h, w)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    clip = video[start:start + self.num_frames, y:y + side, x:x + side]
    return {**element, "video": np.stack([resize_square(f, self.size) for f in clip])}


def video_dataset(source, *, batch_size: int, num_frames: int, image_size: int, seed: int,
                  shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1,
                  keys: tuple[str, ...] = ("video",), in_memory: bool = False,
                  drop_remainder: bool = True) -> grain.MapDataset:
  """Batches of {"video": uint8 (batch_size, num_frames, image_size, image_size, C)}:
  random temporal crops (RandomClip) of clips (T, H, W, C) of any source with a "video"
  field (the built-in Moving MNIST; UCF-101 / Kinetics as prepared tfds datasets)."""
  check_batching(batch_size, process_index, process_count)
  ds = grain.MapDataset.source(source)
  if in_memory:
    ds = grain.MapDataset.source([{k: np.asarray(r[k]) for k in keys} for r in ds])
  return _crops(ds, RandomClip(num_frames, image_size), batch_size=batch_size, seed=seed,
                shuffle=shuffle, num_epochs=num_epochs, keys=keys,
                process_index=process_index, process_count=process_count,
                drop_remainder=drop_remainder)


def normalize_loudness(wave: np.ndarray, target_dbfs: float, peak: float = 0.99) -> np.ndarray:
  """Scale to an RMS of `target_dbfs` dB full scale, then down if a sample would pass `peak`;
  silence stays silence."""
  rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
  if rms < 1e-6:
    return wave
  gain = 10.0 ** (target_dbfs / 20.0) / rms
  top = float(np.max(np.abs(wave))) * gain
  if top > peak:
    gain *= peak / top
  return (wave * gain).astype(np.float32)


class PrepareAudio(grain.transforms.Map):
  """{key: int16 or float waveform, "sample_rate"} -> {"audio": float32 (T,) at `rate`,
  loudness-normalised}. Several channels are averaged; a source without a sample-rate
  field uses `source_rate`. With `phonemes`, also the built-in speech's espeak-ng
  phonemes: "phoneme_starts" (at `rate`) and "phoneme_ids" (vqlab.data.speech)."""

  def __init__(self, key: str, rate: int, target_dbfs: float | None, source_rate: int = 0,
               phonemes: bool = False):
    self.key, self.rate, self.target_dbfs, self.source_rate = key, rate, target_dbfs, source_rate
    self.phonemes = phonemes

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    wave = np.asarray(element[self.key])
    if wave.dtype.kind == "i":
      wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = wave.astype(np.float32)
    if wave.ndim == 2:
      wave = wave.mean(axis=1)
    rate = int(element.get("sample_rate", self.source_rate) or 0)
    if rate <= 0:
      raise ValueError(f"sample_rate: the source has no sample_rate field; expected "
                       f"data.source_rate > 0, got {self.source_rate}")
    wave = resample(wave, rate, self.rate)
    if self.target_dbfs is not None:
      wave = normalize_loudness(wave, self.target_dbfs)
    if not self.phonemes:
      return {"audio": wave}
    symbols = element.get("phonemes", b"")
    symbols = (symbols.decode() if isinstance(symbols, bytes) else str(symbols)).split()
    if not symbols:
      raise ValueError("phonemes: expected the built-in speech's espeak-ng phonemes (splits "
                       "train and synth_test of vqlab_speech); this example has none")
    starts = np.asarray(element["phoneme_starts"], np.float64) * self.rate / rate
    return {"audio": wave, "phoneme_starts": np.round(starts).astype(np.int64),
            "phoneme_ids": speech.phoneme_ids(symbols)}


@dataclasses.dataclass(frozen=True)
class Acoustics:
  """Training crops heard through a room and a microphone's noise floor: clean synthetic
  speech (espeak-ng) has digital silence and no room, recordings have both. Per crop, with
  probability `reverb_prob`, a synthetic room (`vqlab.dsp.room_response`: RT60 and
  direct-to-reverberant ratio drawn uniformly from `rt60` s and `drr_db`), with
  probability `noise_prob`, noise of a 1 / f^a spectrum (a drawn from `noise_exponent`)
  at an SNR drawn from `snr_db` against the utterance's power (so silences get the floor
  too). Training on simulated rooms: Ko et al. 2017 ("A study on data augmentation of
  reverberant speech for robust speech recognition", ICASSP; their rooms are image-method
  simulations, ours Polack's statistical tail)."""

  rate: int
  reverb_prob: float = 0.0
  rt60: tuple[float, float] = (0.1, 0.6)
  drr_db: tuple[float, float] = (0.0, 15.0)
  noise_prob: float = 0.0
  snr_db: tuple[float, float] = (10.0, 40.0)
  noise_exponent: tuple[float, float] = (0.0, 2.0)

  def __post_init__(self):
    for name in ("reverb_prob", "noise_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")
    for name in ("rt60", "drr_db", "snr_db", "noise_exponent"):
      bounds = tuple(getattr(self, name))
      if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"{name}: expected (low, high) with low <= high, got {bounds}")
    if self.rt60[0] <= 0:
      raise ValueError(f"rt60: expected seconds > 0, got {tuple(self.rt60)}")

  @property
  def active(self) -> bool:
    return self.reverb_prob > 0 or self.noise_prob > 0

  @property
  def context(self) -> int:
    """Samples before a crop that reach it through the longest room."""
    return int(np.ceil(self.rt60[1] * self.rate)) if self.reverb_prob > 0 else 0

  def __call__(self, segment: np.ndarray, length: int, power: float,
               rng: np.random.Generator) -> np.ndarray:
    """The last `length` samples of `segment` (a crop and up to `context` samples before
    it) through a drawn room and noise; `power`: the utterance's mean square."""
    out = segment.astype(np.float32)
    if rng.random() < self.reverb_prob:
      ir = room_response(rng.uniform(*self.rt60), rng.uniform(*self.drr_db), self.rate, rng)
      from scipy.signal import fftconvolve
      out = fftconvolve(out, ir)[:len(out)].astype(np.float32)
    out = out[len(out) - length:]
    if rng.random() < self.noise_prob and power > 0:
      noise = colored_noise(length, rng.uniform(*self.noise_exponent), rng)
      out = out + noise * np.float32(np.sqrt(power * 10.0 ** (-rng.uniform(*self.snr_db) / 10)))
    return np.ascontiguousarray(out, dtype=np.float32)


class RandomAudioCrop(grain.transforms.RandomMap):
  """`length` samples from a random offset; shorter signals are zero-padded at the end.
  With `max_phonemes`, the phonemes said in the crop replace the utterance's: "phonemes"
  (int32 (max_phonemes,), zero-padded) and "phoneme_count" (the same crops either way).
  With `acoustics`, each crop is heard through its drawn room and noise (Acoustics)."""

  def __init__(self, length: int, max_phonemes: int = 0, acoustics: Acoustics | None = None):
    if length < 1:
      raise ValueError(f"length: expected >= 1, got {length}")
    self.length, self.max_phonemes = length, max_phonemes
    self.acoustics = acoustics if acoustics is not None and acoustics.active else None

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    wave = element["audio"]
    if len(wave) < self.length:
      start, crop = 0, np.pad(wave, (0, self.length - len(wave)))
      segment = crop
    else:
      start = int(rng.integers(0, len(wave) - self.length + 1))
      crop = np.ascontiguousarray(wave[start:start + self.length])
      segment = wave[max(start - (self.acoustics.context if self.acoustics else 0), 0):
                     start + self.length]
    if self.acoustics:
      power = float(np.mean(np.square(wave, dtype=np.float64))) if len(wave) else 0.0
      crop = self.acoustics(segment, self.length, power, rng)
    if not self.max_phonemes:
      return {**element, "audio": crop}
    labels, count = speech.phonemes_in(element["phoneme_starts"], element["phoneme_ids"],
                                       start, self.length, self.max_phonemes)
    return {"audio": crop, "phonemes": labels, "phoneme_count": np.int32(count)}


def audio_dataset(source, *, batch_size: int, sample_rate: int, length: int, seed: int,
                  key: str = "audio", target_dbfs: float | None = -20.0, source_rate: int = 0,
                  shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1, in_memory: bool = False,
                  drop_remainder: bool = True, max_phonemes: int = 0,
                  acoustics: Acoustics | None = None) -> grain.MapDataset:
  """Batches of {"audio": float32 (batch_size, length)}: each utterance resampled to
  `sample_rate` and loudness-normalised, then a random crop of `length` samples
  (`key` names the waveform field: "audio" here, "speech" in tfds' librispeech). With
  `max_phonemes`, also each crop's espeak-ng phonemes; with `acoustics`, rooms and noise
  (RandomAudioCrop)."""
  check_batching(batch_size, process_index, process_count)
  ds = grain.MapDataset.source(source).map(PrepareAudio(key, sample_rate, target_dbfs,
                                                        source_rate, bool(max_phonemes)))
  if in_memory:  # resampled once, kept
    ds = grain.MapDataset.source([ds[i] for i in range(len(ds))])
  keys = ("audio", "phoneme_starts", "phoneme_ids") if max_phonemes else ("audio",)
  return _crops(ds, RandomAudioCrop(length, max_phonemes, acoustics), batch_size=batch_size,
                seed=seed, shuffle=shuffle, num_epochs=num_epochs, keys=keys,
                process_index=process_index, process_count=process_count,
                drop_remainder=drop_remainder)


class Batches:
  """A checkpointable iterator over a MapDataset (`get_state` / `set_state`): the state
  is the index of the next element, {"next_index": k} as grain's own iterator writes it,
  whatever the reading, so a run may resume with other `threads` or `workers`.

  workers > 0: that many worker processes (grain's `mp_prefetch`), each reading with
  `threads` threads; worker w makes elements w, w + workers, ... of the same stream.
  Threads share one interpreter (the GIL; PIL releases it only inside decode and
  resize), processes do not (benchmarks/data.py measures both).
  """

  def __init__(self, ds: grain.MapDataset, threads: int, prefetch: int, workers: int):
    if workers < 0:
      raise ValueError(f"data.workers: expected >= 0, got {workers}")
    self.ds, self.threads, self.prefetch, self.workers = ds, threads, prefetch, workers
    self._next, self._it = 0, None  # the index of the next element; the open reader

  def _open(self):
    ds = self.ds[self._next:] if self._next else self.ds
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.threads,
                                              prefetch_buffer_size=self.prefetch))
    if self.workers:
      from absl import flags  # grain's workers read absl flags; a library has not parsed them
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
    return iter(it)

  def __iter__(self):
    return self

  def __next__(self):
    if self._it is None:
      self._it = self._open()
    element = next(self._it)
    self._next += 1
    return element

  def get_state(self) -> dict:
    return {"next_index": self._next}

  def set_state(self, state: dict) -> None:
    if set(state) != {"next_index"}:
      raise ValueError(f"data state: expected {{'next_index': k}}, got keys {sorted(state)}")
    self.close()
    self._next = int(state["next_index"])

  def close(self) -> None:
    """Stops the worker processes (also on garbage collection)."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def iterate(ds: grain.MapDataset, threads: int = 2, prefetch: int = 64,
            workers: int = 0) -> Batches:
  """`Batches` over `ds`. grain's defaults (16 threads, 500 records ahead) suit a
  data-center host; on a small CPU box they starve the step."""
  return Batches(ds, threads, prefetch, workers)


class FlatTokens(grain.transforms.Map):
  """{"indices": any shape, "label"?} -> {"tokens": (L,) int32, "label": int32 (0 if none)}."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {"tokens": np.asarray(element["indices"], np.int32).reshape(-1),
            "label": np.int32(element.get("label", 0))}


def token_dataset(source, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Shuffled, repeated batches of exported tokens (vqlab.data.tokens.TokenSource)."""
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  return ProcessRows(ds, batch_size, process_index, process_count).map(FlatTokens()).batch(
      batch_size, drop_remainder=True)
