"""The digits' captions spoken by espeak-ng: the speech side of the unified model's paired
data (vqlab.data.paired), offline.

Each caption (vqlab.data.text: a digit in a template) is said by every voice of a set of
espeak-ng voice settings (accent x variant, speaking rate, pitch), resampled to the codec's
rate, cut to the speech (espeak-ng pads its output with digital silence) and
loudness-normalised as the codec's training audio is. The training voices and the held-out
ones are drawn from different seeds, and a held-out voice never shares its accent +
variant with a training one: speech -> text on held-out voices is a new speaker, not a
new recording of a known one.
"""

from __future__ import annotations

import functools
from concurrent import futures

import numpy as np

from vqlab.data import speech, text
from vqlab.data.pipeline import PrepareAudio, normalize_loudness

# words per minute: brisker than the codec's corpus (120-220) so a caption stays short in
# the unified model's sequence
SPEAKING_RATES = (170, 231)
TRAIN_SEED, HELD_OUT_SEED = 21, 22


def caption_voices(count: int, held_out: bool = False) -> list[tuple[str, int, int]]:
  """(voice, words per minute, pitch) of `count` training or held-out voices. Held-out
  voices are drawn until `count` have an accent + variant no training voice of the same
  `count` has."""
  if count < 1:
    raise ValueError(f"voices: expected >= 1, got {count}")
  rng = np.random.default_rng(HELD_OUT_SEED if held_out else TRAIN_SEED)
  taken = set() if not held_out else {v for v, _, _ in caption_voices(count)}
  voices = []
  for _ in range(1000 * count):
    voice = (f"{speech.ACCENTS[rng.integers(len(speech.ACCENTS))]}+"
             f"{speech.VARIANTS[rng.integers(len(speech.VARIANTS))]}")
    setting = (voice, int(rng.integers(*SPEAKING_RATES)), int(rng.integers(30, 71)))
    if voice not in taken:
      voices.append(setting)
      taken.add(voice)
    if len(voices) == count:
      return voices
  raise ValueError(f"voices: cannot draw {count} distinct voices")


def trim_silence(wave: np.ndarray, sample_rate: int, threshold: float = 0.02,
                 margin_seconds: float = 0.03) -> np.ndarray:
  """`wave` from `margin_seconds` before its first sample above `threshold` x its peak to
  as long after its last (all of it when it is silent)."""
  loud = np.flatnonzero(np.abs(wave) > threshold * float(np.max(np.abs(wave), initial=0.0)))
  if not len(loud) or not np.any(wave):
    return wave
  margin = int(round(margin_seconds * sample_rate))
  return wave[max(loud[0] - margin, 0):loud[-1] + 1 + margin]


def prepare(wave: np.ndarray, rate: int, sample_rate: int,
            target_dbfs: float | None = -20.0) -> np.ndarray:
  """Any waveform (int16 or float, any rate) as the unified model hears speech: float32
  at `sample_rate`, cut to the speech, loudness-normalised on the speech alone."""
  audio = trim_silence(PrepareAudio("audio", sample_rate, None).map(
      {"audio": wave, "sample_rate": rate})["audio"], sample_rate)
  return audio if target_dbfs is None else normalize_loudness(audio, target_dbfs)


def spoken_captions(voices: list[tuple[str, int, int]], templates, sample_rate: int,
                    target_dbfs: float | None = -20.0, threads: int = 4) -> list[dict]:
  """Every digit's caption in each of `templates` said by each voice: per utterance
  {"label", "template", "voice" (its index), "text", "audio" float32 (T,) at
  `sample_rate`}, in (label, template, voice) order. Synthesis is deterministic: the
  last few sets asked for are kept (a trainer and a model loaded after it in one process
  synthesise once); each call gets its own dicts."""
  for t in templates:
    text.caption(0, int(t))  # an unknown template fails before any synthesis
  said = _spoken(tuple(map(tuple, voices)), tuple(int(t) for t in templates), int(sample_rate),
                 target_dbfs, threads)
  return [dict(u) for u in said]


@functools.lru_cache(maxsize=4)
def _spoken(voices, templates, sample_rate, target_dbfs, threads) -> tuple[dict, ...]:
  jobs = [(label, int(t), v) for label in range(10) for t in templates
          for v in range(len(voices))]

  def say(job):
    label, template, v = job
    caption = text.caption(label, template)
    wave, rate = speech.synthesize(caption, *voices[v])
    audio = prepare(wave, rate, sample_rate, target_dbfs)
    return {"label": label, "template": template, "voice": v, "text": caption,
            "audio": audio}

  with futures.ThreadPoolExecutor(threads) as pool:  # each synthesis is a subprocess
    return tuple(pool.map(say, jobs))
