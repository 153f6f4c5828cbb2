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
  # espeak's phonemes: in order, inside the utterance, nearly all of them in PHONEMES
  ids = []
  for source in (train, held):
    for i in range(0, len(source), 7):
      ex = source[i]
      starts, symbols = ex["phoneme_starts"], ex["phonemes"].decode().split()
      assert len(symbols) == len(starts) > 5
      assert np.all(np.diff(starts) >= 0) and 0 <= starts[0] and starts[-1] <= len(ex["audio"])
      ids.extend(speech.phoneme_ids(symbols))
  assert np.mean(np.asarray(ids) == speech.UNKNOWN) < 0.01
  assert len(set(ids)) > 40
  assert test[0]["phonemes"].decode() == "" and len(test[0]["phoneme_starts"]) == 0


def test_every_voice_variant_exists():
  # espeak-ng silently falls back to its default voice for an unknown variant name
  default = speech.synthesize("Hello there.", "en-us")[0]
  sounds = {v: speech.synthesize("Hello there.", f"en-us+{v}")[0].tobytes()
            for v in speech.VARIANTS}
  assert default.tobytes() not in sounds.values()
  assert len(set(sounds.values())) == len(speech.VARIANTS)


@pytest.mark.parametrize("voice", ["en-us", "en-gb-scotland+m3", "en-029+croak",
                                   "en-gb+nosuch"])  # the last: no such variant
def test_aligned_synthesis_is_the_espeak_command_bit_for_bit(voice):
  import io
  import subprocess
  import wave
  text = "Go forward ten meters."
  out = subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "-p", "40", "--stdout", text],
                       capture_output=True, check=True).stdout
  with wave.open(io.BytesIO(out)) as w:
    rate = w.getframerate()
  start = out.index(b"data") + 8
  command = np.frombuffer(out[start:start + (len(out) - start) // 2 * 2], "<i2")
  audio, got_rate, phonemes = speech.synthesize_aligned(text, voice, 170, 40)
  assert got_rate == rate
  np.testing.assert_array_equal(audio, command)
  symbols = [p for p, _ in phonemes]
  assert symbols[:2] == ["g", "oU"] and symbols[-1].startswith("_")
  # the events are where the sound is: silence before the first phoneme and in the
  # closing pause, speech between
  starts = [t for _, t in phonemes]
  pause = starts[-2] if symbols[-2].startswith("_") else starts[-1]
  rms = lambda x: float(np.sqrt(np.mean(np.square(x.astype(np.float64))))) if len(x) else 0.0
  speaking = rms(audio[starts[0]:pause])
  assert rms(audio[:starts[0]]) < 0.05 * speaking and rms(audio[pause:]) < 0.05 * speaking


def test_frame_labels_take_the_phoneme_at_each_frame_centre():
  ids = speech.phoneme_ids(["_:", "g", "oU", "nosuch", "_"])
  np.testing.assert_array_equal(ids, [speech.SILENCE, speech.PHONEMES.index("g"),
                                      speech.PHONEMES.index("oU"), speech.UNKNOWN,
                                      speech.SILENCE])
  # phonemes start at samples 0, 100, 250, 400, 500 (rate 1000); frames of 0.1 s
  labels = speech.frame_labels(np.array([0, 100, 250, 400, 500]), ids, 7, 0.1, 1000)
  np.testing.assert_array_equal(labels, ids[[0, 1, 2, 2, 3, 4, 4]])
  late = speech.frame_labels(np.array([120]), ids[1:2], 2, 0.1, 1000)
  np.testing.assert_array_equal(late, [speech.SILENCE, ids[1]])  # before the first: silence


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


def test_crops_carry_the_phonemes_said_in_them():
  # phonemes g oU f (then a pause and the end marker) at 22,050 Hz; the model runs at 11,025
  starts = np.array([0, 2000, 6000, 10000, 14000, 20000], np.int32)
  element = {"audio": (np.sin(np.arange(20000) * 0.01) * 8000).astype(np.int16),
             "sample_rate": 22050, "phonemes": b"_ g oU f _: _", "phoneme_starts": starts}
  kwargs = dict(batch_size=1, sample_rate=11025, length=2500, seed=3, target_dbfs=None,
                num_epochs=1, shuffle=False)
  plain = next(iter(audio_dataset([element], **kwargs)))
  with_phonemes = next(iter(audio_dataset([element], max_phonemes=4, **kwargs)))
  np.testing.assert_array_equal(plain["audio"], with_phonemes["audio"])  # the same crop
  # where the crop starts: the sample the crop's first value came from
  full = resample(element["audio"].astype(np.float32) / 32768, 22050, 11025)
  start = next(s for s in range(len(full) - 2499)
               if np.array_equal(full[s:s + 2500], plain["audio"][0]))
  # at the model rate g spans samples 1000-3000, oU 3000-5000, f 5000-7000: their middles
  middles = {"g": 2000, "oU": 4000, "f": 6000}
  said = [p for p, m in middles.items() if start <= m < start + 2500]
  count = int(with_phonemes["phoneme_count"][0])
  assert count == len(said)
  np.testing.assert_array_equal(with_phonemes["phonemes"][0][:count], speech.phoneme_ids(said))
  assert np.all(with_phonemes["phonemes"][0][count:] == 0)
  # at most max_phonemes, in order
  labels, n = speech.phonemes_in(starts, speech.phoneme_ids("_ g oU f _: _".split()), 0,
                                 20000, 2)
  assert n == 2 and list(labels) == list(speech.phoneme_ids(["g", "oU"]))
  with pytest.raises(ValueError, match="phonemes: expected the built-in speech"):
    next(iter(audio_dataset([{**element, "phonemes": b""}], max_phonemes=4, **kwargs)))
