"""Finite scalar quantization (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505).

Each code axis is bounded and rounded to one of L_i levels; the codebook is the
implicit grid of prod(L_i) points. Conventions as vector-quantize-pytorch:
bound(z) = tanh(z + atanh(offset / half_l)) * half_l - offset with
half_l = (L - 1)(1 + 1e-3) / 2 and offset 0.5 for even L; codes are normalised by
L // 2; index = sum_i digit_i * prod_{j<i} L_j (first axis least significant).

`symmetric=True` is the symmetry-preserving variant (Parker et al. 2024,
https://arxiv.org/abs/2411.19842, sec. 3.2): levels 2/(L-1) * floor((L-1)(tanh z + 1)/2
+ 1/2) - 1, symmetric around 0 for every L (so L = 2 is allowed).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.quantizers.core import ImplicitCodebookQuantizer
from vqlab.quantizers.estimators import straight_through

Array = jax.Array

_EPS = 1e-3


def check_levels(levels: Sequence[int], symmetric: bool) -> tuple[int, ...]:
  if isinstance(levels, np.ndarray) and levels.ndim == 1:
    levels = list(levels)
  if not isinstance(levels, (list, tuple)) or not levels or any(
      isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)) for l in levels):
    raise ValueError(f"levels: expected a non-empty list of ints, got {levels!r}")
  levels = tuple(int(l) for l in levels)
  low = 2 if symmetric else 3
  if min(levels) < low:
    raise ValueError(f"levels: expected every level >= {low}"
                     f"{'' if symmetric else ' (use symmetric=True for 2)'}, got {list(levels)}")
  if np.prod(levels, dtype=np.float64) > 2**31 - 1:
    raise ValueError(f"levels: the codebook prod(levels) must fit int32, got "
                     f"{int(np.prod(levels, dtype=np.float64))}")
  return levels


def fsq_bound(z: Array, levels: Array, hard_clamp: bool = False) -> Array:
  half_l = (levels - 1) * (1 + _EPS) / 2
  offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
  if hard_clamp:
    return jnp.clip(z, -1.0, 1.0) * half_l - offset
  return jnp.tanh(z + jnp.arctanh(offset / half_l)) * half_l - offset


def fsq_quantize(z: Array, levels: Sequence[int], symmetric: bool = False,
                 hard_clamp: bool = False) -> Array:
  """Normalised FSQ codes in [-1, 1] with straight-through rounding; float32.

  hard_clamp: bound by clip(z, -1, 1) instead of tanh, for inputs already squashed
  into range (residual FSQ), so that the code is the grid point nearest z itself.
  """
  lv = jnp.asarray(levels, jnp.float32)
  z = z.astype(jnp.float32)
  if symmetric:
    squashed = jnp.clip(z, -1.0, 1.0) if hard_clamp else jnp.tanh(z)
    bracket = (lv - 1) * (squashed + 1) / 2 + 0.5
    return straight_through(bracket, jnp.floor(bracket)) * (2 / (lv - 1)) - 1
  bounded = fsq_bound(z, lv, hard_clamp)
  return straight_through(bounded, jnp.round(bounded)) / (lv // 2)


def _basis(levels: Sequence[int]) -> Array:
  return jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)


def fsq_codes_to_indices(codes: Array, levels: Sequence[int], symmetric: bool = False) -> Array:
  lv = jnp.asarray(levels, jnp.float32)
  digits = (codes + 1) * (lv - 1) / 2 if symmetric else codes * (lv // 2) + lv // 2
  return jnp.sum(jnp.round(digits).astype(jnp.int32) * _basis(levels), axis=-1)


def fsq_indices_to_codes(indices: Array, levels: Sequence[int], symmetric: bool = False) -> Array:
  lv = jnp.asarray(levels, jnp.int32)
  digits = (indices.astype(jnp.int32)[..., None] // _basis(levels)) % lv
  digits, lvf = digits.astype(jnp.float32), lv.astype(jnp.float32)
  return digits * (2 / (lvf - 1)) - 1 if symmetric else (digits - lv // 2) / (lv // 2)


class FSQ(ImplicitCodebookQuantizer):
  """FSQ over the last axis. `dim` (default len(levels)) adds in/out projections.

  No auxiliary loss (FSQ needs none); `loss` is 0.
  """

  def __init__(self, levels: Sequence[int], dim: int | None = None, *, symmetric: bool = False,
               hard_clamp: bool = False, usage_decay: float = 0.99, usage_threshold: float = 1e-3,
               rngs: nnx.Rngs | None = None):
    self.levels = check_levels(levels, symmetric)
    self.symmetric, self.hard_clamp = symmetric, hard_clamp
    super().__init__(dim, len(self.levels), int(np.prod(self.levels)),
                     usage_decay=usage_decay, usage_threshold=usage_threshold, rngs=rngs)

  def quantize_codes(self, h, mask):
    return fsq_quantize(h, self.levels, self.symmetric, self.hard_clamp), 0.0, {}

  def codes_to_indices(self, codes):
    return fsq_codes_to_indices(codes, self.levels, self.symmetric)

  def indices_to_codes(self, indices):
    return fsq_indices_to_codes(indices, self.levels, self.symmetric)
