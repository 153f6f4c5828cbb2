"""A small convolutional autoencoder around any quantizer: the quantizer study's model.

Encoder: two stride-2 convolutions (32 -> 8 for 32x32 inputs) and a 3x3 projection to
`latent_dim`; decoder mirrors it with transposed convolutions. Swish activations, as in
VQGAN. Images are (B, H, W, C) in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.quantizers.core import QuantizerOutput


class ConvAutoencoder(nnx.Module):

  def __init__(self, quantizer: nnx.Module, *, channels: int = 1, width: int = 64,
               latent_dim: int = 16, rngs: nnx.Rngs):
    if quantizer.dim != latent_dim:
      raise ValueError(f"quantizer: expected input dim latent_dim={latent_dim}, got "
                       f"{quantizer.dim}")
    conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=(s, s), padding="SAME", rngs=rngs)
    up = lambda i, o: nnx.ConvTranspose(i, o, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
    self.encoder = nnx.List([conv(channels, width // 2, 4, 2), conv(width // 2, width, 4, 2),
                             conv(width, width, 3, 1)])
    self.to_latent = conv(width, latent_dim, 1, 1)
    self.quantizer = quantizer
    self.from_latent = conv(latent_dim, width, 3, 1)
    self.decoder = nnx.List([up(width, width // 2), up(width // 2, width // 2)])
    self.to_image = conv(width // 2, channels, 3, 1)

  def encode(self, x: jax.Array) -> jax.Array:
    for layer in self.encoder:
      x = nnx.swish(layer(x))
    return self.to_latent(x)

  def decode(self, z: jax.Array) -> jax.Array:
    h = nnx.swish(self.from_latent(z))
    for layer in self.decoder:
      h = nnx.swish(layer(h))
    return self.to_image(h).astype(jnp.float32)  # float32 whatever the compute dtype

  def __call__(self, x: jax.Array) -> tuple[jax.Array, QuantizerOutput]:
    q = self.quantizer(self.encode(x))
    return self.decode(q.quantized), q

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    return self.decode(self.quantizer.decode(indices))


def image_to_unit(x_uint8: jax.Array) -> jax.Array:
  return x_uint8.astype(jnp.float32) / 127.5 - 1.0
