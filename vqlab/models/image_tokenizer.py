"""An image tokenizer: encoder -> any quantizer of vqlab.quantizers -> decoder.

`build(arch, shape, quantizer_kind, quantizer_args)` assembles the convolutional VQGAN
(`arch="vqgan"`, shape fields of `VQGANShape`), ViT-VQGAN (`arch="vit"`, `ViTShape`) or
the causal 3D video tokenizer that also takes images (`arch="causal3d"`, `CausalShape`:
a `causal3d.VideoTokenizer`, same methods) or the 1D TiTok (`arch="titok"`, `TiTokShape`:
a `titok.TiTok`, same methods, K tokens an image) around a quantizer built by
`vqlab.quantizers.factory`. `token_shape` is the index layout of one image: (h, w) on a
latent grid, (K,) for a 1D tokenizer. Images are channels last in
[-1, 1]; `encode` gives the quantizer's output (indices included), `decode` turns
indices back into images without the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.models import causal3d, titok, vit_vqgan, vqgan
from vqlab.models.tokenizer_base import TokenizerBase
from vqlab.quantizers import factory
from vqlab.quantizers.core import QuantizerOutput

Array = jax.Array

# arch -> (shape class, encoder, decoder, the shape field naming the latent width)
ARCHS = {
    "vqgan": (vqgan.VQGANShape, vqgan.Encoder, vqgan.Decoder, "embed_dim"),
    "vit": (vit_vqgan.ViTShape, vit_vqgan.ViTEncoder, vit_vqgan.ViTDecoder, "latent_dim"),
    "causal3d": (causal3d.CausalShape, causal3d.Encoder3D, causal3d.Decoder3D, "embed_dim"),
    "titok": (titok.TiTokShape, titok.TiTokEncoder, titok.TiTokDecoder, "token_dim"),
}
VIDEO_ARCHS = ("causal3d",)  # take clips (B, T, H, W, C) as well as images


class ImageTokenizer(TokenizerBase):

  def __init__(self, encoder: nnx.Module, quantizer: nnx.Module, decoder: nnx.Module,
               image_size: int, channels: int, downsample: int):
    self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
    self.image_size, self.channels = image_size, channels
    self.latent_size = image_size // downsample  # tokens per side
    self.token_shape = (self.latent_size, self.latent_size)

  def features(self, x: Array) -> tuple[Array, QuantizerOutput]:
    """The decoder's features before its last layer, and the quantizer output: the
    trainer applies `decoder.last_layer` itself so it can weigh the GAN loss there."""
    q = self.encode(x)
    return self.decoder.features(q.quantized), q

  def __call__(self, x: Array) -> tuple[Array, QuantizerOutput]:
    q = self.encode(x)
    return self.decoder(q.quantized).astype(jnp.float32), q


def make_shape(arch: str, shape: Mapping[str, Any]):
  """The arch's shape dataclass from a dict; unknown fields are an error."""
  if arch not in ARCHS:
    raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
  cls = ARCHS[arch][0]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(shape) - fields)
  if unknown:
    raise ValueError(f"shape: unknown fields {unknown} for arch {arch!r}; expected some of "
                     f"{sorted(fields)}")
  tuples = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in shape.items()}
  return cls(**tuples)


def image_size(shape) -> int:
  """The side of the images a shape dataclass takes."""
  return shape.resolution if hasattr(shape, "resolution") else shape.image_size


def build(arch: str, shape: Mapping[str, Any], quantizer_kind: str,
          quantizer_args: Mapping[str, Any], *, rngs: nnx.Rngs,
          teacher: ImageTokenizer | None = None, stage: int = 1
          ) -> ImageTokenizer | causal3d.VideoTokenizer | titok.TiTok:
  """`teacher`, `stage`: a TiTok with the "proxy" decoder (its teacher's codes; stage 1 or 2)."""
  shape = make_shape(arch, shape)
  if arch == "titok":
    quantizer = factory.build(quantizer_kind, shape.token_dim, rngs=rngs, **dict(quantizer_args))
    return titok.TiTok(shape, quantizer, rngs=rngs, teacher=teacher, stage=stage)
  _, encoder_cls, decoder_cls, latent_field = ARCHS[arch]
  if arch == "causal3d":
    quantizer = factory.build(quantizer_kind, shape.embed_dim, rngs=rngs, **dict(quantizer_args))
    return causal3d.VideoTokenizer(shape, quantizer, rngs)
  encoder = encoder_cls(shape, rngs)
  quantizer = factory.build(quantizer_kind, getattr(shape, latent_field), rngs=rngs,
                            **dict(quantizer_args))
  decoder = decoder_cls(shape, rngs)
  if arch == "vqgan":
    return ImageTokenizer(encoder, quantizer, decoder, shape.resolution, shape.in_channels,
                          shape.downsample_factor)
  return ImageTokenizer(encoder, quantizer, decoder, shape.image_size, shape.channels,
                        shape.patch_size)
