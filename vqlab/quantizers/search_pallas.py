"""Nearest-code search as one fused GPU kernel (Pallas, Triton backend).

XLA computes a (rows x codes) block of distances with one kernel (the matmul), writes it
to memory, and reads it back for the argmin: at D = 16 that round trip, not the
arithmetic, sets the speed. Here each program takes `bn` rows, walks the codebook in
tiles of `bk` codes, computes |c|^2 - 2 z.c for the tile on the tensor cores (float32
inputs, IEEE float32 products: no TF32 rounding) and folds it into a running
(min, first argmin) in registers. Only the N indices and distances are written.

Ties go to the lowest index (the tile's argmin keeps the first occurrence; a later tile
replaces the running best only when strictly smaller), as `nearest_code_naive`.
Indices equal the naive search's whenever the float32 distances are computed exactly
(integer-valued inputs: tested in interpret mode on CPU); on general inputs two matmul
kernels round in different orders, so near-ties within a few ulps may resolve
differently (`benchmarks/quantizers.py` counts them on the GPU).

Runs where Pallas lowers to Triton (NVIDIA / AMD GPUs); `interpret=True` runs the same
kernel on any device (slowly), for tests. TPUs use the XLA search.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Array = jax.Array


def _kernel(z_ref, c_ref, c_sq_ref, idx_ref, dist_ref, *, bk: int, k_tiles: int):
  z = z_ref[...]  # (bn, D)
  bn = z.shape[0]

  def tile(t, carry):
    best_d, best_i = carry
    start = pl.multiple_of(t * bk, bk)
    c = c_ref[pl.ds(start, bk), :]  # (bk, D)
    c_sq = c_sq_ref[pl.ds(start, bk)]  # (bk,)
    dots = jax.lax.dot_general(z, c, (((1,), (1,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)
    scores = c_sq[None, :] - 2.0 * dots
    d = jnp.min(scores, axis=1)
    i = jnp.argmin(scores, axis=1).astype(jnp.int32) + start
    better = d < best_d  # strict: ties keep the earlier (lower) index
    return jnp.where(better, d, best_d), jnp.where(better, i, best_i)

  init = (jnp.full((bn,), jnp.inf, jnp.float32), jnp.zeros((bn,), jnp.int32))
  best_d, best_i = jax.lax.fori_loop(0, k_tiles, tile, init)
  idx_ref[...] = best_i
  dist_ref[...] = best_d + jnp.sum(z * z, axis=1)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


@functools.partial(jax.jit, static_argnames=("bn", "bk", "num_warps", "num_stages",
                                             "interpret"))
def nearest_code_fused(z: Array, c: Array, *, bn: int = 64, bk: int = 128,
                       num_warps: int = 4, num_stages: int = 2,
                       interpret: bool = False) -> tuple[Array, Array]:
  """(int32 indices (N,), float32 squared distances (N,)) of float32 z (N, D) against
  codes c (K, D), already prepared (l2: as given; cosine: normalised by the caller).
  `bn` rows per program, `bk` codes per tile (powers of two >= 16: Triton's dot)."""
  for name, v in (("bn", bn), ("bk", bk)):
    if v < 16 or v & (v - 1):
      raise ValueError(f"{name}: expected a power of two >= 16, got {v}")
  n, d = z.shape
  k = c.shape[0]
  # Triton's dot wants every dimension >= 16 and a power of two: zero-pad D (distances
  # unchanged), pad rows with zeros (cut off after) and codes with |c|^2 = inf (never
  # chosen).
  dp = max(16, 1 << (d - 1).bit_length())
  bk = min(bk, max(16, 1 << (k - 1).bit_length()))
  n_pad, k_pad = _round_up(n, bn), _round_up(k, bk)
  z = jnp.pad(z.astype(jnp.float32), ((0, n_pad - n), (0, dp - d)))
  c = jnp.pad(c.astype(jnp.float32), ((0, k_pad - k), (0, dp - d)))
  c_sq = jnp.pad(jnp.sum(c[:k] * c[:k], -1), (0, k_pad - k), constant_values=jnp.inf)
  kernel = functools.partial(_kernel, bk=bk, k_tiles=k_pad // bk)
  params = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    params["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps,
                                                     num_stages=num_stages)
  idx, dist = pl.pallas_call(
      kernel,
      grid=(n_pad // bn,),
      in_specs=[pl.BlockSpec((bn, dp), lambda i: (i, 0)),
                pl.BlockSpec((k_pad, dp), lambda i: (0, 0)),
                pl.BlockSpec((k_pad,), lambda i: (0,))],
      out_specs=[pl.BlockSpec((bn,), lambda i: (i,)), pl.BlockSpec((bn,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((n_pad,), jnp.int32),
                 jax.ShapeDtypeStruct((n_pad,), jnp.float32)],
      interpret=interpret, **params)(z, c, c_sq)
  return idx[:n], dist[:n]


def available() -> bool:
  """Whether the default device takes the fused kernel (a GPU; Triton is what Pallas
  lowers to there)."""
  return jax.default_backend() == "gpu"
