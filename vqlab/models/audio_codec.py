"""A neural audio codec: SEANet encoder -> residual quantizer -> SEANet decoder
(SoundStream, https://arxiv.org/abs/2107.03312; EnCodec, https://arxiv.org/abs/2210.13438;
DAC's factorized codes, https://arxiv.org/abs/2306.06546, are `code_dim` + cosine VQ;
`shape.decoder="istft"` decodes through a spectrogram instead, vqlab.models.istft_decoder).

Waveforms are (B, T) or (B, T, C) floats in [-1, 1]. A signal of any length T is
zero-padded at the end to F = ceil(T / hop) frames; decoding gives F hop samples, which
`decode(..., length=T)` trims back. Indices are (B, F, levels) int32.
`stream_encode` / `stream_decode` run a causal codec chunk by chunk, carrying each
layer's state, and give the same result as whole-signal processing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.models.istft_decoder import ISTFTDecoder
from vqlab.models.seanet import SEANetDecoder, SEANetEncoder, SEANetShape
from vqlab.quantizers import factory
from vqlab.quantizers.core import QuantizerOutput

Array = jax.Array


def num_frames(length: int, hop: int) -> int:
  return math.ceil(length / hop)


class AudioCodec(nnx.Module):

  """`phoneme_classes` > 0 adds `phoneme_head`, a linear map from the first level's
  quantized vectors to per-frame phoneme logits; `teacher_dim` > 0 adds `teacher_head`,
  SpeechTokenizer's linear map from them to a teacher's feature width (semantic
  distillation, vqlab.losses.semantic). Both are training aids and play no part in coding."""

  def __init__(self, shape: SEANetShape, quantizer: nnx.Module, sample_rate: int,
               rngs: nnx.Rngs, phoneme_classes: int = 0, teacher_dim: int = 0):
    shape.check()
    if quantizer.dim != shape.latent_dim:
      raise ValueError(f"quantizer: expected input dim {shape.latent_dim}, got {quantizer.dim}")
    self.shape, self.sample_rate, self.hop = shape, int(sample_rate), shape.hop
    self.encoder = SEANetEncoder(shape, rngs)
    self.quantizer = quantizer
    decoder = ISTFTDecoder if shape.decoder == "istft" else SEANetDecoder
    self.decoder = decoder(shape, rngs)
    self.phoneme_head = (nnx.Linear(shape.latent_dim, phoneme_classes, rngs=rngs)
                         if phoneme_classes else None)
    self.teacher_head = (nnx.Linear(shape.latent_dim, teacher_dim, rngs=rngs)
                         if teacher_dim else None)

  def first_level(self, q: QuantizerOutput) -> Array:
    """(B, F, latent_dim) float32: the first residual level's quantized vectors."""
    return q.aux.get("first_level", q.quantized).astype(jnp.float32)

  def teacher_features(self, q: QuantizerOutput) -> Array:
    """(B, F, teacher_dim): the first level mapped to the teacher's feature space."""
    if self.teacher_head is None:
      raise ValueError("teacher_features: this codec has no teacher head (teacher_dim=0)")
    return self.teacher_head(self.first_level(q))

  def phoneme_logits(self, q: QuantizerOutput) -> Array:
    """(B, F, phoneme_classes) logits read from the first level of a quantizer output."""
    if self.phoneme_head is None:
      raise ValueError("phoneme_logits: this codec has no phoneme head (phoneme_classes=0)")
    return self.phoneme_head(self.first_level(q))

  # ------------------------------------------------------------------ arithmetic
  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop

  @property
  def num_levels(self) -> int:
    return getattr(self.quantizer, "num_levels", 1)

  def bitrate(self, num_levels: int | None = None) -> float:
    """Bits per second with the first `num_levels` residual levels (default all)."""
    if hasattr(self.quantizer, "bits_per_vector"):
      bits = self.quantizer.bits_per_vector(num_levels)
    else:
      bits = math.log2(self.quantizer.codebook_size)
    return self.frame_rate * bits

  def _as_btc(self, wav: Array) -> Array:
    wav = wav[..., None] if wav.ndim == 2 else wav
    c = self.shape.audio_channels
    if wav.ndim != 3 or wav.shape[-1] != c:
      raise ValueError(f"wav: expected (B, T) or (B, T, {c}), got shape {tuple(wav.shape)}")
    return wav

  def pad(self, wav: Array) -> Array:
    """(B, T[, C]) -> (B, F hop, C), zeros at the end."""
    wav = self._as_btc(wav)
    extra = num_frames(wav.shape[1], self.hop) * self.hop - wav.shape[1]
    return jnp.pad(wav, ((0, 0), (0, extra), (0, 0)))

  # ------------------------------------------------------------------ whole signals
  def encode(self, wav: Array, num_levels: int | Array | None = None) -> QuantizerOutput:
    """Waveform -> quantizer output over F frames (indices (B, F, levels))."""
    z = self.encoder(self.pad(wav))
    return self.quantize(z, num_levels)

  def quantize(self, z: Array, num_levels: int | Array | None = None) -> QuantizerOutput:
    """The encoder's latent (B, F, latent_dim) quantized with the first `num_levels`
    levels (default: all, or a random number per example under quantizer dropout)."""
    if num_levels is None:
      return self.quantizer(z)
    if not hasattr(self.quantizer, "num_levels"):  # one level: 1 is the only depth
      if not isinstance(num_levels, jax.core.Tracer) and int(num_levels) != 1:
        raise ValueError(f"num_levels: this codec's quantizer has one level, expected 1, "
                         f"got {num_levels!r}")
      return self.quantizer(z)
    return self.quantizer(z, num_levels=num_levels)

  def decode(self, indices: Array, length: int | None = None,
             num_levels: int | None = None) -> Array:
    """Indices (B, F, levels) -> waveform (B, length or F hop, C)."""
    kw = {} if num_levels is None else {"num_levels": num_levels}
    wav = self.decoder(self.quantizer.decode(indices, **kw)).astype(jnp.float32)
    return wav if length is None else wav[:, :length]

  def __call__(self, wav: Array, num_levels: int | Array | None = None
               ) -> tuple[Array, QuantizerOutput]:
    """Reconstruction (B, T, C) trimmed to the input length, and the quantizer output."""
    recon, q, _ = self.reconstruct(wav, num_levels)
    return recon, q

  def reconstruct(self, wav: Array, num_levels: int | Array | None = None
                  ) -> tuple[Array, QuantizerOutput, Array]:
    """`self(wav, num_levels)` and the encoder's latent (B, F, latent_dim) it quantized."""
    length = self._as_btc(wav).shape[1]
    z = self.encoder(self.pad(wav))
    q = self.quantize(z, num_levels)
    return self.decoder(q.quantized)[:, :length].astype(jnp.float32), q, z

  # ------------------------------------------------------------------ streaming
  def _check_streaming(self) -> None:
    if not self.shape.causal:
      raise ValueError("streaming: expected a causal codec (shape.causal=True), got causal=False")

  def stream_encode(self, wav: Array, chunk_frames: int) -> Array:
    """Indices of a waveform encoded `chunk_frames` frames at a time (eval mode)."""
    self._check_streaming()
    wav = self.pad(wav)
    graphdef, params = nnx.split(self)
    state = self.encoder.init_state(wav.shape[0])
    chunks, n = [], chunk_frames * self.hop
    for start in range(0, wav.shape[1], n):
      indices, state = _encode_chunk(graphdef, params, wav[:, start:start + n], state)
      chunks.append(indices)
    return jnp.concatenate(chunks, axis=1)

  def stream_decode(self, indices: Array, chunk_frames: int, length: int | None = None,
                    num_levels: int | None = None) -> Array:
    """Waveform decoded `chunk_frames` frames at a time."""
    self._check_streaming()
    graphdef, params = nnx.split(self)
    state = self.decoder.init_state(indices.shape[0])
    chunks = []
    for start in range(0, indices.shape[1], chunk_frames):
      wav, state = _decode_chunk(graphdef, params, indices[:, start:start + chunk_frames],
                                 state, num_levels)
      chunks.append(wav)
    wav = jnp.concatenate(chunks, axis=1)
    return wav if length is None else wav[:, :length]


# One compiled function per chunk shape, called with the split model: a real-time coder
# pays a plain jit dispatch per chunk, not a module traversal.
@functools.partial(jax.jit, static_argnums=0)
def _encode_chunk(graphdef, params, x: Array, state):
  model = nnx.merge(graphdef, params)
  z, state = model.encoder.apply(x, state)
  return model.quantizer(z).indices, state


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_chunk(graphdef, params, indices: Array, state, num_levels):
  model = nnx.merge(graphdef, params)
  kw = {} if num_levels is None else {"num_levels": num_levels}
  return model.decoder.apply(model.quantizer.decode(indices, **kw), state)


def make_shape(shape: Mapping[str, Any]) -> SEANetShape:
  fields = {f.name for f in dataclasses.fields(SEANetShape)}
  unknown = sorted(set(shape) - fields)
  if unknown:
    raise ValueError(f"shape: unknown fields {unknown}; expected some of {sorted(fields)}")
  return SEANetShape(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                        for k, v in shape.items()})


def build(shape: Mapping[str, Any], quantizer_kind: str, quantizer_args: Mapping[str, Any],
          sample_rate: int, *, rngs: nnx.Rngs, phoneme_classes: int = 0,
          teacher_dim: int = 0) -> AudioCodec:
  shape = make_shape(shape)
  shape.check()
  quantizer = factory.build(quantizer_kind, shape.latent_dim, rngs=rngs, **dict(quantizer_args))
  return AudioCodec(shape, quantizer, sample_rate, rngs, phoneme_classes, teacher_dim)


def bitrate_table(model: AudioCodec) -> list[tuple[int, float]]:
  """(levels, bits per second) for every number of residual levels."""
  return [(n, model.bitrate(n)) for n in range(1, model.num_levels + 1)]

