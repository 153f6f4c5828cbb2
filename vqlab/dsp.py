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
