"""The built-in speech and the audio input pipeline."""

import numpy as np
import pytest

from vqlab.data import builtin, speech
from vqlab.data.pipeline import audio_dataset, normalize_loudness, resample


def test_splits_hold_synthesized_and_recorded_speech(speech_data_dir):
  train = builtin.load("vqlab_speech", speech_data_dir, "train")
  held = builtin.load("vqlab_speech", speech_data_dir, "synth_test")
  test = builtin.load("vqlab_speech", speech_data_dir, "test")
  assert (len(train), len(held)) == (speech.TRAIN_UTTERANCES, speech.TEST_UTTERANCES)
  assert len(test) == len(speech.recordings()) >= 10
  ex = train[0]
  assert ex["audio"].dtype == np.int16 and ex["sample_rate"] == 22050
  assert 0.5 < len(ex["audio"]) / ex["sample_rate"] < 15
  assert np.abs(ex["audio"]).max() > 1000  # speech, not silence
  speakers = {train[i]["speaker"] for i in range(50)}
  assert len(speakers) == 50  # voice, speed and pitch drawn per utterance
  texts_train = {train[i]["text"] for i in range(len(train))}
  assert not texts_train & {held[i]["text"] for i in range(len(held))}  # disjoint sentences
  rates = {int(test[i]["sample_rate"]) for i in range(len(test))}
  assert rates == {16000, 48000}  # pocketsphinx-testdata, alsa-utils


def test_every_voice_variant_exists():
  # espeak-ng silently falls back to its default voice for an unknown variant name
  default = speech.synthesize("Hello there.", "en-us")[0]
  sounds = {v: speech.synthesize("Hello there.", f"en-us+{v}")[0].tobytes()
            for v in speech.VARIANTS}
  assert default.tobytes() not in sounds.values()
  assert len(set(sounds.values())) == len(speech.VARIANTS)


def test_synthesize_and_wav_round_trip(tmp_path):
  audio, rate = speech.synthesize("Hello world.", "en-us+f3", 170, 60)
  assert rate == 22050 and 0.4 < len(audio) / rate < 3
  path = str(tmp_path / "a.wav")
  speech.write_wav(path, audio / 32768.0, rate)
  back, back_rate = speech.read_wav(path)
  assert back_rate == rate
  np.testing.assert_allclose(back, audio, atol=1)


def test_resample_keeps_the_tone_and_loudness_is_normalised():
  t = np.arange(22050) / 22050
  tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  out = resample(tone, 22050, 16000)
  assert len(out) == 16000
  spectrum = np.abs(np.fft.rfft(out))
  assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) <= 1
  loud = normalize_loudness(out, -20.0)
  assert 20 * np.log10(np.sqrt(np.mean(loud ** 2))) == pytest.approx(-20.0, abs=0.01)
  spike = np.zeros(1000, np.float32)
  spike[10] = 1.0  # RMS -30 dB: the gain to -20 dB would clip it, so the peak caps it
  assert np.abs(normalize_loudness(spike, -20.0)).max() == pytest.approx(0.99)
  np.testing.assert_array_equal(normalize_loudness(np.zeros(10, np.float32), -20.0), 0.0)


def test_audio_batches_are_crops_at_the_model_rate(speech_data_dir):
  source = builtin.load("vqlab_speech", speech_data_dir, "test")
  kw = dict(batch_size=4, sample_rate=16000, length=8000, seed=3, shuffle=False, num_epochs=1)
  a = [b["audio"] for b in audio_dataset(source, **kw)]
  b = [b["audio"] for b in audio_dataset(source, **kw)]
  assert a[0].shape == (4, 8000) and a[0].dtype == np.float32
  for x, y in zip(a, b):  # the same seed: the same crops
    np.testing.assert_array_equal(x, y)
  # row 0 is a crop of the first record's file at 16 kHz, loudness-normalised
  name = source[0]["speaker"]
  first, rate = speech.read_wav("/usr/share/" + (name.decode() if isinstance(name, bytes) else name))
  if rate != 16000:
    first = resample(first.astype(np.float32), rate, 16000) * 32768
  full = normalize_loudness(first.astype(np.float32) / 32768, -20.0)
  starts = [s for s in range(len(full) - 8000 + 1) if np.allclose(full[s:s + 8000], a[0][0])]
  assert starts
  short = audio_dataset(source, **{**kw, "length": 10 ** 6})  # longer than any: zero-padded
  row = next(iter(short))["audio"][0]
  assert row.shape == (10 ** 6,) and np.all(row[-1000:] == 0)
