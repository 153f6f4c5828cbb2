"""A causal 3D CNN video tokenizer in the shape of MAGVIT-v2's (Yu et al. 2023,
"Language Model Beats Diffusion: Tokenizer is Key to Visual Generation",
https://arxiv.org/abs/2310.05737, sec. 3.2), channels last: clips (B, T, H, W, C).

Causal: every temporal convolution pads only in front (by repeating the first frame), so
an output frame never sees a later input frame, and temporal downsampling is a stride-2
causal convolution whose first output sees the first frame alone. A clip of 1 + 4k frames
(temporal factor 4) gives 1 + k latent frames, and an image is a 1-frame clip: one model
tokenizes both (joint image-video tokenization). Group norms normalise each frame on its
own (statistics over a clip's frames would let frame 0 see the rest).

Encoder: conv_in -> per level `num_res_blocks` 3D residual blocks and, except at the
last level, a strided causal conv (spatial x2, temporal x2 where `temporal_downsample`)
-> two mid blocks -> norm, swish, 1x1x1 conv to `embed_dim` (MAGVIT-v2: 18 for LFQ at 2^18
codes). Decoder: mirrors it with depth-to-space upsampling (a causal conv to s_t s^2 times
the channels, rearranged; the first frame's temporal duplicate dropped so 1 + k frames
become 1 + 2k), and adaptive group norms whose scale and shift come from the quantized
latent of the same time block (MAGVIT-v2's decoder conditioning).

Clips of any length: `encode` repeats the last frame up to 1 + 4k frames; `decode(indices,
num_frames)` trims back. Any quantizer of vqlab.quantizers sits on the latent grid.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.models.vqgan import check_sizes
from vqlab.nn.transformer import check_remat, run_blocks
from vqlab.quantizers.core import QuantizerOutput

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CausalShape:
  """Sizes of the causal 3D encoder / decoder; `resolution` is the training frame side."""
  channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 2, 4)
  num_res_blocks: int = 4
  # per downsampling transition (len(channel_mult) - 1): also halve time there
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  embed_dim: int = 18
  resolution: int = 128
  in_channels: int = 3
  norm_groups: int = 32
  adaptive_norm: bool = True  # the decoder's norms conditioned on the quantized latent
  remat: str = "none"  # "block" / "full": each residual block recomputed in the backward

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temporal_downsample)

  def check(self) -> None:
    if len(self.temporal_downsample) != len(self.channel_mult) - 1:
      raise ValueError(f"temporal_downsample: expected {len(self.channel_mult) - 1} flags "
                       f"(one per downsampling of channel_mult={self.channel_mult}), got "
                       f"{self.temporal_downsample}")
    check_sizes(self, ("channels", "num_res_blocks", "embed_dim", "resolution", "in_channels"))
    check_remat(self.remat)


# MAGVIT-v2's video tokenizer (f8, 4x in time, 2^18 LFQ codes) and a CPU-sized one.
MAGVIT2 = CausalShape()
TINY = CausalShape(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                   temporal_downsample=(True, True), embed_dim=8, resolution=32, in_channels=1,
                   norm_groups=8)


def latent_frames(num_frames: int, temporal_factor: int) -> int:
  """Latent frames of a clip of `num_frames`: the first frame alone, then one per
  `temporal_factor` frames (a partial last block counts)."""
  if num_frames < 1:
    raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
  return 1 + math.ceil((num_frames - 1) / temporal_factor)


def decoded_frames(num_latent: int, temporal_factor: int) -> int:
  """Frames the decoder gives for `num_latent` latent frames (before trimming)."""
  return 1 + (num_latent - 1) * temporal_factor


def _causal_pad(x: Array, frames: int) -> Array:
  """`frames` copies of the first frame in front (time is axis 1)."""
  return x if frames == 0 else jnp.concatenate([jnp.repeat(x[:, :1], frames, axis=1), x], 1)


class CausalConv3d(nnx.Module):
  """A (k_t, k, k) convolution padded `k_t - 1` frames in front (repeating the first) and
  `k // 2` on each spatial side; stride (s_t, s, s). On CPU it runs as k_t 2D convolutions
  of time-shifted frames, summed: the same numbers, ~3x faster there than XLA's 3D one."""

  def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], rngs: nnx.Rngs,
               stride: tuple[int, int] = (1, 1)):
    kt, k = (kernel, kernel) if isinstance(kernel, int) else kernel
    self.time_pad, self.stride = kt - 1, stride
    # the parameters (and the compute dtype vqlab.nn.precision sets) live in an nnx.Conv
    self.conv = nnx.Conv(cin, cout, (kt, k, k), strides=(stride[0], stride[1], stride[1]),
                         padding=((0, 0), (k // 2, k // 2), (k // 2, k // 2)), rngs=rngs,
                         kernel_metadata={"logical_axes": (None, None, None, "conv_in",
                                                           "conv_out")},
                         bias_metadata={"logical_axes": ("conv_out",)})

  def __call__(self, x: Array) -> Array:
    return self.with_kernel(x, self.conv.kernel[...])

  def with_kernel(self, x: Array, kernel: Array) -> Array:
    """The convolution with `kernel` given (the adaptive GAN weight differentiates it)."""
    dtype = self.conv.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    x, kernel = _causal_pad(x.astype(dtype), self.time_pad), kernel.astype(dtype)
    st, s = self.stride
    padding = self.conv.padding[1:]
    if jax.default_backend() != "cpu":
      y = jax.lax.conv_general_dilated(x, kernel, (st, s, s), ((0, 0), *padding),
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    else:
      b, kt = x.shape[0], kernel.shape[0]
      frames = (x.shape[1] - kt) // st + 1
      y = 0
      for i in range(kt):  # tap i reads input frames i, i + st, ..., one per output frame
        taps = x[:, i:i + st * (frames - 1) + 1:st].reshape(-1, *x.shape[2:])
        y = y + jax.lax.conv_general_dilated(taps, kernel[i], (s, s), padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
      y = y.reshape(b, frames, *y.shape[1:])
    return y + self.conv.bias[...].astype(dtype)


class FrameGroupNorm(nnx.Module):
  """GroupNorm over each frame's (H, W, C) alone: a clip's statistics would break causality.
  With `cond_dim`, MAGVIT-v2's adaptive group norm: x (1 + gamma) + beta, gamma and beta
  linear in the spatial mean of the quantized latent of each frame's time block (zero
  initialised, so training starts from the plain norm)."""

  def __init__(self, c: int, groups: int, rngs: nnx.Rngs, cond_dim: int = 0):
    self.norm = nnx.GroupNorm(c, num_groups=groups, epsilon=1e-6, rngs=rngs)
    self.cond = nnx.data(nnx.Linear(cond_dim, 2 * c, kernel_init=nnx.initializers.zeros,
                                    rngs=rngs) if cond_dim else None)

  def __call__(self, x: Array, z: Array | None = None) -> Array:
    b, t = x.shape[:2]
    y = self.norm(x.reshape(b * t, *x.shape[2:])).reshape(x.shape)
    if self.cond is None:
      return y
    gamma, beta = jnp.split(self.cond(_frame_condition(z, t)), 2, axis=-1)
    return y * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def _frame_condition(z: Array, frames: int) -> Array:
  """(B, frames, D): per frame, the spatial mean of the latent frame of its time block
  (frame 0 -> latent 0; frames r(j - 1) + 1 .. r j -> latent j, r = frames per latent)."""
  pooled = jnp.mean(z, axis=(2, 3))
  tz = z.shape[1]
  if tz == frames:
    return pooled
  r = (frames - 1) // max(tz - 1, 1)
  index = (jnp.arange(frames) + r - 1) // r
  return pooled[:, index]


class ResBlock3D(nnx.Module):
  def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs, cond_dim: int = 0):
    self.norm1 = FrameGroupNorm(cin, groups, rngs, cond_dim)
    self.conv1 = CausalConv3d(cin, cout, 3, rngs)
    self.norm2 = FrameGroupNorm(cout, groups, rngs, cond_dim)
    self.conv2 = CausalConv3d(cout, cout, 3, rngs)
    self.shortcut = nnx.data(CausalConv3d(cin, cout, 1, rngs) if cin != cout else None)

  def __call__(self, x: Array, z: Array | None = None) -> Array:
    h = self.conv1(nnx.swish(self.norm1(x, z)))
    h = self.conv2(nnx.swish(self.norm2(h, z)))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class Downsample3D(nnx.Module):
  """A strided causal 3x3x3 conv: space / 2, and time (1 + 2k -> 1 + k) when `temporal`."""

  def __init__(self, c: int, temporal: bool, rngs: nnx.Rngs):
    self.conv = CausalConv3d(c, c, 3, rngs, stride=(2 if temporal else 1, 2))

  def __call__(self, x: Array, z: Array | None = None) -> Array:
    return self.conv(x)


class DepthToSpaceUpsample(nnx.Module):
  """A causal conv to s_t * 4 times the channels, rearranged to space x2 (and time x2 when
  `temporal`, dropping the first frame's duplicate: 1 + k frames -> 1 + 2k)."""

  def __init__(self, c: int, temporal: bool, rngs: nnx.Rngs):
    self.st = 2 if temporal else 1
    self.conv = CausalConv3d(c, c * self.st * 4, 3, rngs)

  def __call__(self, x: Array, z: Array | None = None) -> Array:
    b, t, h, w, c = x.shape
    y = self.conv(x).reshape(b, t, h, w, self.st, 2, 2, c)
    y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * self.st, 2 * h, 2 * w, c)
    return y[:, self.st - 1:]


class Encoder3D(nnx.Module):
  def __init__(self, shape: CausalShape, rngs: nnx.Rngs):
    shape.check()
    g, ch = shape.norm_groups, shape.channels
    self.conv_in = CausalConv3d(shape.in_channels, ch, 3, rngs)
    layers, cin = [], ch
    for i, mult in enumerate(shape.channel_mult):
      for _ in range(shape.num_res_blocks):
        layers.append(ResBlock3D(cin, ch * mult, g, rngs))
        cin = ch * mult
      if i != len(shape.channel_mult) - 1:
        layers.append(Downsample3D(cin, shape.temporal_downsample[i], rngs))
    layers += [ResBlock3D(cin, cin, g, rngs), ResBlock3D(cin, cin, g, rngs)]
    self.layers = nnx.List(layers)
    self.norm_out = FrameGroupNorm(cin, g, rngs)
    self.conv_out = CausalConv3d(cin, shape.embed_dim, 1, rngs)
    self.remat = shape.remat

  def __call__(self, x: Array) -> Array:
    h = run_blocks(self.layers, self.remat, self.conv_in(x))
    return self.conv_out(nnx.swish(self.norm_out(h)))


class Decoder3D(nnx.Module):
  def __init__(self, shape: CausalShape, rngs: nnx.Rngs):
    shape.check()
    g, ch = shape.norm_groups, shape.channels
    cond = shape.embed_dim if shape.adaptive_norm else 0
    cin = ch * shape.channel_mult[-1]
    self.conv_in = CausalConv3d(shape.embed_dim, cin, 3, rngs)
    layers = [ResBlock3D(cin, cin, g, rngs, cond), ResBlock3D(cin, cin, g, rngs, cond)]
    for i in reversed(range(len(shape.channel_mult))):
      for _ in range(shape.num_res_blocks):
        layers.append(ResBlock3D(cin, ch * shape.channel_mult[i], g, rngs, cond))
        cin = ch * shape.channel_mult[i]
      if i != 0:
        layers.append(DepthToSpaceUpsample(cin, shape.temporal_downsample[i - 1], rngs))
    self.layers = nnx.List(layers)
    self.norm_out = FrameGroupNorm(cin, g, rngs, cond)
    self.conv_out = CausalConv3d(cin, shape.in_channels, 3, rngs)
    self.remat = shape.remat

  def features(self, z: Array) -> Array:
    """Everything before `conv_out`: the adaptive GAN weight differentiates the last layer."""
    h = run_blocks(self.layers, self.remat, self.conv_in(z), z)
    return nnx.swish(self.norm_out(h, z))

  def last_layer(self, h: Array, kernel: Array) -> Array:
    """`conv_out` with its kernel given, on clip features or an image's (B, H, W, C)."""
    if h.ndim == 4:
      return self.conv_out.with_kernel(h[:, None], kernel)[:, 0]
    return self.conv_out.with_kernel(h, kernel)

  @property
  def last_kernel(self) -> Array:
    return self.conv_out.conv.kernel[...]

  def __call__(self, z: Array) -> Array:
    return self.conv_out(self.features(z))


class VideoTokenizer(nnx.Module):
  """Causal 3D encoder -> any quantizer -> decoder, for clips (B, T, H, W, C) of any length
  and images (B, H, W, C) (1-frame clips; their outputs keep the image shape)."""

  def __init__(self, shape: CausalShape, quantizer: nnx.Module, rngs: nnx.Rngs):
    self.shape = shape
    self.encoder, self.quantizer, self.decoder = Encoder3D(shape, rngs), quantizer, Decoder3D(
        shape, rngs)
    self.image_size, self.channels = shape.resolution, shape.in_channels
    self.latent_size = shape.resolution // shape.downsample_factor  # tokens per side
    self.token_shape = (self.latent_size, self.latent_size)  # per latent frame
    self.temporal_factor = shape.temporal_factor

  def _as_clip(self, x: Array) -> tuple[Array, bool]:
    want = (self.image_size, self.image_size, self.channels)
    if x.ndim not in (4, 5) or tuple(x.shape[-3:]) != want:
      raise ValueError(f"clips: expected shape (B, T, {want[0]}, {want[1]}, {want[2]}) or "
                       f"images (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
    return (x[:, None], True) if x.ndim == 4 else (x, False)

  def _pad_frames(self, x: Array) -> Array:
    """Repeat the last frame up to 1 + k * temporal_factor frames."""
    t = x.shape[1]
    full = decoded_frames(latent_frames(t, self.temporal_factor), self.temporal_factor)
    return x if full == t else jnp.concatenate([x, jnp.repeat(x[:, -1:], full - t, 1)], 1)

  def _encode(self, x: Array) -> tuple[QuantizerOutput, bool, int]:
    clip, image = self._as_clip(x)
    return self.quantizer(self.encoder(self._pad_frames(clip))), image, clip.shape[1]

  def encode(self, x: Array) -> QuantizerOutput:
    """Clips (B, T, H, W, C) in [-1, 1] -> quantizer output on the (1 + ceil((T - 1) / 4),
    h, w) latent grid; images (B, H, W, C) -> the (h, w) grid of their 1-frame clips."""
    q, image, _ = self._encode(x)
    return _first_frame(q) if image else q

  def decode(self, indices: Array, num_frames: int | None = None) -> Array:
    """Indices as `encode` gives them -> clips (trimmed to `num_frames` when given) or
    images, float32 whatever the compute dtype."""
    z = self.quantizer.decode(indices)
    image = z.ndim == 4  # (B, h, w, D): an image's grid
    y = self.decoder(z[:, None] if image else z).astype(jnp.float32)
    return y[:, 0] if image else y[:, :num_frames]

  def features(self, x: Array) -> tuple[Array, QuantizerOutput]:
    """The decoder's features before its last layer (frames trimmed to the input's; image
    shape for images) and the quantizer output, as ImageTokenizer.features. Trimming
    before the causal last layer changes none of the frames kept."""
    q, image, t = self._encode(x)
    h = self.decoder.features(q.quantized)
    return (h[:, 0], _first_frame(q)) if image else (h[:, :t], q)

  def __call__(self, x: Array) -> tuple[Array, QuantizerOutput]:
    q, image, t = self._encode(x)
    y = self.decoder(q.quantized).astype(jnp.float32)
    return (y[:, 0], _first_frame(q)) if image else (y[:, :t], q)


def _first_frame(q: QuantizerOutput) -> QuantizerOutput:
  """A 1-frame clip's quantizer output in image shape."""
  return q.replace(quantized=q.quantized[:, 0], indices=q.indices[:, 0])
