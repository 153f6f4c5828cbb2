"""Convolutional VQGAN encoder / decoder in the taming-transformers shape
(Esser et al. 2021, https://arxiv.org/abs/2012.09841; CompVis/taming-transformers
`diffusionmodules/model.py`), channels last.

Encoder: conv_in -> per level `num_res_blocks` residual blocks (+ attention at
`attn_resolutions`) and a stride-2 downsample (padding (0, 1) as taming) except at the
last level -> mid (res, attn, res) -> GroupNorm, swish, conv_out -> quant_conv to
`embed_dim` (1x1 as taming, 3x3 in VAR's VQVAE).
Decoder mirrors it with `num_res_blocks + 1` blocks per level and nearest-neighbour x2
upsampling + conv. Any quantizer of vqlab.quantizers sits between them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.nn.transformer import check_remat, run_blocks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VQGANShape:
  """Sizes of the encoder / decoder. `resolution` is the training image side."""
  channels: int = 128
  channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  z_channels: int = 256
  embed_dim: int = 256
  resolution: int = 256
  in_channels: int = 3
  norm_groups: int = 32
  dropout: float = 0.0
  quant_conv_kernel: int = 1  # taming: 1x1 quant / post-quant convs; VAR's VQVAE: 3x3
  # training memory: "block" / "full" recompute each residual / attention block in the
  # backward pass (jax.checkpoint; vqlab.nn.transformer.REMAT_POLICIES)
  remat: str = "none"

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  def check(self) -> None:
    check_sizes(self, ("channels", "num_res_blocks", "z_channels", "embed_dim", "resolution",
                       "quant_conv_kernel"))
    check_remat(self.remat)


def check_sizes(shape, positive: tuple[str, ...]) -> None:
  """A conv tokenizer's shape (VQGAN's, the causal 3D one's): the `positive` fields >= 1,
  `norm_groups` dividing every level's width, `resolution` a multiple of the downsampling."""
  for name in positive:
    if getattr(shape, name) < 1:
      raise ValueError(f"{name}: expected >= 1, got {getattr(shape, name)}")
  widths = [shape.channels * m for m in shape.channel_mult]  # every GroupNorm's width
  bad = [w for w in widths if w % shape.norm_groups]
  if bad:
    raise ValueError(f"norm_groups: expected a divisor of every width {widths}, got "
                     f"{shape.norm_groups}")
  if shape.resolution % shape.downsample_factor:
    raise ValueError(f"resolution: expected a multiple of {shape.downsample_factor}, got "
                     f"{shape.resolution}")


# The paper's sizes: taming's f16 ImageNet VQGAN, its f8 variant, and a CPU-sized one.
F16 = VQGANShape()
F8 = VQGANShape(channel_mult=(1, 2, 2, 4), attn_resolutions=(32,), z_channels=4, embed_dim=4)
TINY = VQGANShape(channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  z_channels=32, embed_dim=16, resolution=32, norm_groups=8)


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, stride: int = 1, padding="SAME"):
  """Kernels name their channel axes for vqlab.parallel's rules (conv_in / conv_out)."""
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=padding, rngs=rngs,
                  kernel_metadata={"logical_axes": (None, None, "conv_in", "conv_out")},
                  bias_metadata={"logical_axes": ("conv_out",)})


class ResnetBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, groups: int, dropout: float, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(cin, num_groups=groups, epsilon=1e-6, rngs=rngs)
    self.conv1 = _conv(cin, cout, 3, rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=groups, epsilon=1e-6, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.conv2 = _conv(cout, cout, 3, rngs)
    self.shortcut = nnx.data(_conv(cin, cout, 1, rngs) if cin != cout else None)

  def __call__(self, x: Array) -> Array:
    h = self.conv1(nnx.swish(self.norm1(x)))
    h = self.conv2(self.dropout(nnx.swish(self.norm2(h))))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class AttnBlock(nnx.Module):
  """Single-head self-attention over all positions, with 1x1 q, k, v and output convs."""

  def __init__(self, c: int, groups: int, rngs: nnx.Rngs):
    self.norm = nnx.GroupNorm(c, num_groups=groups, epsilon=1e-6, rngs=rngs)
    self.q, self.k, self.v, self.proj = (_conv(c, c, 1, rngs) for _ in range(4))

  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    y = self.norm(x)
    q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
    # Logits and softmax in float32 whatever the compute dtype.
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    attn = jax.nn.softmax(logits * c**-0.5, axis=-1).astype(v.dtype)
    return x + self.proj(jnp.einsum("bqk,bkc->bqc", attn, v).reshape(b, h, w, c))


class Downsample(nnx.Module):
  """Stride-2 3x3 conv with taming's asymmetric padding (0 before, 1 after)."""

  def __init__(self, c: int, rngs: nnx.Rngs):
    self.conv = _conv(c, c, 3, rngs, stride=2, padding=((0, 1), (0, 1)))

  def __call__(self, x: Array) -> Array:
    return self.conv(x)


class Upsample(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs):
    self.conv = _conv(c, c, 3, rngs)

  def __call__(self, x: Array) -> Array:
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Encoder(nnx.Module):
  def __init__(self, shape: VQGANShape, rngs: nnx.Rngs):
    shape.check()
    g, ch = shape.norm_groups, shape.channels
    self.conv_in = _conv(shape.in_channels, ch, 3, rngs)
    layers, res, cin = [], shape.resolution, ch
    for i, mult in enumerate(shape.channel_mult):
      cout = ch * mult
      for _ in range(shape.num_res_blocks):
        layers.append(ResnetBlock(cin, cout, g, shape.dropout, rngs))
        cin = cout
        if res in shape.attn_resolutions:
          layers.append(AttnBlock(cin, g, rngs))
      if i != len(shape.channel_mult) - 1:
        layers.append(Downsample(cin, rngs))
        res //= 2
    layers += [ResnetBlock(cin, cin, g, shape.dropout, rngs), AttnBlock(cin, g, rngs),
               ResnetBlock(cin, cin, g, shape.dropout, rngs)]
    self.layers = nnx.List(layers)
    self.norm_out = nnx.GroupNorm(cin, num_groups=g, epsilon=1e-6, rngs=rngs)
    self.conv_out = _conv(cin, shape.z_channels, 3, rngs)
    self.quant_conv = _conv(shape.z_channels, shape.embed_dim, shape.quant_conv_kernel, rngs)
    self.remat, self.keep_state = shape.remat, shape.dropout > 0

  def __call__(self, x: Array) -> Array:
    h = run_blocks(self.layers, self.remat, self.conv_in(x), keep_state=self.keep_state)
    return self.quant_conv(self.conv_out(nnx.swish(self.norm_out(h))))


class Decoder(nnx.Module):
  def __init__(self, shape: VQGANShape, rngs: nnx.Rngs):
    shape.check()
    g, ch = shape.norm_groups, shape.channels
    cin = ch * shape.channel_mult[-1]
    res = shape.resolution // shape.downsample_factor
    self.post_quant_conv = _conv(shape.embed_dim, shape.z_channels, shape.quant_conv_kernel, rngs)
    self.conv_in = _conv(shape.z_channels, cin, 3, rngs)
    layers = [ResnetBlock(cin, cin, g, shape.dropout, rngs), AttnBlock(cin, g, rngs),
              ResnetBlock(cin, cin, g, shape.dropout, rngs)]
    for i in reversed(range(len(shape.channel_mult))):
      cout = ch * shape.channel_mult[i]
      for _ in range(shape.num_res_blocks + 1):
        layers.append(ResnetBlock(cin, cout, g, shape.dropout, rngs))
        cin = cout
        if res in shape.attn_resolutions:
          layers.append(AttnBlock(cin, g, rngs))
      if i != 0:
        layers.append(Upsample(cin, rngs))
        res *= 2
    self.layers = nnx.List(layers)
    self.norm_out = nnx.GroupNorm(cin, num_groups=g, epsilon=1e-6, rngs=rngs)
    self.conv_out = _conv(cin, shape.in_channels, 3, rngs)
    self.remat, self.keep_state = shape.remat, shape.dropout > 0

  def features(self, z: Array) -> Array:
    """Everything before `conv_out`: the adaptive GAN weight differentiates the last layer."""
    h = run_blocks(self.layers, self.remat, self.conv_in(self.post_quant_conv(z)),
                   keep_state=self.keep_state)
    return nnx.swish(self.norm_out(h))

  def last_layer(self, h: Array, kernel: Array) -> Array:
    """`conv_out` with its kernel given: the adaptive GAN weight differentiates it."""
    y = jax.lax.conv_general_dilated(h, kernel.astype(h.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.conv_out.bias[...]

  @property
  def last_kernel(self) -> Array:
    return self.conv_out.kernel[...]

  def __call__(self, z: Array) -> Array:
    return self.conv_out(self.features(z))
