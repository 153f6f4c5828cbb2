"""The text tokenizer (byte-level BPE on the run's captions) and the digit captions."""

import numpy as np
import pytest

from vqlab.data import text


def test_bpe_round_trips_any_text_and_compresses_its_own(tmp_path):
  tok = text.train_bpe(text.all_captions(), 320)
  assert 256 < tok.vocab_size <= 320
  for s in text.all_captions() + ["Zürich, 42 ünïcode ✓", "", "  two  spaces "]:
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and tok.decode(ids) == s
  # merges learned from the captions: a caption takes fewer ids than its bytes
  seven = tok.encode("a handwritten seven")
  assert len(seven) < len("a handwritten seven".encode()) / 2
  tok.save(str(tmp_path / "tokenizer.json"))
  again = text.load_tokenizer(str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(again.encode("the digit 7"), tok.encode("the digit 7"))
  with pytest.raises(ValueError, match=r"ids: expected text ids in \[0, "):
    tok.decode([tok.vocab_size])
  with pytest.raises(ValueError, match="vocab_size: expected >= 256"):
    text.train_bpe(["a"], 100)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    text.load_tokenizer(str(tmp_path / "none" / "tokenizer.json"))


def test_captions_name_their_digit_in_words_and_numerals():
  assert text.caption(7) == "a handwritten seven" and text.caption(7, 1) == "the digit 7"
  captions = text.all_captions()
  assert len(captions) == len(set(captions)) == 10 * len(text.TEMPLATES)
  for label in range(10):
    for t in range(len(text.TEMPLATES)):
      assert text.named_digit(text.caption(label, t)) == label
  assert text.named_digit("a handwritten") is None
  assert text.named_digit("Seven, or 3") == 7  # the first one named
  with pytest.raises(ValueError, match="label: expected a digit 0..9, got 10"):
    text.caption(10)
  with pytest.raises(ValueError, match="template: expected 0..7, got 8"):
    text.caption(1, 8)
