"""PatchGAN discriminator (Isola et al. 2017, https://arxiv.org/abs/1611.07004) in
taming-transformers' `NLayerDiscriminator` shape: 4x4 convs with padding 1, stride 2 for
the first `n_layers`, then two stride-1 convs; LeakyReLU(0.2); BatchNorm after every
conv but the first and the last. Images (B, H, W, C) -> patch logits (B, h, w, 1);
256 px with n_layers = 3 gives 30 x 30 patches. `video=True` is its 3D form for clips
(B, T, H, W, C) -> (B, t, h, w, 1) (the 3D PatchGAN video tokenizers train with): the
kernels take 3 frames (padding 1), with time strided where space is.
"""

from __future__ import annotations

import jax
from flax import nnx

NORMS = ("batch", "none")


class PatchGAN(nnx.Module):

  def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3, *,
               norm: str = "batch", video: bool = False, rngs: nnx.Rngs):
    if norm not in NORMS:
      raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    if n_layers < 1:
      raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
    time = ((3,), (1,)) if video else ((), ())  # (kernel, padding) along time
    conv = lambda i, o, s, bias: nnx.Conv(
        i, o, time[0] + (4, 4), strides=(s,) * (len(time[0]) + 2),
        padding=tuple((p, p) for p in time[1]) + ((1, 1), (1, 1)), use_bias=bias, rngs=rngs)
    widths = [width * min(2**i, 8) for i in range(n_layers + 1)]
    self.first = conv(in_channels, width, 2, True)
    self.convs = nnx.List([conv(widths[i - 1], widths[i], 2 if i < n_layers else 1,
                                norm == "none") for i in range(1, n_layers + 1)])
    self.norms = nnx.List([nnx.BatchNorm(w, momentum=0.9, epsilon=1e-5, rngs=rngs)
                           for w in widths[1:]] if norm == "batch" else [])
    self.last = conv(widths[-1], 1, 1, True)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = nnx.leaky_relu(self.first(x), 0.2)
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.norms:
        h = self.norms[i](h)
      h = nnx.leaky_relu(h, 0.2)
    return self.last(h)
