"""Audio reconstruction metrics.

- `si_sdr`: scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019,
  https://arxiv.org/abs/1811.02508), means removed, per example.
- `mel_distance`: DAC's multi-scale log-mel L1 (vqlab.losses.spectral), per example.
- `pesq_stoi`: wide-band PESQ and STOI when the `pesq` / `pystoi` packages are installed
  (`pip install vqlab[audio]`); absent packages give no entry, never a made-up number,
  and clips PESQ cannot score (too short, no speech detected) are left out of its mean.
- `level_usage`: code usage and perplexity per residual level from index counts.
- `effective_rank`: how many directions a latent uses (a collapsed encoder uses ~1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.losses.spectral import as_signals, multiscale_mel_distance
from vqlab.quantizers.core import usage_metrics

Array = jax.Array


def si_sdr(estimate: Array, reference: Array, eps: float = 1e-8) -> Array:
  """SI-SDR (B,) in dB of `estimate` against `reference` (B, T) or (B, T, 1)."""
  x, s = as_signals(estimate), as_signals(reference)
  x = x - jnp.mean(x, axis=1, keepdims=True)
  s = s - jnp.mean(s, axis=1, keepdims=True)
  alpha = jnp.sum(x * s, axis=1, keepdims=True) / (jnp.sum(s * s, axis=1, keepdims=True) + eps)
  target = alpha * s
  noise = x - target
  return 10.0 * jnp.log10((jnp.sum(target ** 2, axis=1) + eps) / (jnp.sum(noise ** 2, axis=1) + eps))


def mel_distance(estimate: Array, reference: Array, sample_rate: int) -> Array:
  return multiscale_mel_distance(estimate, reference, sample_rate)


def pesq_stoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> dict[str, float]:
  """Mean wide-band PESQ (16 kHz; other rates are resampled) and STOI over the batch, for
  the packages that are installed."""
  out = {}
  est, ref = np.asarray(as_signals(estimate)), np.asarray(as_signals(reference))
  try:
    from pesq import PesqError, pesq
  except ImportError:
    pesq = None
  if pesq is not None:
    from vqlab.dsp import resample
    scores = []
    for e, r in zip(est, ref):
      try:
        scores.append(pesq(16000, resample(r, sample_rate, 16000),
                           resample(e, sample_rate, 16000), "wb"))
      except PesqError:  # too short, or no speech found: PESQ is undefined for the clip
        pass
    if scores:
      out["pesq"] = float(np.mean(scores))
  try:
    from pystoi import stoi
  except ImportError:
    stoi = None
  if stoi is not None:
    out["stoi"] = float(np.mean([stoi(r, e, sample_rate) for e, r in zip(est, ref)]))
  return out


def level_usage(counts_lk: np.ndarray) -> dict[str, float]:
  """{"level{l}/usage", "level{l}/perplexity"} from per-level code counts (L, K)."""
  out = {}
  for l, counts in enumerate(np.asarray(counts_lk)):
    u = usage_metrics(jnp.asarray(counts, jnp.float32))
    out[f"level{l}/usage"] = float(u["usage"])
    out[f"level{l}/perplexity"] = float(u["perplexity"])
  return out


def effective_rank(z: Array) -> Array:
  """exp(entropy) of the latent's PCA energy spectrum (Roy & Vetterli 2007): 1 when the
  latent moves along one direction, the latent width when it uses all equally. A scalar
  array; jit-able, so a trainer can log it for every batch."""
  z = jnp.asarray(z, jnp.float32).reshape(-1, z.shape[-1])
  energy = jnp.square(jnp.linalg.svd(z - z.mean(axis=0), compute_uv=False))
  p = energy / jnp.maximum(energy.sum(), 1e-30)
  return jnp.exp(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30))))
