"""Word error rates: the edit distance on known cases, and PocketSphinx on real
recordings with known transcripts (pocketsphinx-testdata)."""

import os

import numpy as np
import pytest

from vqlab.data import speech
from vqlab.eval import speech_recognition as sr

TESTDATA = "/usr/share/pocketsphinx/test/data"


def test_normalize_text_drops_tags_fillers_and_punctuation():
  assert sr.normalize_text("<s> Ten of Clubs, </s> (001)") == ["ten", "of", "clubs"]
  assert sr.normalize_text("<sil> it's [noise] here.") == ["it's", "here"]


def test_word_errors_count_substitutions_deletions_and_insertions():
  assert sr.word_errors("a b c", "a b c") == 0
  assert sr.word_errors("a b c", "a x c") == 1            # one substitution
  assert sr.word_errors("a b c", "a c") == 1              # one deletion
  assert sr.word_errors("a b c", "a b c d e") == 2        # two insertions
  assert sr.word_errors("a b c", "") == 3
  assert sr.word_errors("", "a b") == 2
  assert sr.word_errors("the cat sat", "cat sat the") == 2  # delete + insert beats 3 subs
  # corpus WER: total errors over total reference words, not the mean of the rates
  assert sr.word_error_rate(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(1 / 5)
  with pytest.raises(ValueError, match="one per reference"):
    sr.word_error_rate(["a"], [])


def test_the_real_recordings_have_their_transcripts():
  said = speech.transcripts()
  assert said[f"{TESTDATA}/cards/001.wav"] == "ten of clubs"
  assert said[f"{TESTDATA}/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"] == (
      "he was not an ill disposed young man")
  assert said["/usr/share/sounds/alsa/Front_Center.wav"] == "front center"
  assert set(said) == set(speech.recordings())  # every recording has one


def _raw(name):
  path = os.path.join(TESTDATA, name)
  if not os.path.exists(path):
    pytest.skip(f"{path}: pocketsphinx-testdata is not installed (launch/install_speech.sh)")
  return np.fromfile(path, "<i2").astype(np.float32) / 32768.0


def test_pocketsphinx_recognises_a_known_recording():
  pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx (vqlab[audio])")
  wave = _raw("goforward.raw")
  recognizer = sr.Recognizer()
  assert recognizer.transcribe(wave, 16000) == "go forward ten meters"
  # the same words at 48 kHz: resampled to the model's 16 kHz first
  from vqlab.dsp import resample
  assert recognizer.transcribe(resample(wave, 16000, 48000), 48000) == "go forward ten meters"
  # noise is not speech: nearly every reference word is lost
  noise = np.random.default_rng(0).normal(0, 0.1, len(wave)).astype(np.float32)
  assert sr.word_error_rate(["go forward ten meters"],
                            [recognizer.transcribe(noise, 16000)]) >= 0.75


def test_a_closed_grammar_hears_only_its_phrases():
  pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx (vqlab[audio])")
  grammar = sr.phrase_grammar(["two", "five", "ten"], ["go", "forward", "meters"])
  assert grammar.splitlines()[2:] == [
      "public <phrase> = <filler>* <keyword> <filler>*;", "<keyword> = two | five | ten;",
      "<filler> = go | forward | meters;"]
  recognizer = sr.Recognizer(grammar)
  assert recognizer.transcribe(_raw("goforward.raw"), 16000) == "go forward ten meters"
  # keywords alone: one of them is all it can hear, whatever was said
  keyword_only = sr.Recognizer(sr.phrase_grammar(["two", "five", "ten"]))
  assert keyword_only.transcribe(_raw("goforward.raw"), 16000) in ("two", "five", "ten")
  with pytest.raises(ValueError, match="lower-case words"):
    sr.phrase_grammar(["Ten"])
  with pytest.raises(ValueError, match="lower-case words"):
    sr.phrase_grammar([])
