"""Gradient estimators for codebook quantizers, each a `jax.custom_vjp`.

Every estimator returns the hard code vectors in the forward pass; they differ only in
the gradient they send back. All work in float32 on flattened (N, D) rows.

The quantizers call them through one registry (`ESTIMATORS`, bottom of this file): an
estimator there takes (rows z, codebook, `EstimatorContext`) and returns an `Estimate`
(indices, hard codes with its gradient, its own loss and metrics), so one that samples
(Gumbel) draws its own noise. Adding an estimator = one custom VJP + one registered
function here.

- straight_through: d/dz = identity (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937).
- rotation_trick: the gradient is rotated and scaled by the map that takes z to q
  (Fifty et al. 2024, https://arxiv.org/abs/2410.06424).
- index_backprop: gradients reach every code through a softmax over z.C^T
  (IBQ, Shi et al. 2024, https://arxiv.org/abs/2412.02692).
- gumbel_softmax: hard sample forward, relaxed Gumbel-softmax backward
  (Jang et al. 2016, https://arxiv.org/abs/1611.01144; as in DALL-E / taming).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqlab.quantizers.core import EXACT
from vqlab.quantizers.search import nearest_code, squared_distances

Array = jax.Array


# --- straight-through -------------------------------------------------------------

@jax.custom_vjp
def straight_through(z: Array, q: Array) -> Array:
  """Forward q; backward passes the cotangent to z unchanged and nothing to q."""
  return q


def _ste_fwd(z, q):
  return q, None


def _ste_bwd(_, g):
  return g, jnp.zeros_like(g)


straight_through.defvjp(_ste_fwd, _ste_bwd)


# --- rotation trick ---------------------------------------------------------------

def _unit(x: Array, eps: float = 1e-12) -> Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@jax.custom_vjp
def rotation_trick(z: Array, q: Array) -> Array:
  """Forward q; backward applies (|q|/|z|) R^T to the cotangent.

  R = I - 2 r r^T + 2 q^ e^T with e^ = z/|z|, q^ = q/|q|, r = (e^ + q^)/|e^ + q^|,
  the rotation taking e^ to q^ (Fifty et al. 2024, eq. 4). R and the scale are treated
  as constants, so q receives no gradient here (the codebook learns from its loss).
  """
  return q


def _rot_fwd(z, q):
  return q, (z, q)


def _rot_bwd(res, g):
  z, q = res
  e_hat, q_hat = _unit(z), _unit(q)
  r = _unit(e_hat + q_hat)
  scale = (jnp.linalg.norm(q, axis=-1, keepdims=True)
           / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  dz = scale * (g - 2.0 * r * dot(r, g) + 2.0 * e_hat * dot(q_hat, g))
  return dz, jnp.zeros_like(q)


rotation_trick.defvjp(_rot_fwd, _rot_bwd)


# --- index backpropagation (IBQ) -------------------------------------------------

def _row_blocks(n: int, k: int, block_size: int) -> int:
  """Rows per chunk so that a (rows, K) softmax holds <= block_size entries."""
  return max(1, min(n, block_size // max(k, 1)))


def _chunked_softmax_vjp(z, codebook, g, logits_fn, block_size, noise=None):
  """Soft-path gradients of q = p C with p = softmax(logits_fn(z, C, noise)).

  Rows are walked in chunks so at most ~block_size (rows, K) logits exist at once; the
  logits' own pullback is taken with `jax.vjp` per chunk. Returns dz (N, D) and dC (K, D)
  from p's dependence on z and C (the hard one-hot part is the caller's).
  """
  n, d = z.shape
  bn = _row_blocks(n, codebook.shape[0], block_size)
  n_blocks = -(-n // bn)
  chunk = lambda x: jnp.pad(x, ((0, n_blocks * bn - n), (0, 0))).reshape(n_blocks, bn, -1)
  noise = jnp.zeros((n, 0), z.dtype) if noise is None else noise

  def body(dc, rows):
    z_bd, g_bd, noise_bd = rows
    logits, pullback = jax.vjp(lambda zz, cc: logits_fn(zz, cc, noise_bd), z_bd, codebook)
    soft = jax.nn.softmax(logits, axis=-1)
    dw = g_bd @ codebook.T  # cotangent of the soft weights
    dz_bd, dc_kd = pullback(soft * (dw - jnp.sum(soft * dw, -1, keepdims=True)))
    return dc + dc_kd, dz_bd

  dc, dz = jax.lax.scan(body, jnp.zeros_like(codebook), (chunk(z), chunk(g), chunk(noise)))
  return dz.reshape(n_blocks * bn, d)[:n], dc


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def index_backprop(z: Array, codebook: Array, indices: Array,
                   block_size: int = 2**22) -> Array:
  """Forward C[indices]; backward through w = onehot - sg(p) + p, p = softmax(z C^T).

  As in IBQ's official code the logits are the plain dot products z.C^T (for
  l2-normalised codes this ranks codes like the distance). The whole codebook gets a
  gradient every step, which is what keeps large codebooks in use.
  """
  return jnp.take(codebook, indices, axis=0)


def _ibq_fwd(z, codebook, indices, block_size):
  return jnp.take(codebook, indices, axis=0), (z, codebook, indices)


def _ibq_bwd(block_size, res, g):
  z, codebook, indices = res
  logits_fn = lambda zz, cc, _: jnp.matmul(zz, cc.T, precision=EXACT)
  dz, dc_soft = _chunked_softmax_vjp(z, codebook, g, logits_fn, block_size)
  # The weights' forward value is one-hot, so q = w C also sends onehot^T g to C.
  dc_hard = jax.ops.segment_sum(g, indices, num_segments=codebook.shape[0])
  return dz, dc_soft + dc_hard, None


index_backprop.defvjp(_ibq_fwd, _ibq_bwd)


# --- Gumbel-softmax ---------------------------------------------------------------

def gumbel_logits(z: Array, codebook: Array) -> Array:
  """Logits of the Gumbel estimator: negative squared distance to each code."""
  return -squared_distances(z, codebook)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def gumbel_softmax(z: Array, codebook: Array, noise: Array, indices: Array,
                   temperature: float = 1.0, block_size: int = 2**22) -> Array:
  """Forward C[indices]; backward through softmax((logits(z, C) + noise) / temperature).

  `indices` should be argmax(logits + noise) (the hard Gumbel sample); `noise` is the
  (N, K) Gumbel noise that drew it. Straight-through hard Gumbel-softmax.
  """
  return jnp.take(codebook, indices, axis=0)


def _gumbel_fwd(z, codebook, noise, indices, temperature, block_size):
  return jnp.take(codebook, indices, axis=0), (z, codebook, noise, indices)


def _gumbel_bwd(temperature, block_size, res, g):
  z, codebook, noise, indices = res
  logits_fn = lambda zz, cc, nn: (gumbel_logits(zz, cc) + nn) / temperature
  dz, dc_soft = _chunked_softmax_vjp(z, codebook, g, logits_fn, block_size, noise)
  dc_hard = jax.ops.segment_sum(g, indices, num_segments=codebook.shape[0])
  return dz, dc_soft + dc_hard, None, None


gumbel_softmax.defvjp(_gumbel_fwd, _gumbel_bwd)


# --- the registry the quantizers use -----------------------------------------------

@dataclasses.dataclass(frozen=True)
class EstimatorContext:
  """What an estimator may use besides the rows and the codebook."""
  training: bool  # False: deterministic (no noise), as at evaluation
  next_key: Callable[[], Array]  # draws a fresh key; called only by estimators that sample
  block_size: int  # most (rows, K) distances / logits held at once
  temperature: float = 1.0  # Gumbel
  kl_weight: float = 0.0  # Gumbel: weight of the KL to the uniform prior


class Estimate(NamedTuple):
  indices: Array  # (N,) int32
  quantized: Array  # (N, D) the hard codes C[indices], with the estimator's gradient
  loss: Array | float  # the estimator's own loss term (0 for most)
  metrics: dict


def _nearest(z, codebook, ctx) -> Array:
  return nearest_code(z, codebook, "l2", ctx.block_size)[0]


def _ste(z, codebook, ctx) -> Estimate:
  idx = _nearest(z, codebook, ctx)
  return Estimate(idx, straight_through(z, jnp.take(codebook, idx, axis=0)), 0.0, {})


def _rotation(z, codebook, ctx) -> Estimate:
  idx = _nearest(z, codebook, ctx)
  return Estimate(idx, rotation_trick(z, jnp.take(codebook, idx, axis=0)), 0.0, {})


def _ibq(z, codebook, ctx) -> Estimate:
  idx = _nearest(z, codebook, ctx)
  return Estimate(idx, index_backprop(z, codebook, idx, ctx.block_size), 0.0, {})


def _gumbel(z, codebook, ctx) -> Estimate:
  """Hard Gumbel sample while training (taming's GumbelQuantize, with its optional KL to
  the uniform prior); the nearest code with straight-through at evaluation."""
  if not ctx.training:
    return _ste(z, codebook, ctx)
  k = codebook.shape[0]
  noise = jax.random.gumbel(ctx.next_key(), (z.shape[0], k))
  logits = gumbel_logits(z, codebook)
  idx = jnp.argmax(logits + noise, axis=-1).astype(jnp.int32)
  q = gumbel_softmax(z, codebook, noise, idx, ctx.temperature, ctx.block_size)
  if ctx.kl_weight <= 0:
    return Estimate(idx, q, 0.0, {})
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  kl = jnp.mean(jnp.sum(jnp.exp(log_probs) * (log_probs + jnp.log(k)), -1))
  return Estimate(idx, q, ctx.kl_weight * kl, {"gumbel_kl": kl})


# name -> estimator(z (N, D), codebook (K, D), EstimatorContext) -> Estimate
ESTIMATORS: dict[str, Callable[[Array, Array, EstimatorContext], Estimate]] = {
    "ste": _ste, "rotation": _rotation, "ibq": _ibq, "gumbel": _gumbel,
}


def check_estimator(name: str) -> None:
  if name not in ESTIMATORS:
    raise ValueError(f"estimator: expected one of {tuple(ESTIMATORS)}, got {name!r}")
