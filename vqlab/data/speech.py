"""The built-in speech: synthesized with espeak-ng for training, real recordings for
evaluation. Both come from Debian packages (`apt-get install espeak-ng
pocketsphinx-testdata alsa-utils`; tests/run.sh and the launch scripts install them).

- train: `TRAIN_UTTERANCES` sentences spoken by espeak-ng with a voice (English accent
  x voice variant), speed and pitch drawn per utterance from a fixed seed. The sentences
  are the first sentences of the Python standard library's docstrings plus the Zen of
  Python: real English prose that every machine with Python has.
- synth_test: `TEST_UTTERANCES` more, from sentences and voice settings the training
  split does not use (the same distribution, never trained on).
  Each carries espeak-ng's phonemes: their mnemonics and the sample each starts at.
- test: real recorded speech: pocketsphinx-testdata (LibriVox read speech and spoken
  card names, 16 kHz) and alsa-utils' channel announcements (48 kHz).
Examples are int16 waveforms at their native rate (`sample_rate`); resampling to the
model's rate and loudness normalisation are the input pipeline's job.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes.util
import glob
import importlib
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import wave

import numpy as np

from vqlab.data import espeak_events

TRAIN_UTTERANCES = 600
TEST_UTTERANCES = 48
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "klatt3", "croak", "grandma", "grandpa", "steph", "robert", "linda",
            "Michael")  # variant names are case-sensitive; unknown ones fall back silently
RECORDINGS = ("/usr/share/pocketsphinx/test/data/librivox/*.wav",
              "/usr/share/pocketsphinx/test/data/cards/*.wav",
              "/usr/share/sounds/alsa/[FRS]*_*.wav")  # the spoken channel names, not Noise.wav
CORPUS_MODULES = ("argparse", "asyncio", "base64", "bisect", "calendar", "collections",
                  "contextlib", "copy", "csv", "datetime", "decimal", "difflib", "email",
                  "enum", "fractions", "functools", "glob", "gzip", "hashlib", "heapq",
                  "inspect", "io", "itertools", "json", "logging", "math", "operator",
                  "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
                  "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics",
                  "string", "struct", "tarfile", "tempfile", "textwrap", "threading",
                  "timeit", "typing", "unittest", "urllib.parse", "uuid", "wave",
                  "zipfile", "zlib")
# espeak-ng's English phoneme mnemonics (what its phoneme events name, in every accent the
# training voices use), one label per symbol; its pauses ("_", "_:", "_!", "_|") are one
# label, SILENCE, and a symbol not listed (another espeak version) is UNKNOWN.
PHONEMES = ("_", "?", "0", "3", "3:", ";", "@", "@-", "@2", "@5", "@L", "A:", "A@", "D", "E",
            "I", "I#", "I2", "N", "O2", "O:", "O@", "OI", "S", "T", "U", "U@", "V", "VR", "Z",
            "a", "a#", "aI", "aI2", "aI3", "aI@", "aU", "aa", "b", "d", "dZ", "e@", "eI", "f",
            "g", "h", "i", "i:", "i@", "i@3", "j", "k", "l", "m", "n", "o@", "oU", "p", "r",
            "r-", "s", "t", "t#", "t2", "tS", "t[", "u:", "v", "w", "w#", "z")
SILENCE, UNKNOWN = 0, 1
_PHONEME_IDS = {p: i for i, p in enumerate(PHONEMES)}
_SENTENCE = re.compile(r"^[A-Z][A-Za-z ,;'-]+\.$")


def corpus() -> list[str]:
  """Distinct English sentences (4-24 words, letters and punctuation only), sorted."""
  with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
    import this
  found = set()
  lines = codecs.decode(this.s, "rot13").splitlines()
  texts = [line for line in lines[2:] if line]
  for name in CORPUS_MODULES:
    module = importlib.import_module(name)
    for _, obj in sorted(vars(module).items()):
      doc = inspect.getdoc(obj) if callable(obj) else None
      if doc:
        texts.append(doc.split("\n\n")[0].replace("\n", " "))
  for text in texts:
    first = text.split(". ")[0].strip()
    first = first if first.endswith(".") else first + "."
    if _SENTENCE.match(first) and 4 <= len(first.split()) <= 24:
      found.add(first)
  return sorted(found)


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50
               ) -> tuple[np.ndarray, int]:
  """(int16 waveform, sample rate) of `text` spoken by espeak-ng."""
  audio, rate, _ = synthesize_aligned(text, voice, speed, pitch)
  return audio, rate


def synthesize_aligned(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50
                       ) -> tuple[np.ndarray, int, list[tuple[str, int]]]:
  """(int16 waveform, sample rate, phonemes) of `text` spoken by espeak-ng: the samples
  of `espeak-ng --stdout` and, per phoneme, (espeak mnemonic, first sample). A phoneme
  lasts until the next one starts; "_" symbols are pauses."""
  if ctypes.util.find_library("espeak-ng") is None and shutil.which("espeak-ng") is None:
    raise FileNotFoundError("espeak-ng: the built-in speech needs it; install the Debian "
                            "package (apt-get install espeak-ng)")
  # -S: the helper needs only the standard library, and a fresh process (its docstring)
  run = subprocess.run([sys.executable, "-S", espeak_events.__file__, text, voice,
                        str(speed), str(pitch)], capture_output=True)
  if run.returncode != 0:
    raise RuntimeError(f"espeak-ng: {run.stderr.decode(errors='replace').strip()}")
  out = run.stdout
  phonemes, at = [], 0
  while True:
    end = out.index(b"\n", at)
    symbol, value, *rest = out[at:end].decode().split(" ")
    at = end + 1
    if symbol == "samples" and rest:
      rate, count = int(value), int(rest[0])
      break
    phonemes.append((symbol, int(value)))
  audio = np.frombuffer(out[at:at + 2 * count], "<i2")
  if audio.size != count:
    raise RuntimeError(f"espeak-ng: expected {count} samples, got {audio.size}")
  return audio.copy(), rate, phonemes


def phoneme_ids(symbols) -> np.ndarray:
  """int32 label per espeak mnemonic (PHONEMES; pauses SILENCE, others UNKNOWN)."""
  return np.asarray([SILENCE if s.startswith("_") else _PHONEME_IDS.get(s, UNKNOWN)
                     for s in symbols], np.int32)


def frame_labels(starts: np.ndarray, ids: np.ndarray, num_frames: int, hop_seconds: float,
                 rate: int, centre: float = 0.5) -> np.ndarray:
  """The phoneme at the centre of each of `num_frames` frames of `hop_seconds`, given each
  phoneme's first sample at `rate`: before the first one, SILENCE. Frame t is centred at
  (t + centre) hops: 0.5 for a strided encoder's frames, 0 for a centred STFT's."""
  centres = (np.arange(num_frames) + centre) * hop_seconds * rate
  at = np.searchsorted(np.asarray(starts), centres, side="right") - 1
  labels = np.where(at >= 0, np.asarray(ids, np.int32)[np.maximum(at, 0)], SILENCE)
  return labels.astype(np.int32)


def phonemes_in(starts: np.ndarray, ids: np.ndarray, start: int, length: int,
                max_count: int) -> tuple[np.ndarray, int]:
  """The phonemes (not pauses or UNKNOWN) whose middle lies in samples [start, start +
  length), in order: (int32 (max_count,) zero-padded, how many; at most max_count)."""
  starts, ids = np.asarray(starts), np.asarray(ids)
  ends = np.append(starts[1:], starts[-1:]) if len(starts) else starts
  middles = (starts + ends) / 2
  keep = (middles >= start) & (middles < start + length) & (ids != SILENCE) & (ids != UNKNOWN)
  found = ids[keep][:max_count]
  out = np.zeros(max_count, np.int32)
  out[:len(found)] = found
  return out, len(found)


def voice_settings(count: int, seed: int) -> list[tuple[str, int, int]]:
  """(voice, words per minute, pitch) per utterance."""
  rng = np.random.default_rng(seed)
  return [(f"{ACCENTS[rng.integers(len(ACCENTS))]}+{VARIANTS[rng.integers(len(VARIANTS))]}",
           int(rng.integers(120, 221)), int(rng.integers(20, 81))) for _ in range(count)]


def synthetic_split(split: str):
  """(key, example) of the train or synth_test split; disjoint sentences per split."""
  sentences = corpus()
  order = np.random.default_rng(0).permutation(len(sentences))
  held_out = [sentences[i] for i in order[:TEST_UTTERANCES]]
  rest = [sentences[i] for i in order[TEST_UTTERANCES:]]
  count, texts, seed = ((TRAIN_UTTERANCES, rest, 1) if split == "train"
                        else (TEST_UTTERANCES, held_out, 2))
  for i, (voice, speed, pitch) in enumerate(voice_settings(count, seed)):
    text = texts[i % len(texts)]
    audio, rate, phonemes = synthesize_aligned(text, voice, speed, pitch)
    yield f"{split}-{i:05d}", {"audio": audio, "sample_rate": rate, "text": text,
                               "speaker": f"espeak-ng {voice} s{speed} p{pitch}",
                               "phonemes": " ".join(p for p, _ in phonemes),
                               "phoneme_starts": np.asarray([t for _, t in phonemes], np.int32)}


def recordings() -> list[str]:
  paths = sorted(p for pattern in RECORDINGS for p in glob.glob(pattern))
  if not paths:
    raise FileNotFoundError("recordings: no real speech found; install the Debian packages "
                            "pocketsphinx-testdata and alsa-utils")
  return paths


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """(int16 mono waveform, rate) of a 16-bit PCM wav file (channels averaged)."""
  with wave.open(path) as w:
    if w.getsampwidth() != 2:
      raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
    data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    rate, channels = w.getframerate(), w.getnchannels()
  if channels > 1:
    data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
  return data.copy(), rate


def write_wav(path: str, wave_t: np.ndarray, sample_rate: int) -> None:
  """A float waveform (T,) in [-1, 1] as a 16-bit PCM mono wav file (clipped)."""
  pcm = np.clip(np.round(np.asarray(wave_t, np.float32) * 32767.0), -32768, 32767)
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(int(sample_rate))
    w.writeframes(pcm.astype("<i2").tobytes())


def transcripts() -> dict[str, str]:
  """Path -> what is said, for the real recordings: the transcription files that ship
  with pocketsphinx-testdata ("<s> ten of clubs </s> (001)") and, for alsa-utils'
  channel announcements, the channel in the file name ("Front_Center.wav")."""
  out = {}
  for pattern in RECORDINGS:
    folder = os.path.dirname(pattern)
    for listing in glob.glob(os.path.join(folder, "*transcription")):
      with open(listing) as f:
        for line in f:
          m = re.match(r"\s*(.*?)\s*\(([^()]+)\)\s*$", line)
          if m:
            text = re.sub(r"</?s>", " ", m.group(1))
            out[os.path.join(folder, m.group(2) + ".wav")] = " ".join(text.split())
    if "alsa" in folder:
      for path in glob.glob(pattern):
        out[path] = os.path.basename(path)[:-4].replace("_", " ").lower()
  return out


def recorded_split():
  said = transcripts()
  for path in recordings():
    audio, rate = read_wav(path)
    name = os.path.relpath(path, "/usr/share")
    yield name, {"audio": audio, "sample_rate": rate, "text": said.get(path, ""),
                 "speaker": name, "phonemes": "", "phoneme_starts": np.zeros(0, np.int32)}
