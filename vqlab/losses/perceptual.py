"""LPIPS perceptual distance (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) with
VGG16 features, as richzhang/PerceptualSimilarity `lpips` v0.1:

  scale (x - shift) / scale for images in [-1, 1]; VGG16 features after relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3; each unit-normalised over channels; squared
  difference; a non-negative 1x1 "lin" layer per stage; spatial mean; sum over stages.

Weights come from the published files the user points to, converted once:

  vqlab convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg16.npz

(`--vgg`: torchvision's VGG16 state dict, keys `features.N.weight/bias`; `--lin`: the
LPIPS linear layers, keys `linK.model.1.weight`.) Loading the .npz needs no PyTorch.
"""

from __future__ import annotations

import os

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

# (in, out) channels of VGG16's 13 convs; a stage ends at the listed conv index.
VGG16_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
STAGE_ENDS = (1, 3, 6, 9, 12)
# torchvision `features` indices of those convs (ReLUs and max-pools sit between).
TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class LPIPS(nnx.Module):
  """LPIPS-VGG16. Random weights unless loaded with `load_npz` (tests use random ones)."""

  def __init__(self, rngs: nnx.Rngs):
    self.convs = nnx.List([nnx.Conv(i, o, (3, 3), padding="SAME", rngs=rngs)
                           for i, o in VGG16_CONVS])
    self.lins = nnx.List([nnx.Param(jnp.abs(jax.random.normal(rngs.params(),
                                                              (VGG16_CONVS[e][1],))) * 0.1)
                          for e in STAGE_ENDS])

  def features(self, x: Array) -> list[Array]:
    h = (x.astype(jnp.float32) - SHIFT) / SCALE
    stages = []
    for i, conv in enumerate(self.convs):
      h = jax.nn.relu(conv(h))
      if i in STAGE_ENDS:
        stages.append(h)
        if i != STAGE_ENDS[-1]:
          h = flax.linen.max_pool(h, (2, 2), strides=(2, 2))
    return stages

  def __call__(self, x: Array, y: Array) -> Array:
    """Distance per image pair, (B,), for images (B, H, W, 3) in [-1, 1]."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x, y: expected two (B, H, W, 3) images, got {x.shape} and {y.shape}")
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f * f, -1, keepdims=True)) + 1e-10)
    total = 0.0
    for fx, fy, lin in zip(self.features(x), self.features(y), self.lins):
      diff = jnp.square(unit(fx) - unit(fy))
      total = total + jnp.mean(diff @ lin[...], axis=(1, 2))
    return total

  def load_npz(self, path: str) -> "LPIPS":
    """Load weights converted by `convert`; names and shapes are checked."""
    if not os.path.exists(path):
      raise FileNotFoundError(f"path: expected a converted LPIPS .npz file, got {path!r}")
    with np.load(path) as f:
      arrays = dict(f)
    for i, conv in enumerate(self.convs):
      for name, var in (("kernel", conv.kernel), ("bias", conv.bias)):
        _assign(var, arrays, f"conv{i}_{name}")
    for k, lin in enumerate(self.lins):
      _assign(lin, arrays, f"lin{k}")
    return self


def _assign(var: nnx.Variable, arrays: dict, key: str) -> None:
  if key not in arrays:
    raise ValueError(f"{key}: missing from the LPIPS weights file")
  if arrays[key].shape != var[...].shape:
    raise ValueError(f"{key}: expected shape {var[...].shape}, got {arrays[key].shape}")
  var[...] = jnp.asarray(arrays[key], jnp.float32)
