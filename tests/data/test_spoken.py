"""Spoken captions: held-out voices are new accent + variant pairs, silence is cut around
the speech, and every digit's caption is said by every voice, at the codec's rate and
loudness."""

import numpy as np
import pytest

from vqlab.data import spoken, text


def test_held_out_voices_are_new_speakers():
  train, held = spoken.caption_voices(12), spoken.caption_voices(4, held_out=True)
  assert len(train) == 12 and len(held) == 4
  assert not {v for v, _, _ in train} & {v for v, _, _ in held}
  assert len({v for v, _, _ in held}) == 4  # distinct among themselves too
  for _, speed, pitch in train + held:
    assert spoken.SPEAKING_RATES[0] <= speed < spoken.SPEAKING_RATES[1] and 30 <= pitch <= 70
  assert spoken.caption_voices(12) == train  # fixed seeds
  with pytest.raises(ValueError, match="voices: expected >= 1"):
    spoken.caption_voices(0)


def test_silence_is_cut_around_the_speech():
  rate = 1000
  wave = np.zeros(1000, np.float32)
  wave[400:500] = 0.5
  wave[300] = 0.005  # below 2% of the peak: silence
  out = spoken.trim_silence(wave, rate, margin_seconds=0.01)
  assert len(out) == 100 + 2 * 10 and out[10] == 0.5 and out[-11] == 0.5
  silent = np.zeros(50, np.float32)
  np.testing.assert_array_equal(spoken.trim_silence(silent, rate), silent)


def test_every_caption_is_said_by_every_voice():
  voices = spoken.caption_voices(2)
  said = spoken.spoken_captions(voices, (0, 3), 16000, target_dbfs=-20.0)
  assert [(u["label"], u["template"], u["voice"]) for u in said] == [
      (y, t, v) for y in range(10) for t in (0, 3) for v in range(2)]
  for u in said:
    assert u["text"] == text.caption(u["label"], u["template"])
    audio = u["audio"]
    assert audio.dtype == np.float32 and 0.2 < len(audio) / 16000 < 2.0
    rms = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert abs(rms + 20.0) < 0.5 or np.max(np.abs(audio)) > 0.98  # -20 dBFS, or peak-limited
    # cut to the speech: the first and last 30 ms margin hold the quiet edges only
    peak = np.max(np.abs(audio))
    assert np.max(np.abs(audio[:200])) <= 0.5 * peak and np.max(np.abs(audio[-200:])) <= 0.5 * peak
  with pytest.raises(ValueError, match="template: expected"):
    spoken.spoken_captions(voices, (99,), 16000)
