"""ViT-VQGAN encoder / decoder (Yu et al. 2021, https://arxiv.org/abs/2110.04627):
non-overlapping patches -> linear -> fixed 2D sin-cos positions -> pre-norm transformer
blocks -> LayerNorm -> linear to `latent_dim`; the decoder mirrors it and a linear
layer maps each token back to its pixel patch. Pair it with
`VectorQuantizer(latent_dim, K, code_dim=8..32, metric="cosine")` for the paper's
factorized, l2-normalised codes.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from vqlab.nn.transformer import REMAT_POLICIES
from vqlab.nn.vit import EncoderBlock, image_patches, run_blocks, sincos_2d, unpatchify

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ViTShape:
  image_size: int = 256
  patch_size: int = 8
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: int = 4
  latent_dim: int = 768
  channels: int = 3
  remat: str = "none"  # training: "block" / "full" recompute each block (nn/transformer.py)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def check(self) -> None:
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size: expected a multiple of patch_size={self.patch_size}, got "
                       f"{self.image_size}")
    if self.width % self.heads or self.width % 4:
      raise ValueError(f"width: expected a multiple of heads={self.heads} and of 4, got "
                       f"{self.width}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat: expected one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")


# ViT-VQGAN's "Base" (encoder and decoder alike) and a CPU-sized one.
BASE = ViTShape()
TINY = ViTShape(image_size=32, patch_size=4, width=64, depth=2, heads=4, latent_dim=32)


class ViTEncoder(nnx.Module):
  def __init__(self, shape: ViTShape, rngs: nnx.Rngs):
    shape.check()
    self.shape = shape
    self.embed = nnx.Linear(shape.patch_size**2 * shape.channels, shape.width, rngs=rngs)
    self.blocks = nnx.List([EncoderBlock(shape.width, shape.heads, shape.mlp_ratio, rngs=rngs)
                            for _ in range(shape.depth)])
    self.norm = nnx.LayerNorm(shape.width, rngs=rngs)
    self.to_latent = nnx.Linear(shape.width, shape.latent_dim, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> latents (B, H/p, W/p, latent_dim)."""
    s = self.shape
    patches = image_patches(x, s.image_size, s.channels, s.patch_size)
    h = self.embed(patches) + sincos_2d(s.grid, s.grid, s.width)
    h = run_blocks(self.blocks, h, s.remat)
    return self.to_latent(self.norm(h)).reshape(x.shape[0], s.grid, s.grid, s.latent_dim)


class ViTDecoder(nnx.Module):
  def __init__(self, shape: ViTShape, rngs: nnx.Rngs):
    shape.check()
    self.shape = shape
    self.from_latent = nnx.Linear(shape.latent_dim, shape.width, rngs=rngs)
    self.blocks = nnx.List([EncoderBlock(shape.width, shape.heads, shape.mlp_ratio, rngs=rngs)
                            for _ in range(shape.depth)])
    self.norm = nnx.LayerNorm(shape.width, rngs=rngs)
    self.to_pixels = nnx.Linear(shape.width, shape.patch_size**2 * shape.channels, rngs=rngs)

  def features(self, z: Array) -> Array:
    """Everything before `to_pixels` (normalised tokens)."""
    s = self.shape
    h = self.from_latent(z.reshape(z.shape[0], s.grid * s.grid, s.latent_dim))
    h = h + sincos_2d(s.grid, s.grid, s.width)
    return self.norm(run_blocks(self.blocks, h, s.remat))

  def last_layer(self, h: Array, kernel: Array) -> Array:
    """`to_pixels` with its kernel given, then unpatchify (for the adaptive GAN weight)."""
    s = self.shape
    pixels = h @ kernel.astype(h.dtype) + self.to_pixels.bias[...]
    return unpatchify(pixels, s.patch_size, s.image_size, s.image_size)

  @property
  def last_kernel(self) -> Array:
    return self.to_pixels.kernel[...]

  def __call__(self, z: Array) -> Array:
    """Latents (B, H/p, W/p, latent_dim) -> images (B, H, W, C)."""
    return self.last_layer(self.features(z), self.last_kernel)
