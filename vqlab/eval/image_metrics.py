"""Reconstruction metrics for image tokenizers: PSNR, SSIM, Frechet distance.

- PSNR in dB for images in a known `data_range`.
- SSIM (Wang et al. 2004) with an 11x11 Gaussian window of sigma 1.5, K1 = 0.01,
  K2 = 0.03, population covariances and 'valid' windows, averaged over channels, as
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)` (tested against it).
- Frechet distance between Gaussians fitted to features (FID / rFID given Inception
  features): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), float64, the matrix square root
  from an eigen-decomposition of S1^1/2 S2 S1^1/2 (symmetric, so stable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def frames(x: Array) -> Array:
  """Clips (B, T, H, W, C) as their frames (B T, H, W, C), for per-frame metrics; images
  (B, H, W, C) unchanged."""
  return x.reshape(-1, *x.shape[2:]) if x.ndim == 5 else x


def psnr(x: Array, y: Array, data_range: float = 2.0) -> Array:
  """Per-image PSNR (B,) of (B, H, W, C) images; data_range 2 for images in [-1, 1]."""
  if x.shape != y.shape:
    raise ValueError(f"x, y: expected the same shape, got {x.shape} and {y.shape}")
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  r = np.arange(size) - (size - 1) / 2
  g = np.exp(-(r**2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter(x: Array, window: np.ndarray) -> Array:
  """Separable 'valid' filtering of (B, H, W, C) along H and W."""
  w = jnp.asarray(window)
  k = len(window)
  x = sum(w[i] * x[:, i:x.shape[1] - k + 1 + i] for i in range(k))
  return sum(w[i] * x[:, :, i:x.shape[2] - k + 1 + i] for i in range(k))


def ssim(x: Array, y: Array, data_range: float = 2.0) -> Array:
  """Per-image SSIM (B,) of (B, H, W, C) images, H and W >= 11."""
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"x, y: expected two (B, H, W, C) images, got {x.shape} and {y.shape}")
  if min(x.shape[1:3]) < 11:
    raise ValueError(f"x: expected H, W >= 11 (the SSIM window), got {x.shape}")
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  win = _gaussian_window()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = _filter(x, win), _filter(y, win)
  vx = _filter(x * x, win) - mx * mx
  vy = _filter(y * y, win) - my * my
  cxy = _filter(x * y, win) - mx * my
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (sample) covariance of (N, D) features, float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features: expected (N >= 2, D), got shape {f.shape}")
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  vals, vecs = np.linalg.eigh((m + m.T) / 2)
  return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"mu1, sigma1, mu2, sigma2: expected (D,), (D, D) twice, got "
                     f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
  root1 = _sqrt_psd(s1)
  # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), the latter symmetric PSD
  covmean_trace = np.trace(_sqrt_psd(root1 @ s2 @ root1))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * covmean_trace)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), over `splits`
  equal parts of the samples as the original code; returns (mean, std) over the parts."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < splits:
    raise ValueError(f"logits: expected (N >= {splits}, classes), got {logits.shape}")
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    marginal = np.log(np.exp(part).mean(0))
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - marginal), 1))))
  return float(np.mean(scores)), float(np.std(scores))
