"""A split of the dataset a run's config names, as this process's grain batches: what
the tokenizer and codec trainers train and evaluate on, and what `vqlab tokens` exports.

`config.data` names the dataset (tfds or built-in) and its crops; `config.seed` seeds the
training stream and `config.seed + 1` the fixed evaluation crops, so a finished run's
held-out examples can be drawn again exactly.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from vqlab.data import builtin
from vqlab.data.pipeline import (Acoustics, PrepareAudio, audio_dataset, image_dataset,
                                 video_dataset)


def _passes(train: bool, wanted: int, available: int) -> int | None:
  """Endless for training; else enough passes over the split for `wanted` examples."""
  return None if train else max(1, math.ceil(wanted / available))


def image_split(config: ml_collections.ConfigDict, split: str, *, train: bool,
                batch_size: int, num_examples: int | None = None, labels: bool = False,
                drop_remainder: bool = True, split_by_process: bool = True):
  """Batches {"image": uint8 (b, S, S, C)} (+ "label" when `labels` and the source has
  them): shuffled, flipped and endless for training; else fixed crops, enough passes for
  `num_examples` (default one). `split_by_process=False` gives every process the same
  examples (fixed image grids)."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  processes = jax.process_count() if split_by_process else 1
  wanted = (num_examples or len(source)) * processes  # every process gets its part
  keys = ("image", "label") if labels and "label" in source[0] else ("image",)
  return image_dataset(source, batch_size=batch_size, image_size=d.image_size,
                       seed=config.seed if train else config.seed + 1,
                       min_crop=d.min_crop or None, max_crop=d.max_crop or None,
                       flip=d.flip and train, shuffle=train,
                       num_epochs=_passes(train, wanted, len(source)),
                       process_index=jax.process_index() if split_by_process else 0,
                       process_count=processes,
                       in_memory=d.in_memory, keys=keys, drop_remainder=drop_remainder)


def video_split(config: ml_collections.ConfigDict, split: str, *, train: bool,
                batch_size: int, num_examples: int | None = None, labels: bool = False,
                drop_remainder: bool = True, split_by_process: bool = True):
  """Batches {"video": uint8 (b, data.num_frames, S, S, C)} (+ "label" when `labels` and
  the source has them): random temporal crops, shuffled and endless for training; else
  crops fixed by the evaluation seed, enough passes for `num_examples` (default one)."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  processes = jax.process_count() if split_by_process else 1
  wanted = (num_examples or len(source)) * processes
  keys = ("video", "label") if labels and "label" in source[0] else ("video",)
  return video_dataset(source, batch_size=batch_size, num_frames=d.num_frames,
                       image_size=d.image_size, seed=config.seed if train else config.seed + 1,
                       shuffle=train, num_epochs=_passes(train, wanted, len(source)),
                       process_index=jax.process_index() if split_by_process else 0,
                       process_count=processes, in_memory=d.in_memory, keys=keys,
                       drop_remainder=drop_remainder)


def tokenizer_split(config: ml_collections.ConfigDict, split: str, **kwargs):
  """The image tokenizer's batches: clips (`video_split`) when `data.num_frames` > 0, else
  images (`image_split`); `tokenizer_key(config)` names the field."""
  return (video_split if is_video(config) else image_split)(config, split, **kwargs)


def is_video(config: ml_collections.ConfigDict) -> bool:
  return config.data.get("num_frames", 0) > 0


def tokenizer_key(config: ml_collections.ConfigDict) -> str:
  return "video" if is_video(config) else "image"


def crop_length(config: ml_collections.ConfigDict, seconds: float) -> int:
  """Samples in `seconds` at the run's sample rate."""
  return int(round(seconds * config.data.sample_rate))


def acoustics(config: ml_collections.ConfigDict) -> Acoustics | None:
  """The rooms and noise of `data.augment` for training crops (None where the config has
  none); its ranges are checked here, so a trainer can call it before any work."""
  augment = config.data.get("augment")
  return Acoustics(config.data.sample_rate, **augment.to_dict()) if augment else None


def audio_split(config: ml_collections.ConfigDict, split: str, *, train: bool,
                batch_size: int, num_examples: int | None = None,
                drop_remainder: bool = True, split_by_process: bool = True,
                max_phonemes: int = 0):
  """Batches {"audio": float32 (b, T)}: random crops of `crop_seconds`, shuffled and
  endless for training, heard through `data.augment`'s rooms and noise where set
  (pipeline.Acoustics); else crops of `eval_seconds` fixed by the evaluation seed,
  enough passes for `num_examples` (default one per utterance). `max_phonemes` adds each
  crop's espeak-ng phonemes ("phonemes", "phoneme_count"; the built-in speech only)."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  processes = jax.process_count() if split_by_process else 1
  wanted = (num_examples or len(source)) * processes
  return audio_dataset(
      source, batch_size=batch_size, sample_rate=d.sample_rate,
      length=crop_length(config, d.crop_seconds if train else d.eval_seconds),
      seed=config.seed if train else config.seed + 1, key=d.key,
      target_dbfs=d.target_dbfs if d.normalize else None, source_rate=d.source_rate,
      shuffle=train, num_epochs=_passes(train, wanted, len(source)),
      process_index=jax.process_index() if split_by_process else 0, process_count=processes,
      in_memory=d.in_memory, drop_remainder=drop_remainder, max_phonemes=max_phonemes,
      acoustics=acoustics(config) if train else None)


def aligned_speech(config: ml_collections.ConfigDict, split: str,
                   num_examples: int | None = None) -> list[dict[str, np.ndarray]]:
  """Whole utterances of a built-in speech split with their espeak-ng phonemes: per
  utterance {"audio": float32 (T,) at the run's rate, prepared as in training,
  "phoneme_starts": each phoneme's first sample at that rate, "phoneme_ids": int32}.
  Label frames with `vqlab.data.speech.frame_labels`."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  prepare = PrepareAudio(d.key, d.sample_rate, d.target_dbfs if d.normalize else None,
                         d.source_rate, phonemes=True)
  out = []
  for i in range(min(len(source), num_examples or len(source))):
    example = source[i]
    if not len(example.get("phonemes", b"")):  # named here: the split is the mistake
      raise ValueError(f"data: split {split!r} of {d.name!r} has no phonemes (espeak-ng's "
                       "splits train and synth_test have them)")
    out.append(prepare.map(example))
  return out
