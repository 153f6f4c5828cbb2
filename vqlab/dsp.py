"""Signal helpers shared by the data pipeline and the audio metrics (neither imports the
other)."""

from __future__ import annotations

import math

import numpy as np


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
  """Polyphase resampling (scipy's Kaiser-windowed FIR) from `rate` to `target` Hz."""
  if rate == target:
    return wave
  from scipy.signal import resample_poly
  g = math.gcd(int(rate), int(target))
  return resample_poly(wave, target // g, rate // g).astype(np.float32)


def room_response(rt60: float, drr_db: float, rate: int, rng: np.random.Generator) -> np.ndarray:
  """A synthetic room impulse response of unit energy: a direct path, then Polack's
  statistical model of the reverberant tail (Gaussian noise under an envelope that falls
  60 dB in `rt60` seconds), the tail's energy `drr_db` below the direct path's."""
  if rt60 <= 0:
    raise ValueError(f"rt60: expected > 0 seconds, got {rt60}")
  n = max(int(math.ceil(rt60 * rate)), 2)
  t = np.arange(1, n) / rate
  tail = rng.standard_normal(n - 1) * np.exp(-3.0 * math.log(10.0) * t / rt60)
  tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail ** 2))
  ir = np.concatenate([[1.0], tail])
  return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def colored_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  """Unit-power noise whose power spectrum falls as 1 / f^exponent (0 white, 1 pink,
  2 brown): white Gaussian noise shaped in the frequency domain."""
  spectrum = np.fft.rfft(rng.standard_normal(length))
  f = np.fft.rfftfreq(length)
  f[0] = f[1] if length > 1 else 1.0  # no infinite DC gain
  noise = np.fft.irfft(spectrum / f ** (exponent / 2.0), n=length)
  return (noise / max(np.sqrt(np.mean(noise ** 2)), 1e-12)).astype(np.float32)
