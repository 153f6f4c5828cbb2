"""Text for the multimodal model: a byte-level BPE tokenizer trained on the run's own
text, and the captions of the built-in digits.

The tokenizer is Hugging Face `tokenizers`' byte-level BPE (GPT-2's scheme, as
Chameleon's and Emu3's text tokenizers): any string encodes (unknown characters fall back
to bytes), and decode(encode(s)) == s. It is trained on the captions the run writes, so a
run's vocabulary is small (a few hundred ids) and saved with the run (`tokenizer.json`).

Captions name a digit in several templates, spelled out ("a handwritten seven") and
numeric ("the digit 7"), so a model must map both forms to one class; a fixed template
(`EVAL_TEMPLATE`) is what evaluation prompts with and what captioning is scored against.
"""

from __future__ import annotations

import os

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w}: the digit spelled out, {d}: the numeral
TEMPLATES = ("a handwritten {w}", "the digit {d}", "a picture of the number {w}",
             "handwritten {d}", "the number {w}, written by hand", "a {w}",
             "an image of a {d}", "digit {w}")
EVAL_TEMPLATE = 0


def caption(label: int, template: int = EVAL_TEMPLATE) -> str:
  """The caption of a digit `label` in `TEMPLATES[template]`."""
  if not 0 <= label < 10:
    raise ValueError(f"label: expected a digit 0..9, got {label}")
  if not 0 <= template < len(TEMPLATES):
    raise ValueError(f"template: expected 0..{len(TEMPLATES) - 1}, got {template}")
  return TEMPLATES[template].format(w=DIGIT_WORDS[label], d=label)


def all_captions() -> list[str]:
  """Every caption of every digit: the text the run's tokenizer is trained on."""
  return [caption(label, t) for label in range(10) for t in range(len(TEMPLATES))]


def named_digit(text: str) -> int | None:
  """The digit a caption names (a word or a numeral, the first one), or None: how a
  generated caption is scored."""
  for word in text.lower().replace(",", " ").split():
    if word in DIGIT_WORDS:
      return DIGIT_WORDS.index(word)
    if len(word) == 1 and word.isdigit():
      return int(word)
  return None


class TextTokenizer:
  """A trained byte-level BPE: `encode(str) -> int32 ids`, `decode(ids) -> str`."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tokenizer.encode(text).ids, np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
      raise ValueError(f"ids: expected text ids in [0, {self.vocab_size}), got "
                       f"[{min(ids)}, {max(ids)}]")
    return self._tokenizer.decode(ids)

  def save(self, path: str) -> None:
    self._tokenizer.save(path)


def _library():
  try:
    import tokenizers
  except ImportError as e:
    raise ImportError("the text tokenizer needs Hugging Face `tokenizers` "
                      "(pip install tokenizers)") from e
  return tokenizers


def train_bpe(texts, vocab_size: int) -> TextTokenizer:
  """A byte-level BPE of at most `vocab_size` ids trained on `texts` (the 256 byte
  symbols are always in it, so any string encodes)."""
  tokenizers = _library()
  from tokenizers import decoders, models, pre_tokenizers, trainers
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet):
    raise ValueError(f"vocab_size: expected >= {len(alphabet)} (the byte alphabet), got "
                     f"{vocab_size}")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                show_progress=False)
  tok.train_from_iterator(list(texts), trainer=trainer)
  return TextTokenizer(tok)


def load_tokenizer(path: str) -> TextTokenizer:
  if not os.path.exists(path):
    raise FileNotFoundError(f"text tokenizer: no {path} (a run saves tokenizer.json)")
  return TextTokenizer(_library().Tokenizer.from_file(path))
