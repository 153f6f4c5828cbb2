"""A codec decoder that predicts a spectrogram and inverts it (Vocos, Siuzdak 2023,
https://arxiv.org/abs/2306.00814; WavTokenizer, https://arxiv.org/abs/2408.16532).

Latents (B, F, latent_dim) -> a frame-rate conv stack (SEANet's residual units, no
upsampling) -> per frame a log-magnitude and a phase angle for each of the
n_fft / 2 + 1 bins -> inverse real FFT, Hann window, overlap-add -> F hop samples.
n_fft = 4 hop (Vocos: 1024 / 256), so each output hop block sums four frames' windows.

Why: the SEANet decoder must learn to upsample 320x and to build harmonics sample by
sample before its output spectrum can follow the latent; on CPU budgets it stops at a
fixed spectrum scaled by loudness, and the encoder then sends one number per frame (the
audio issue's flat bitrate ladder). Here the mel loss reaches the decoder's outputs
almost directly (magnitudes per bin), so the spectral envelope, and the latent carrying
it, is learned in the first hundreds of steps.

Frame f's window is centred on the start of hop block f + 1, i.e. it spans blocks f - 1
.. f + 2: block b sums frames b - 2 .. b + 1, one frame of look-ahead. Not streamable
(the SEANet decoder is); the encoder is unchanged and still streams.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.losses.spectral import hann  # periodic: its squares overlap-add to 1.5 at n / 4
from vqlab.models.seanet import Conv1d, ResidualUnit, SEANetShape, _activation, _Stack

Array = jax.Array
OVERLAP = 4  # n_fft / hop
MAX_LOG_MAGNITUDE = np.log(100.0)  # Vocos clips magnitudes at 1e2


def overlap_add(frames: Array, hop: int) -> Array:
  """(B, F, 4 hop) windowed frames -> (B, F hop): frame f's hop blocks j = 0..3 land on
  output blocks f + j - 1 (blocks outside 0..F-1 are dropped)."""
  b, f, n = frames.shape
  if n != OVERLAP * hop:
    raise ValueError(f"frames: expected length {OVERLAP * hop} (4 hop), got {n}")
  blocks = frames.reshape(b, f, OVERLAP, hop)
  out = jnp.zeros((b, f + OVERLAP, hop), frames.dtype)  # blocks -1 .. F + 2, offset by 1
  for j in range(OVERLAP):
    out = out.at[:, j:j + f].add(blocks[:, :, j])
  return out[:, 1:f + 1].reshape(b, f * hop)


def istft(log_magnitude: Array, phase: Array, hop: int) -> Array:
  """(B, F, bins) log-magnitudes and phase angles, bins = 2 hop + 1 -> (B, F hop) samples:
  windowed inverse real FFTs overlap-added and divided by the window's summed square
  (exactly 1.5 inside the signal, less at its two ends, where fewer frames overlap)."""
  n = OVERLAP * hop
  if log_magnitude.shape[-1] != n // 2 + 1:
    raise ValueError(f"log_magnitude: expected {n // 2 + 1} bins (hop {hop}), "
                     f"got shape {tuple(log_magnitude.shape)}")
  magnitude = jnp.exp(jnp.minimum(log_magnitude.astype(jnp.float32), MAX_LOG_MAGNITUDE))
  phase = phase.astype(jnp.float32)
  spectrum = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
  window = jnp.asarray(hann(n))
  frames = jnp.fft.irfft(spectrum, n=n, axis=-1) * window
  envelope = overlap_add(jnp.broadcast_to(jnp.square(window), frames.shape[1:])[None], hop)
  return overlap_add(frames, hop) / jnp.maximum(envelope, 1e-3)


class ISTFTDecoder(_Stack):
  """Latents (B, F, latent_dim) -> waveform (B, F hop, audio_channels); the same width as
  the SEANet decoder's first layer (channels x 2^len(strides)), the same residual units
  (centred), no LSTM (`lstm_layers` then shapes the encoder only)."""

  def __init__(self, shape: SEANetShape, rngs: nnx.Rngs):
    shape.check()
    kw = dict(causal=False, weight_norm=shape.weight_norm, rngs=rngs)
    ch = shape.channels * 2 ** len(shape.strides)
    frame_shape = dataclasses.replace(shape, causal=False)
    layers = [Conv1d(shape.latent_dim, ch, shape.kernel, **kw)]
    layers += [ResidualUnit(ch, d, frame_shape, rngs) for d in shape.dilations]
    self.layers = nnx.List(layers)
    self.out_activation = _activation(shape.activation, ch)
    self.bins = 2 * shape.hop + 1
    self.head = Conv1d(ch, 2 * self.bins * shape.audio_channels, 1, **kw)
    self.shape = shape

  def __call__(self, x: Array) -> Array:
    h = self.head(self.out_activation(super().__call__(x)))
    b, f, _ = h.shape
    c = self.shape.audio_channels
    # (B, F, C x 2 x bins) -> one (log-magnitude, phase) spectrogram per channel
    h = jnp.moveaxis(h.astype(jnp.float32).reshape(b, f, c, 2, self.bins), 2, 1)
    h = h.reshape(b * c, f, 2, self.bins)
    wav = istft(h[:, :, 0], h[:, :, 1], self.shape.hop)
    return jnp.moveaxis(wav.reshape(b, c, f * self.shape.hop), 1, 2)

  def init_state(self, batch: int):
    raise ValueError("streaming: the iSTFT decoder looks one frame ahead; decode whole "
                     "signals (shape.decoder='seanet' streams)")
