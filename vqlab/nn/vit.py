"""Vision-transformer pieces: patchify, 2D sin-cos positions, a pre-norm encoder block.

Positions follow MAE / big_vision's `posemb_sincos_2d`: half the channels encode the row,
half the column, each as [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (D/4)).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from vqlab.nn.precision import float32_softmax_attention
from vqlab.nn.transformer import checkpointed, linear

Array = jax.Array


def patchify(x: Array, patch: int) -> Array:
  """(B, H, W, C) -> (B, H/p * W/p, p*p*C), patches in raster order."""
  b, h, w, c = x.shape
  if h % patch or w % patch:
    raise ValueError(f"x: expected H and W divisible by patch={patch}, got shape {x.shape}")
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def image_patches(x: Array, image_size: int, channels: int, patch: int) -> Array:
  """`patchify` of an encoder's input, checked to be (B, image_size, image_size, channels)."""
  if x.shape[1:] != (image_size, image_size, channels):
    raise ValueError(f"x: expected (B, {image_size}, {image_size}, {channels}), got "
                     f"{x.shape}")
  return patchify(x, patch)


def unpatchify(tokens: Array, patch: int, h: int, w: int) -> Array:
  """Inverse of `patchify` for an (h, w) image."""
  b, n, d = tokens.shape
  c = d // (patch * patch)
  x = tokens.reshape(b, h // patch, w // patch, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """(rows * cols, dim) fixed position embedding."""
  if dim % 4:
    raise ValueError(f"dim: expected a multiple of 4 for 2D sin-cos positions, got {dim}")
  y, x = np.mgrid[:rows, :cols]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))
  parts = []
  for p in (y.reshape(-1), x.reshape(-1)):
    angle = p[:, None] * omega[None]
    parts += [np.sin(angle), np.cos(angle)]
  return np.concatenate(parts, axis=1).astype(np.float32)


class EncoderBlock(nnx.Module):
  """x + MHSA(LN(x)); x + MLP(LN(x)) with a GELU MLP of `mlp_ratio` x width."""

  def __init__(self, width: int, heads: int, mlp_ratio: int = 4, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs,
                                       attention_fn=float32_softmax_attention)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = linear(width, mlp_ratio * width, ("embed", "mlp"), rngs)
    self.down = linear(mlp_ratio * width, width, ("mlp", "embed"), rngs)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


def run_blocks(blocks, h: Array, remat: str, mask: Array | None = None) -> Array:
  """`mask`: attention mask broadcastable to (B, heads, L, L), True where attended."""
  for block in blocks:  # the blocks hold no state that a call changes
    h = (block(h, mask) if remat == "none" else
         checkpointed(block, remat, lambda b, h, m: b(h, m), h, mask))
  return h
