"""Waveform discriminators of the audio codecs, and their losses.

- `PeriodDiscriminator` / the multi-period discriminator (HiFi-GAN, Kong et al. 2020,
  https://arxiv.org/abs/2010.05646): the waveform folded into (T / p, p) and 2D convs
  along time, for periods 2, 3, 5, 7, 11.
- `STFTDiscriminator` / the multi-scale STFT discriminator (EnCodec,
  https://arxiv.org/abs/2210.13438): real and imaginary parts of a complex STFT as two
  channels, 2D convs dilated in time (1, 2, 4) and strided in frequency.
Every discriminator returns (logits, features); `AudioDiscriminator` holds both sets.
Losses: hinge (EnCodec: D: relu(1 - D(x)) + relu(1 + D(G(z))), G: relu(1 - D(G(z)))),
averaged over discriminators, and EnCodec's relative feature matching
|f(x) - f(G(z))|_1 / mean|f(x)|, averaged over layers and discriminators.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.losses.spectral import stft

Array = jax.Array


def _leaky(x: Array, slope: float) -> Array:
  return jnp.where(x >= 0, x, slope * x)


class PeriodDiscriminator(nnx.Module):

  def __init__(self, period: int, width: int = 32, max_width: int = 1024, layers: int = 4,
               rngs: nnx.Rngs | None = None):
    self.period = period
    chans = [1] + [min(width * 4 ** i, max_width) for i in range(layers)]
    self.convs = nnx.List([
        nnx.Conv(chans[i], chans[i + 1], (5, 1), strides=(3, 1), padding=((2, 2), (0, 0)),
                 rngs=rngs) for i in range(layers)])
    self.last_conv = nnx.Conv(chans[-1], chans[-1], (5, 1), padding=((2, 2), (0, 0)), rngs=rngs)
    self.out = nnx.Conv(chans[-1], 1, (3, 1), padding=((1, 1), (0, 0)), rngs=rngs)

  def __call__(self, wav: Array) -> tuple[Array, list[Array]]:
    x = wav[..., None] if wav.ndim == 2 else wav  # (B, T, 1)
    b, t, _ = x.shape
    extra = (-t) % self.period
    if extra:
      x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)), mode="reflect")
    x = x.reshape(b, -1, self.period, 1)  # (B, T / p, p, 1): column j = samples j mod p
    features = []
    for conv in [*self.convs, self.last_conv]:
      x = _leaky(conv(x), 0.1)
      features.append(x)
    return self.out(x), features


class STFTDiscriminator(nnx.Module):

  def __init__(self, n_fft: int, hop: int, width: int = 32, dilations: Sequence[int] = (1, 2, 4),
               rngs: nnx.Rngs | None = None):
    self.n_fft, self.hop = n_fft, hop
    convs = [nnx.Conv(2, width, (3, 9), padding="SAME", rngs=rngs)]
    for d in dilations:  # (time, frequency): dilated in time, strided by 2 in frequency
      convs.append(nnx.Conv(width, width, (3, 9), strides=(1, 2), kernel_dilation=(d, 1),
                            padding=((d, d), (4, 4)), rngs=rngs))
    convs.append(nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs))
    self.convs = nnx.List(convs)
    self.out = nnx.Conv(width, 1, (3, 3), padding="SAME", rngs=rngs)

  def __call__(self, wav: Array) -> tuple[Array, list[Array]]:
    spec = stft(wav, self.n_fft, self.hop)  # (B, frames, freq)
    x = jnp.stack([spec.real, spec.imag], axis=-1)
    features = []
    for conv in self.convs:
      x = _leaky(conv(x), 0.2)
      features.append(x)
    return self.out(x), features


class AudioDiscriminator(nnx.Module):
  """The multi-period and multi-scale STFT discriminators together."""

  def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
               stft_resolutions: Sequence[tuple[int, int]] = ((1024, 256), (2048, 512),
                                                              (512, 128)),
               width: int = 32, max_width: int = 1024, rngs: nnx.Rngs | None = None):
    if not periods and not stft_resolutions:
      raise ValueError("periods, stft_resolutions: expected at least one discriminator")
    self.members = nnx.List(
        [PeriodDiscriminator(p, width, max_width, rngs=rngs) for p in periods]
        + [STFTDiscriminator(n, h, width, rngs=rngs) for n, h in stft_resolutions])

  def __call__(self, wav: Array) -> list[tuple[Array, list[Array]]]:
    return [d(wav) for d in self.members]


def discriminator_hinge(real: list, fake: list) -> Array:
  """Mean over discriminators of mean relu(1 - D(x)) + mean relu(1 + D(G(z)))."""
  terms = [jnp.mean(jax.nn.relu(1.0 - r.astype(jnp.float32)))
           + jnp.mean(jax.nn.relu(1.0 + f.astype(jnp.float32)))
           for (r, _), (f, _) in zip(real, fake)]
  return sum(terms) / len(terms)


def generator_hinge(fake: list) -> Array:
  terms = [jnp.mean(jax.nn.relu(1.0 - f.astype(jnp.float32))) for f, _ in fake]
  return sum(terms) / len(terms)


def feature_matching(real: list, fake: list) -> Array:
  """Mean over discriminators and layers of |f_real - f_fake|_1 / mean |f_real|; the real
  features are constants (no gradient flows into D through this term)."""
  terms = []
  for (_, real_feats), (_, fake_feats) in zip(real, fake):
    for r, f in zip(real_feats, fake_feats):
      r = jax.lax.stop_gradient(r.astype(jnp.float32))
      terms.append(jnp.mean(jnp.abs(r - f.astype(jnp.float32)))
                   / (jnp.mean(jnp.abs(r)) + 1e-8))
  return sum(terms) / len(terms)
