"""InceptionV3 pool3 features for FID / rFID, as pytorch-fid's `InceptionV3([3])` with
the TF-FID weights (`pt_inception-2015-12-05-6726825d.pth`): bilinear resize to 299
(align_corners=False, no antialiasing), [0, 1] -> [-1, 1], the FID variant of the
blocks (average pools that do not count padding; max pool in the last block), global
average pool -> 2048 features; the checkpoint's 1008-way `fc` layer gives the logits of
the Inception Score (`logits`).

The network is written once against a small `ops` interface (conv + batch norm + ReLU,
pools, concat), so the same topology runs in JAX (`JaxOps`, NHWC) and, in the tests,
in PyTorch ops on the original state dict. Weights are converted once
(vqlab/convert/inception.py):

  vqlab convert inception --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The converter folds each conv's batch norm (eps 1e-3) into a per-channel scale and bias.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vqlab.eval.layer_weights import check_layers, read_layers

Array = jax.Array
BN_EPS = 1e-3
FEATURES = 2048
CLASSES = 1008  # the TF Inception graph's classifier (1000 ImageNet classes + unused)


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- topology


def _block_a(ops, name, x, pool_features):
  b1 = ops.conv(f"{name}.branch1x1", x, 64, 1)
  b5 = ops.conv(f"{name}.branch5x5_2", ops.conv(f"{name}.branch5x5_1", x, 48, 1), 64, 5, pad=2)
  b3 = ops.conv(f"{name}.branch3x3dbl_1", x, 64, 1)
  b3 = ops.conv(f"{name}.branch3x3dbl_2", b3, 96, 3, pad=1)
  b3 = ops.conv(f"{name}.branch3x3dbl_3", b3, 96, 3, pad=1)
  bp = ops.conv(f"{name}.branch_pool", ops.avg_pool(x), pool_features, 1)
  return ops.concat([b1, b5, b3, bp])


def _block_b(ops, name, x):
  b3 = ops.conv(f"{name}.branch3x3", x, 384, 3, stride=2)
  bd = ops.conv(f"{name}.branch3x3dbl_1", x, 64, 1)
  bd = ops.conv(f"{name}.branch3x3dbl_2", bd, 96, 3, pad=1)
  bd = ops.conv(f"{name}.branch3x3dbl_3", bd, 96, 3, stride=2)
  return ops.concat([b3, bd, ops.max_pool(x, stride=2, pad=0)])


def _block_c(ops, name, x, c7):
  b1 = ops.conv(f"{name}.branch1x1", x, 192, 1)
  b7 = ops.conv(f"{name}.branch7x7_1", x, c7, 1)
  b7 = ops.conv(f"{name}.branch7x7_2", b7, c7, (1, 7), pad=(0, 3))
  b7 = ops.conv(f"{name}.branch7x7_3", b7, 192, (7, 1), pad=(3, 0))
  bd = ops.conv(f"{name}.branch7x7dbl_1", x, c7, 1)
  for i, (k, p, c) in enumerate([((7, 1), (3, 0), c7), ((1, 7), (0, 3), c7),
                                 ((7, 1), (3, 0), c7), ((1, 7), (0, 3), 192)], start=2):
    bd = ops.conv(f"{name}.branch7x7dbl_{i}", bd, c, k, pad=p)
  bp = ops.conv(f"{name}.branch_pool", ops.avg_pool(x), 192, 1)
  return ops.concat([b1, b7, bd, bp])


def _block_d(ops, name, x):
  b3 = ops.conv(f"{name}.branch3x3_2", ops.conv(f"{name}.branch3x3_1", x, 192, 1), 320, 3,
                stride=2)
  b7 = ops.conv(f"{name}.branch7x7x3_1", x, 192, 1)
  b7 = ops.conv(f"{name}.branch7x7x3_2", b7, 192, (1, 7), pad=(0, 3))
  b7 = ops.conv(f"{name}.branch7x7x3_3", b7, 192, (7, 1), pad=(3, 0))
  b7 = ops.conv(f"{name}.branch7x7x3_4", b7, 192, 3, stride=2)
  return ops.concat([b3, b7, ops.max_pool(x, stride=2, pad=0)])


def _block_e(ops, name, x, max_pool_branch):
  b1 = ops.conv(f"{name}.branch1x1", x, 320, 1)
  b3 = ops.conv(f"{name}.branch3x3_1", x, 384, 1)
  b3 = ops.concat([ops.conv(f"{name}.branch3x3_2a", b3, 384, (1, 3), pad=(0, 1)),
                   ops.conv(f"{name}.branch3x3_2b", b3, 384, (3, 1), pad=(1, 0))])
  bd = ops.conv(f"{name}.branch3x3dbl_1", x, 448, 1)
  bd = ops.conv(f"{name}.branch3x3dbl_2", bd, 384, 3, pad=1)
  bd = ops.concat([ops.conv(f"{name}.branch3x3dbl_3a", bd, 384, (1, 3), pad=(0, 1)),
                   ops.conv(f"{name}.branch3x3dbl_3b", bd, 384, (3, 1), pad=(1, 0))])
  pooled = ops.max_pool(x, stride=1, pad=1) if max_pool_branch else ops.avg_pool(x)
  bp = ops.conv(f"{name}.branch_pool", pooled, 192, 1)
  return ops.concat([b1, b3, bd, bp])


def inception_v3(ops, x):
  """The FID InceptionV3 from 299x299 [-1, 1] images to the last block's feature map."""
  x = ops.conv("Conv2d_1a_3x3", x, 32, 3, stride=2)
  x = ops.conv("Conv2d_2a_3x3", x, 32, 3)
  x = ops.conv("Conv2d_2b_3x3", x, 64, 3, pad=1)
  x = ops.max_pool(x, stride=2, pad=0)
  x = ops.conv("Conv2d_3b_1x1", x, 80, 1)
  x = ops.conv("Conv2d_4a_3x3", x, 192, 3)
  x = ops.max_pool(x, stride=2, pad=0)
  for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
    x = _block_a(ops, name, x, pool_features)
  x = _block_b(ops, "Mixed_6a", x)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    x = _block_c(ops, name, x, c7)
  x = _block_d(ops, "Mixed_7a", x)
  x = _block_e(ops, "Mixed_7b", x, max_pool_branch=False)
  return _block_e(ops, "Mixed_7c", x, max_pool_branch=True)


# ----------------------------------------------------------------------------- JAX


class JaxOps:
  """NHWC ops over converted parameters {name: {"kernel" HWIO, "scale", "bias"}}."""

  def __init__(self, params: Mapping[str, Mapping[str, Array]]):
    self.params = params

  def _layer(self, name, cin, cout, kernel):
    if name not in self.params:
      raise KeyError(f"{name}: missing from the Inception weights")
    return self.params[name]

  def conv(self, name, x, cout, kernel, stride=1, pad=0):
    kernel, (ph, pw) = _pair(kernel), _pair(pad)
    p = self._layer(name, x.shape[-1], cout, kernel)
    y = jax.lax.conv_general_dilated(x, p["kernel"], _pair(stride), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y * p["scale"] + p["bias"])

  @staticmethod
  def avg_pool(x):
    """3x3, stride 1, padding 1, padding not counted (count_include_pad=False)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count

  @staticmethod
  def max_pool(x, stride, pad):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  @staticmethod
  def concat(xs):
    return jnp.concatenate(xs, axis=-1)


def preprocess(images: Array) -> Array:
  """Images (B, H, W, 3) in [-1, 1] -> 299x299 as pytorch-fid feeds its network."""
  x = (images.astype(jnp.float32) + 1.0) / 2.0  # pytorch-fid takes [0, 1] ...
  x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear", antialias=False)
  return 2.0 * x - 1.0  # ... and maps it back to [-1, 1] after resizing


def inception_features(params: Mapping[str, Mapping[str, Array]], images: Array) -> Array:
  """pool3 features (B, 2048) of images (B, H, W, 3) in [-1, 1]; one channel is
  repeated to three (grey images, as FID on digits is usually computed)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images: expected (B, H, W, 3) or (B, H, W, 1), got {images.shape}")
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return jnp.mean(inception_v3(JaxOps(params), preprocess(images)), axis=(1, 2))


def logits(params: Mapping[str, Mapping[str, Array]], features: Array) -> Array:
  """Classifier logits (B, 1008) from pool3 features, for the Inception Score."""
  if "fc" not in params:
    raise ValueError("the Inception weights have no fc layer (converted by an older "
                     "vqlab): convert the .pth again to get Inception Scores")
  return features @ params["fc"]["kernel"] + params["fc"]["bias"]


class _ShapeRecorder(JaxOps):
  """Records each layer's kernel shape while the network is traced abstractly."""

  def _layer(self, name, cin, cout, kernel):
    self.params[name] = (*kernel, cin, cout)
    return {"kernel": jnp.zeros((*kernel, cin, cout)), "scale": jnp.ones((cout,)),
            "bias": jnp.zeros((cout,))}


def layer_shapes() -> dict[str, tuple[int, int, int, int]]:
  """{layer name: HWIO kernel shape} of the network, without computing anything."""
  shapes = {}
  jax.eval_shape(lambda x: inception_v3(_ShapeRecorder(shapes), x),
                 jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  return shapes


def random_params(seed: int = 0) -> dict:
  """A randomly initialised network (tests); FID needs the converted weights."""
  params, key = {}, jax.random.key(seed)
  for name, shape in layer_shapes().items():
    key, k1, k2, k3 = jax.random.split(key, 4)
    fan_in = shape[0] * shape[1] * shape[2]
    params[name] = {"kernel": jax.random.normal(k1, shape) * (2.0 / fan_in) ** 0.5,
                    "scale": 1.0 + 0.1 * jax.random.normal(k2, shape[-1:]),
                    "bias": 0.1 * jax.random.normal(k3, shape[-1:])}
  key, k1 = jax.random.split(key)
  params["fc"] = {"kernel": jax.random.normal(k1, (FEATURES, CLASSES)) * FEATURES ** -0.5,
                  "bias": jnp.zeros((CLASSES,))}
  return params


# ----------------------------------------------------------------------------- weights


def load(weights: str) -> dict:
  """A converted .npz, or "random" (smoke tests: numbers, but not FIDs)."""
  return random_params() if weights == "random" else load_npz(weights)


def load_npz(path: str) -> dict:
  """Converted weights, checked against the network's layers and shapes."""
  params = read_layers(path, "Inception")
  want = {name: {"kernel": shape, "scale": shape[-1:], "bias": shape[-1:]}
          for name, shape in layer_shapes().items()}
  if "fc" in params:  # optional: only the Inception Score needs it
    want["fc"] = {"kernel": (FEATURES, CLASSES), "bias": (CLASSES,)}
  check_layers(path, "InceptionV3", params, want)
  return params
