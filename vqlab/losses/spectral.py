"""Spectral reconstruction losses of the audio codecs, on waveforms (B, T) or (B, T, 1).

- `stft`: centred frames (reflect padding, as torch.stft(center=True)), periodic Hann
  window, one-sided spectrum.
- `mel_filterbank`: triangular filters on the HTK mel scale (2595 log10(1 + f / 700)),
  each filter's peak 1 (no area normalisation).
- `multiscale_mel_loss`: DAC's mel reconstruction loss and "mel distance" metric
  (https://arxiv.org/abs/2306.06546): L1 between log10 mel magnitudes (clamped at 1e-5),
  summed over window sizes 32 ... 2048 with 5 ... 320 mels, hop = window / 4.
- `multiscale_stft_loss`: spectral convergence + log-magnitude L1 (Parallel WaveGAN,
  https://arxiv.org/abs/1910.11480), averaged over (fft, hop) resolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DAC_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MELS = (5, 10, 20, 40, 80, 160, 320)
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def as_signals(x: Array) -> Array:
  if x.ndim == 3:
    if x.shape[-1] != 1:  # several channels: each is its own signal
      x = jnp.moveaxis(x, -1, 1).reshape(-1, x.shape[1])
    else:
      x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"x: expected a waveform (B, T) or (B, T, C), got shape {tuple(x.shape)}")
  return x.astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def hann(n: int) -> np.ndarray:
  """Periodic Hann window (torch.hann_window's default)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: Array, n_fft: int, hop: int) -> Array:
  """Complex spectrogram (B, frames, n_fft // 2 + 1) of x (B, T)."""
  x = as_signals(x)
  pad = n_fft // 2
  if x.shape[1] <= pad:  # reflect padding needs more samples than it reflects
    raise ValueError(f"x: expected more than {pad} samples for n_fft={n_fft}, got {x.shape[1]}")
  x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
  frames = 1 + (x.shape[1] - n_fft) // hop
  idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
  return jnp.fft.rfft(x[:, idx] * hann(n_fft), axis=-1)


@functools.lru_cache(maxsize=None)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale."""
  f_max = sample_rate / 2 if f_max is None else f_max
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
  hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  lower = (freqs[:, None] - edges[None, :-2]) / np.maximum(edges[1:-1] - edges[:-2], 1e-9)
  upper = (edges[None, 2:] - freqs[:, None]) / np.maximum(edges[2:] - edges[1:-1], 1e-9)
  return np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)


def mel_spectrogram(x: Array, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> Array:
  """Mel magnitudes (B, frames, n_mels) (power 1, as DAC)."""
  return jnp.abs(stft(x, n_fft, hop)) @ mel_filterbank(n_fft, n_mels, sample_rate)


def log_mel_l1(x: Array, y: Array, sample_rate: int, n_fft: int, n_mels: int,
               clamp: float = 1e-5) -> Array:
  """Mean |log10 mel(x) - log10 mel(y)| at one resolution (hop n_fft / 4); per example (B,)."""
  hop = max(n_fft // 4, 1)
  mx = mel_spectrogram(x, sample_rate, n_fft, hop, n_mels)
  my = mel_spectrogram(y, sample_rate, n_fft, hop, n_mels)
  d = jnp.abs(jnp.log10(jnp.maximum(mx, clamp)) - jnp.log10(jnp.maximum(my, clamp)))
  return jnp.mean(d, axis=(1, 2))


def multiscale_mel_distance(x: Array, y: Array, sample_rate: int,
                            windows: Sequence[int] = DAC_WINDOWS,
                            mels: Sequence[int] = DAC_MELS) -> Array:
  """DAC's mel distance per example (B,): the sum over resolutions of `log_mel_l1`."""
  if len(windows) != len(mels):
    raise ValueError(f"mels: expected one per window ({len(windows)}), got {len(mels)}")
  return sum(log_mel_l1(x, y, sample_rate, w, m) for w, m in zip(windows, mels))


def multiscale_mel_loss(x: Array, y: Array, sample_rate: int,
                        windows: Sequence[int] = DAC_WINDOWS,
                        mels: Sequence[int] = DAC_MELS) -> Array:
  return jnp.mean(multiscale_mel_distance(x, y, sample_rate, windows, mels))


def multiscale_stft_loss(x: Array, y: Array,
                         resolutions: Sequence[tuple[int, int]] = STFT_RESOLUTIONS,
                         eps: float = 1e-7) -> Array:
  """Mean over (n_fft, hop) of spectral convergence + mean |log |X| - log |Y||."""
  total = 0.0
  for n_fft, hop in resolutions:
    mx, my = jnp.abs(stft(x, n_fft, hop)), jnp.abs(stft(y, n_fft, hop))
    convergence = jnp.linalg.norm(my - mx) / jnp.maximum(jnp.linalg.norm(my), eps)
    log_mag = jnp.mean(jnp.abs(jnp.log(mx + eps) - jnp.log(my + eps)))
    total = total + convergence + log_mag
  return total / len(resolutions)
