"""Intelligibility of speech, offline: word error rate of a recogniser's transcripts.

The recogniser is PocketSphinx (Huggins-Daines et al. 2006; `pip install pocketsphinx`,
5.x, in `vqlab[audio]`), whose wheel ships an English acoustic model, language model and
dictionary, so nothing is downloaded. It is small and old: a WER from it says whether
words survive a codec, compared with its WER on the originals (the floor), not how a
modern recogniser would do; synthetic espeak-ng speech is outside what it was trained on.

- `normalize_text`: lower case, sentence tags and punctuation removed, words split.
- `word_errors`: the word-level Levenshtein distance (substitutions + deletions +
  insertions) between a reference and a hypothesis; `word_error_rate` is the corpus WER,
  total errors over total reference words (as NIST's sclite scores a test set).
- `Recognizer`: float waveforms at any rate -> transcripts; with a JSGF `grammar`
  (`phrase_grammar`) it decodes a closed set of phrases instead of open English, which is
  how a closed-vocabulary test (a spoken digit in a few caption templates) is scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

RATE = 16000  # the rate of the shipped acoustic model
_TAGS = re.compile(r"</?s>|<sil>|\[[a-z]+\]|\([^)]*\)")
_NOT_WORD = re.compile(r"[^a-z' ]+")


def normalize_text(text: str) -> list[str]:
  """Words of `text`: lower case, <s> / </s> tags, fillers and punctuation dropped."""
  text = _TAGS.sub(" ", text.lower())
  return _NOT_WORD.sub(" ", text).split()


def word_errors(reference: Sequence[str] | str, hypothesis: Sequence[str] | str) -> int:
  """Substitutions + deletions + insertions turning `reference` into `hypothesis`."""
  ref = normalize_text(reference) if isinstance(reference, str) else list(reference)
  hyp = normalize_text(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
  row = list(range(len(hyp) + 1))  # distances from the empty reference prefix
  for i, r in enumerate(ref, 1):
    prev, row[0] = row[0], i
    for j, h in enumerate(hyp, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
  return row[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  """Corpus WER: total word errors over total reference words."""
  if len(references) != len(hypotheses):
    raise ValueError(f"hypotheses: expected one per reference ({len(references)}), got "
                     f"{len(hypotheses)}")
  words = sum(len(normalize_text(r)) for r in references)
  if not words:
    raise ValueError("references: expected at least one word, got none")
  return sum(word_errors(r, h) for r, h in zip(references, hypotheses)) / words


def available() -> bool:
  try:
    import pocketsphinx  # noqa: F401
  except ImportError:
    return False
  return True


def phrase_grammar(keywords: Sequence[str], fillers: Sequence[str] = ()) -> str:
  """A JSGF grammar of one of `keywords` with any number of `fillers` words around it
  (lower-case words of the shipped dictionary)."""
  words = [w for w in list(keywords) + list(fillers) if not re.fullmatch(r"[a-z']+", w)]
  if not keywords or words:
    raise ValueError(f"grammar: expected lower-case words and >= 1 keyword, got "
                     f"{words or keywords}")
  around = "<filler>* " if fillers else ""
  rules = [f"public <phrase> = {around}<keyword>{' <filler>*' if fillers else ''};",
           f"<keyword> = {' | '.join(keywords)};"]
  if fillers:
    rules.append(f"<filler> = {' | '.join(fillers)};")
  return "#JSGF V1.0;\ngrammar phrase;\n" + "\n".join(rules) + "\n"


class Recognizer:
  """PocketSphinx with its shipped US English models; `transcribe(wave, rate)` -> text.
  `grammar`: a JSGF grammar (`phrase_grammar`) to decode with instead of the language
  model."""

  def __init__(self, grammar: str | None = None):
    try:
      from pocketsphinx import Decoder
    except ImportError:
      raise ImportError("pocketsphinx: word error rates need it; pip install pocketsphinx "
                        "(or vqlab[audio])") from None
    self._decoder = Decoder(samprate=RATE, loglevel="FATAL")
    if grammar is not None:
      self._decoder.set_jsgf_string("grammar", grammar)
      self._decoder.activate_search("grammar")

  def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
    """The transcript of a float waveform (T,) in [-1, 1] at `sample_rate` Hz."""
    from vqlab.dsp import resample
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
      raise ValueError(f"wave: expected one channel (T,), got shape {wave.shape}")
    pcm = np.clip(np.round(resample(wave, sample_rate, RATE) * 32767.0), -32768, 32767)
    d = self._decoder
    d.start_utt()
    d.process_raw(pcm.astype("<i2").tobytes(), full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return " ".join(normalize_text(hyp.hypstr)) if hyp is not None else ""
