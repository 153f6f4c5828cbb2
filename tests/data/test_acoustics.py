"""Rooms and noise for training speech: the impulse response's energy, decay and direct-to-
reverberant ratio, the noise's spectral slope and SNR, and the crops that carry them."""

import math

import numpy as np
import pytest
from scipy.signal import fftconvolve

from vqlab.data.pipeline import Acoustics, audio_dataset
from vqlab.dsp import colored_noise, room_response

RATE = 16000


@pytest.mark.parametrize("rt60,drr_db", [(0.2, 0.0), (0.5, 10.0)])
def test_room_response_decays_60_db_in_rt60_below_its_direct_path(rt60, drr_db):
  ir = room_response(rt60, drr_db, RATE, np.random.default_rng(0))
  assert ir.shape == (math.ceil(rt60 * RATE),) and ir.dtype == np.float32
  assert np.sum(ir.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)
  # the tail's energy against the direct path's
  assert 10 * np.log10(ir[0] ** 2 / np.sum(ir[1:].astype(np.float64) ** 2)) == pytest.approx(
      drr_db, abs=1e-3)
  # the envelope: 60 dB per rt60, so 30 dB between the windows around rt60 / 4 and 3 rt60 / 4
  # (mean square of ~800-2,000 Gaussian samples: within ~0.5 dB)
  def level(t):
    i, w = int(t * RATE), int(0.05 * rt60 * RATE)
    return 10 * np.log10(np.mean(ir[i - w:i + w].astype(np.float64) ** 2))
  assert level(rt60 / 4) - level(3 * rt60 / 4) == pytest.approx(30.0, abs=1.5)
  with pytest.raises(ValueError, match="rt60: expected > 0"):
    room_response(0.0, 0.0, RATE, np.random.default_rng(0))


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_unit_power_and_its_spectral_slope(exponent):
  noise = colored_noise(2 ** 16, exponent, np.random.default_rng(1))
  assert np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)
  power = np.abs(np.fft.rfft(noise)) ** 2
  f = np.fft.rfftfreq(len(noise))
  band = (f > 1e-3) & (f < 0.4)
  slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
  assert slope == pytest.approx(-exponent, abs=0.05)


def test_acoustics_reverberates_with_context_and_adds_noise_at_the_drawn_snr():
  rng = np.random.default_rng(2)
  segment = rng.standard_normal(3 * RATE).astype(np.float32)
  length, power = RATE, 2.5
  room = Acoustics(RATE, reverb_prob=1.0, rt60=(0.3, 0.3), drr_db=(5.0, 5.0))
  assert room.context == math.ceil(0.3 * RATE)
  out = room(segment, length, power, np.random.default_rng(7))
  # the same draws: the room's (probability, RT60, DRR, tail), then the crop's last samples
  replay = np.random.default_rng(7)
  replay.random()
  ir = room_response(replay.uniform(0.3, 0.3), replay.uniform(5.0, 5.0), RATE, replay)
  np.testing.assert_allclose(out, fftconvolve(segment, ir)[2 * RATE:3 * RATE], atol=1e-5)
  # noise only, at 20 dB under the utterance's power, added to the crop
  noisy = Acoustics(RATE, noise_prob=1.0, snr_db=(20.0, 20.0), noise_exponent=(1.0, 1.0))
  assert noisy.context == 0
  out = noisy(segment[-length:], length, power, np.random.default_rng(3))
  added = out.astype(np.float64) - segment[-length:]
  assert np.mean(added ** 2) == pytest.approx(power / 100, rel=1e-4)
  # off: the crop as it was
  off = Acoustics(RATE)
  assert not off.active
  np.testing.assert_array_equal(off(segment, length, power, rng), segment[-length:])
  for bad, match in [(dict(noise_prob=1.5), "noise_prob: expected a probability"),
                     (dict(snr_db=(30.0, 10.0)), "snr_db: expected \\(low, high\\)"),
                     (dict(rt60=(0.0, 0.5)), "rt60: expected seconds > 0")]:
    with pytest.raises(ValueError, match=match):
      Acoustics(RATE, **bad)


def test_augmented_crops_are_reproducible_and_keep_the_crop_and_its_phonemes():
  t = np.arange(4 * RATE)
  element = {"audio": (np.sin(t * 0.05) * np.sin(t * 3e-4) * 8000).astype(np.int16),
             "sample_rate": RATE, "phonemes": b"_ g oU f _: _",
             "phoneme_starts": np.array([0, 8000, 20000, 40000, 56000, 64000], np.int32)}
  kw = dict(batch_size=4, sample_rate=RATE, length=RATE // 2, seed=5, target_dbfs=-20.0,
            num_epochs=2, max_phonemes=8)
  room = Acoustics(RATE, reverb_prob=0.5, noise_prob=0.5)
  plain = list(audio_dataset([element] * 4, **kw))
  a, b = (list(audio_dataset([element] * 4, acoustics=room, **kw)) for _ in range(2))
  for x, y, clean in zip(a, b, plain):
    np.testing.assert_array_equal(x["audio"], y["audio"])  # a pure function of the seed
    np.testing.assert_array_equal(x["phonemes"], clean["phonemes"])  # the same crops
    np.testing.assert_array_equal(x["phoneme_count"], clean["phoneme_count"])
  changed = [not np.array_equal(x["audio"][i], c["audio"][i])
             for x, c in zip(a, plain) for i in range(4)]
  assert 0 < sum(changed) < len(changed)  # each crop draws its room and noise (p = 0.75)
