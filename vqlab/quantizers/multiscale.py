"""Multi-scale residual VQ for next-scale prediction (VAR, Tian et al. 2024,
https://arxiv.org/abs/2404.02905), following the official FoundationVision/VAR
`quant.py` operation for operation:

- scales `patch_nums` (default 1, 2, 3, 4, 5, 6, 8, 10, 13, 16), the last = feature size;
- at scale k the residual is area-downsampled (adaptive average pooling) to pn_k x pn_k,
  quantized with the one shared codebook, bicubically upsampled back (PyTorch's
  `interpolate(mode="bicubic")`: a = -0.75, align_corners=False, no antialiasing,
  clamped borders), passed through phi and subtracted;
- phi_k(h) = (1 - r) h + r conv3x3(h), r = |quant_resi|; `num_phi` convs shared along
  the scales by nearest tick of linspace(m, 1 - m, K) to k / (SN - 1), m = 1/(3K) for
  K = 4 and 1/(2K) otherwise;
- loss = mean over scales of beta |sg(f_hat) - f|^2 + |f_hat - sg(f)|^2, and the output
  is f + sg(f_hat - f) (straight-through).
Channels are last: features (B, H, W, C). Indices are the scales' raster orders
concatenated, (B, sum pn^2), as VAR's `gt_idx_Bl`.

`binary=True` is Infinity's bitwise multi-scale residual quantizer (Han et al. 2024,
https://arxiv.org/abs/2412.04431, sec. 3.1, its `MultiScaleBSQ`): no codebook; each
scale's residual is quantized to its signs times 1/sqrt(C) (BSQ's codes on the unit
sphere, C bits per position, indices most significant bit first as LFQ / BSQ), the rest
as above (VAR's area / bicubic resizing and phi, not Infinity's interpolation modes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.quantizers.core import (INVALID, QuantizerOutput, as_int, bits_to_indices,
                                   check_indices, check_weight, empty_output,
                                   indices_to_bits, lookup_indices, mse, nan_where_invalid,
                                   sg, track_usage, usage_buffer)
from vqlab.quantizers.search import DEFAULT_BLOCK_SIZE, check_metric, nearest_code

Array = jax.Array

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
BICUBIC_A = -0.75  # PyTorch's cubic convolution constant


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of adaptive average pooling along one axis."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def _cubic_weights(t: float, a: float = BICUBIC_A) -> tuple[float, ...]:
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a      # 1 < |x| < 2
  return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of PyTorch bicubic resizing (align_corners=False)."""
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for o in range(n_out):
    x = (o + 0.5) * scale - 0.5  # not clamped at 0 for cubic, as in PyTorch
    x0 = int(np.floor(x))
    for k, w in enumerate(_cubic_weights(x - x0)):
      m[o, min(max(x0 - 1 + k, 0), n_in - 1)] += w
  return m.astype(np.float32)


def resize(x_bhwc: Array, size: int, kind: str) -> Array:
  """Separable resize of (B, H, W, C) to (B, size, size, C); kind "area" or "bicubic"."""
  make = area_matrix if kind == "area" else bicubic_matrix
  mh = jnp.asarray(make(x_bhwc.shape[1], size))
  mw = jnp.asarray(make(x_bhwc.shape[2], size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh, x_bhwc, precision=hi)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
  """Which of the `num_phi` shared convs serves scale `si` (VAR's PhiPartiallyShared /
  PhiNonShared: ticks keep a 1/(3K) margin when K = 4, 1/(2K) otherwise)."""
  margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
  ticks = np.linspace(margin, 1 - margin, num_phi)
  at = si / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - at)))


class MultiScaleVQ(nnx.Module):
  """VAR's multi-scale residual quantizer over features (B, H, W, C), H = W = last scale.

  Args:
    dim: feature channels C (VAR: 32).
    codebook_size: shared codebook size (VAR: 4096).
    patch_nums: the scale schedule; the last must equal the feature size.
    beta: commitment weight (VAR: 0.25).
    quant_resi: phi's residual ratio r (VAR: 0.5); 0 makes phi the identity.
    num_phi: number of partially shared phi convs (VAR: 4); 0 means one per scale.
    metric: "l2", or "cosine" (VAR's using_znorm: cosine search, raw code vectors).
    binary: Infinity's bitwise codes (signs / sqrt(dim)); codebook_size must be 2**dim.
  """

  def __init__(self, dim: int, codebook_size: int, patch_nums: Sequence[int] = VAR_PATCH_NUMS,
               *, beta: float = 0.25, quant_resi: float = 0.5, num_phi: int = 4,
               metric: str = "l2", binary: bool = False, usage_decay: float = 0.99,
               usage_threshold: float = 1e-3, block_size: int = DEFAULT_BLOCK_SIZE,
               rngs: nnx.Rngs):
    check_metric(metric)
    dim, codebook_size = as_int("dim", dim), as_int("codebook_size", codebook_size)
    beta = check_weight("beta", beta)
    patch_nums = tuple(int(p) for p in patch_nums)
    if not patch_nums or any(p < 1 for p in patch_nums) or list(patch_nums) != sorted(patch_nums):
      raise ValueError(f"patch_nums: expected increasing positive sizes, got {list(patch_nums)}")
    if num_phi < 0:
      raise ValueError(f"num_phi: expected >= 0, got {num_phi}")
    self.dim, self.codebook_size, self.patch_nums = dim, codebook_size, patch_nums
    self.beta, self.quant_resi, self.metric = beta, abs(quant_resi), metric
    self.usage_decay, self.usage_threshold = usage_decay, usage_threshold
    self.block_size = block_size
    self.deterministic = False
    self.binary = bool(binary)
    if self.binary:  # the codes are the signs: nothing to learn
      if dim > 31 or codebook_size != 2**dim:
        raise ValueError(f"codebook_size: binary codes of dim={dim} bits are 2**dim "
                         f"(at most 2^31, int32 indices), got {codebook_size}")
      self.level = dim ** -0.5
    else:
      self.codebook = nnx.Param(jax.random.uniform(
          rngs.params(), (codebook_size, dim), minval=-1.0 / codebook_size,
          maxval=1.0 / codebook_size))
    self.num_phi = num_phi or len(patch_nums)
    self.phis = nnx.List([nnx.Conv(dim, dim, (3, 3), padding="SAME", rngs=rngs)
                          for _ in range(self.num_phi if self.quant_resi > 1e-6 else 0)])
    self.usage = usage_buffer(codebook_size)

  @property
  def seq_len(self) -> int:
    return sum(p * p for p in self.patch_nums)

  def phi(self, h: Array, si: int) -> Array:
    if not self.phis:
      return h
    conv = self.phis[phi_index(si, len(self.patch_nums), self.num_phi)]
    return h * (1 - self.quant_resi) + conv(h) * self.quant_resi

  def _check_features(self, f: Array) -> None:
    side = self.patch_nums[-1]
    if f.ndim != 4 or f.shape[1:] != (side, side, self.dim):
      raise ValueError(f"f: expected (B, {side}, {side}, {self.dim}) features, got shape "
                       f"{tuple(f.shape)}")

  def _upsampled(self, h: Array, si: int, side: int) -> Array:
    """Scale si's code map, upsampled to the feature size (not the last) and through phi."""
    if si != len(self.patch_nums) - 1:
      h = resize(h, side, "bicubic")
    return self.phi(h, si)

  def __call__(self, f: Array, mask: Array | None = None) -> QuantizerOutput:
    """Quantize feature maps f (B, side, side, dim). Every position counts: a `mask` is
    refused. An image with a non-finite feature gets INVALID indices at every scale and
    a NaN output (its scales mix all positions) and is left out of the statistics."""
    if mask is not None:
      raise ValueError("mask: MultiScaleVQ quantizes whole feature maps (every scale mixes "
                       "all positions); expected None")
    self._check_features(f)
    b, side = f.shape[0], self.patch_nums[-1]
    if b == 0:
      return empty_output(f, (0, self.seq_len))
    bad_positions = jnp.logical_not(jnp.all(jnp.isfinite(f), axis=-1))
    bad_image = jnp.any(bad_positions, axis=(1, 2))
    f = jnp.where(bad_image[:, None, None, None], 0.0, f).astype(f.dtype)
    f32 = f.astype(jnp.float32)
    f_rest = sg(f32)
    f_hat = jnp.zeros_like(f32)
    loss, scale_indices = 0.0, []
    for si, pn in enumerate(self.patch_nums):
      rest = f_rest if si == len(self.patch_nums) - 1 else resize(f_rest, pn, "area")
      idx, codes = self._quantize(rest.reshape(-1, self.dim))
      h = self._upsampled(codes.reshape(b, pn, pn, self.dim), si, side)
      f_hat = f_hat + h
      f_rest = f_rest - h
      loss = loss + self.beta * mse(sg(f_hat), f32) + mse(f_hat, sg(f32))
      scale_indices.append(idx.reshape(b, pn * pn))
    indices = jnp.concatenate(scale_indices, axis=1)
    metrics = track_usage(self, indices, jnp.broadcast_to(~bad_image[:, None], indices.shape))
    quantized = f32 + sg(f_hat - f32)
    out = QuantizerOutput(quantized=quantized.astype(f.dtype), indices=indices,
                          loss=loss / len(self.patch_nums), metrics=metrics,
                          aux={"scale_indices": scale_indices})
    out = out.replace(quantized=jnp.where(bad_image[:, None, None, None], jnp.nan,
                                          out.quantized).astype(f.dtype),
                      indices=jnp.where(bad_image[:, None], INVALID, indices))
    return out.replace(metrics={**metrics, "nonfinite_inputs": jnp.sum(bad_positions).astype(
        jnp.float32)})

  def split_scales(self, indices: Array) -> list[Array]:
    """(B, sum pn^2) -> [(B, pn, pn)] per scale."""
    check_indices(indices)
    if indices.ndim != 2 or indices.shape[1] != self.seq_len:
      raise ValueError(f"indices: expected (B, {self.seq_len}), got shape {tuple(indices.shape)}")
    bounds = np.cumsum([p * p for p in self.patch_nums])[:-1]
    return [x.reshape(-1, p, p) for x, p in
            zip(jnp.split(indices, bounds, axis=1), self.patch_nums)]

  def decode(self, indices: Array) -> Array:
    """Indices (B, sum pn^2) -> f_hat (B, H, W, C), VAR's `embed_to_fhat` over all scales."""
    side = self.patch_nums[-1]
    f_hat = 0.0
    for si, idx in enumerate(self.split_scales(indices)):
      f_hat = f_hat + self._upsampled(self._lookup(idx), si, side)
    return f_hat

  def _quantize(self, rows: Array) -> tuple[Array, Array]:
    """Rows (N, dim) -> (indices (N,), code vectors (N, dim)): the nearest code, or the
    signs."""
    if self.binary:
      return bits_to_indices(rows > 0), jnp.where(rows > 0, self.level, -self.level)
    codebook = self.codebook[...].astype(jnp.float32)
    idx, _ = nearest_code(rows, codebook, self.metric, self.block_size)
    return idx, jnp.take(codebook, idx, axis=0)

  def _lookup(self, idx: Array) -> Array:
    """Code vectors of indices; out of range: an error outside jit, NaN under jit (which
    the upsampling and phi spread over the map)."""
    safe, valid = lookup_indices(idx, self.codebook_size)
    if self.binary:
      codes = (indices_to_bits(safe, self.dim) * 2 - 1).astype(jnp.float32) * self.level
    else:
      codes = jnp.take(self.codebook[...].astype(jnp.float32), safe, axis=0)
    return nan_where_invalid(codes, valid)

  def self_correction(self, indices: Array, key: Array, flip: float) -> tuple[Array, Array]:
    """Infinity's bitwise self-correction (sec. 3.3) for binary codes: scale by scale,
    flip each bit with probability u * `flip` (u ~ U(0, 1) per image and scale: Infinity
    draws a strength in [0, flip] per scale), build the next scales' residuals from the
    flipped codes and re-quantize them, so the targets correct the flips. Returns
    (teacher-forcing inputs as `teacher_forcing_input`, target indices (B, sum pn^2)).
    The tokenizer's own reconstruction decode(indices) stands in for its encoder
    features (a token export holds indices only): with flip = 0 the targets are the
    re-quantized reconstruction, not exactly `indices`."""
    if not self.binary:
      raise ValueError("self_correction: flips bits of binary codes (binary=True); this "
                       "quantizer has a codebook")
    side, b = self.patch_nums[-1], indices.shape[0]
    rest = self.decode(indices)
    f_hat, inputs, targets = 0.0, [], []
    for si, pn in enumerate(self.patch_nums):
      r = rest if si == len(self.patch_nums) - 1 else resize(rest, pn, "area")
      bits = r > 0
      targets.append(bits_to_indices(bits).reshape(b, pn * pn))
      key, k_strength, k_flip = jax.random.split(key, 3)
      p = flip * jax.random.uniform(k_strength, (b, 1, 1, 1))
      used = jnp.logical_xor(bits, jax.random.bernoulli(k_flip, p, bits.shape))
      h = self._upsampled(jnp.where(used, self.level, -self.level), si, side)
      f_hat, rest = f_hat + h, rest - h
      if si < len(self.patch_nums) - 1:
        nxt = self.patch_nums[si + 1]
        inputs.append(resize(f_hat, nxt, "area").reshape(b, nxt * nxt, self.dim))
    return jnp.concatenate(inputs, axis=1), jnp.concatenate(targets, axis=1)

  def teacher_forcing_input(self, indices: Array) -> Array:
    """VAR's `idxBl_to_var_input`: (B, sum pn^2 - pn_0^2, C) transformer inputs.

    Entry for scale k+1 is the cumulative f_hat after scales <= k, area-downsampled to
    pn_{k+1}, in raster order.
    """
    side = self.patch_nums[-1]
    scale_indices = self.split_scales(indices)
    f_hat, inputs = 0.0, []
    for si in range(len(self.patch_nums) - 1):
      f_hat = f_hat + self._upsampled(self._lookup(scale_indices[si]), si, side)
      nxt = self.patch_nums[si + 1]
      inputs.append(resize(f_hat, nxt, "area").reshape(f_hat.shape[0], nxt * nxt, self.dim))
    return jnp.concatenate(inputs, axis=1)
