"""What every image tokenizer shares (2D `image_tokenizer.ImageTokenizer`, 1D
`titok.TiTok`): the input check, encode = quantizer(encoder(x)), decode = decoder of the
codes' vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.quantizers.core import QuantizerOutput

Array = jax.Array


class TokenizerBase(nnx.Module):
  """Subclasses set `image_size`, `channels`, `encoder`, `quantizer`, `decoder`."""

  def check_images(self, x: Array) -> None:
    want = (self.image_size, self.image_size, self.channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      raise ValueError(f"images: expected shape (B, {want[0]}, {want[1]}, {want[2]}), got "
                       f"{tuple(x.shape)}")

  def encode(self, x: Array) -> QuantizerOutput:
    """Images (B, H, W, C) in [-1, 1] -> the quantizer's output on the encoder's latents."""
    self.check_images(x)
    return self.quantizer(self.encoder(x))

  def decode(self, indices: Array) -> Array:
    """Indices as `encode` gives them (TiTok: any first k <= K) -> images (float32 whatever
    the compute dtype)."""
    return self.decoder(self.quantizer.decode(indices)).astype(jnp.float32)
