"""Moving MNIST (Srivastava et al. 2015, https://arxiv.org/abs/1502.04681) made from the
built-in real digits: `num_digits` 28x28 digits moving in straight lines across a
`size` x `size` canvas, bouncing off its edges, overlaps combined by the brighter pixel.
The standard benchmark's setting is the default (2 digits, 64x64, 20 frames, a step of
0.1 of the free range per frame: 3.6 px). Every clip is a pure function of (digits, seed).
"""

from __future__ import annotations

import numpy as np

DIGIT = 28


def trajectories(rng: np.random.Generator, num_frames: int, free: int, step: float
                 ) -> np.ndarray:
  """Integer top-left corners (num_frames, 2) of one digit: a random start in [0, free]^2
  and direction, constant speed `step` px per frame, reflected at 0 and `free`."""
  position = rng.uniform(0, free, size=2)
  theta = rng.uniform(0, 2 * np.pi)
  velocity = step * np.array([np.sin(theta), np.cos(theta)])
  out = np.empty((num_frames, 2), np.int64)
  for t in range(num_frames):
    out[t] = np.round(position)
    position = position + velocity
    for axis in range(2):  # bounce: reflect the overshoot, reverse the direction
      if position[axis] < 0:
        position[axis], velocity[axis] = -position[axis], -velocity[axis]
      elif position[axis] > free:
        position[axis], velocity[axis] = 2 * free - position[axis], -velocity[axis]
  return out


def moving_mnist(digits: np.ndarray, labels: np.ndarray, num_clips: int, seed: int, *,
                 num_frames: int = 20, size: int = 64, num_digits: int = 2
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(clips uint8 (num_clips, num_frames, size, size, 1), labels int32 (num_clips,
  num_digits)) from `digits` uint8 (N, 28, 28) drawn with replacement."""
  if digits.ndim != 3 or digits.shape[1:] != (DIGIT, DIGIT):
    raise ValueError(f"digits: expected shape (N, 28, 28), got {digits.shape}")
  if size < DIGIT:
    raise ValueError(f"size: expected >= {DIGIT}, got {size}")
  rng = np.random.default_rng(seed)
  free = size - DIGIT
  clips = np.zeros((num_clips, num_frames, size, size), np.uint8)
  chosen = np.zeros((num_clips, num_digits), np.int32)
  for c in range(num_clips):
    for d in range(num_digits):
      k = int(rng.integers(len(digits)))
      chosen[c, d] = labels[k]
      for t, (y, x) in enumerate(trajectories(rng, num_frames, free, 0.1 * free)):
        window = clips[c, t, y:y + DIGIT, x:x + DIGIT]
        np.maximum(window, digits[k], out=window)
  return clips[..., None], chosen
