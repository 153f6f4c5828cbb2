"""Pieces every quantizer shares: the output type, input checks, code statistics.

Statistics are computed from global arrays inside `jit`, so a batch sharded over a
mesh gives the same numbers as the same batch on one device (no `axis_name`).

What every quantizer does with bad values (the same for all families):
- indices outside [0, codebook_size) given to `decode`: a ValueError when the indices
  are concrete (outside `jit`); under `jit` those positions decode to NaN vectors.
  (Residual quantizers: -1 at a level means "level dropped" and decodes to nothing.)
- non-finite input rows: index `INVALID` (-1), a NaN quantized vector, left out of the
  loss and of every statistic; `metrics["nonfinite_inputs"]` counts them.
- an empty batch (no rows): zero loss, statistics untouched.
- code-usage statistics are kept per code up to `MAX_TRACKED_CODES` codes; above (e.g.
  FSQ with 2^30 codes) batch usage is computed from the batch's own indices and no
  usage EMA is kept.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

# Full float32 matrix products for distances, logits and entropies: GPUs default to
# TF32 / bf16 passes for float32 matmuls, which cannot order close distances.
EXACT = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class QuantizerOutput:
  """What every quantizer returns.

  quantized: same shape and dtype as the input; gradients reach the input through the
    quantizer's estimator.
  indices: int32 code indices, shape `input.shape[:-1]` (+ a trailing level/group axis
    for residual and grouped quantizers).
  loss: scalar auxiliary loss (codebook + commitment, entropy, ...), already weighted.
  metrics: dict of float32 scalars for logging.
  aux: anything else worth returning (per-level outputs, active levels, ...).
  """

  quantized: Array
  indices: Array
  loss: Array
  metrics: dict[str, Array]
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


class QuantizerState(nnx.Variable):
  """Quantizer statistics updated in the forward pass, not by the optimizer: code-usage
  EMA, EMA codebooks, the k-means-done flag. Checkpointed with the model."""


INVALID = -1  # the index of a non-finite input row
MAX_TRACKED_CODES = 2**20  # per-code usage EMAs above this would cost GBs (FSQ's 2^30)


def as_int(name: str, value: Any, minimum: int = 1) -> int:
  """`value` as a Python int >= `minimum`: ints and NumPy integers (not bools, floats)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
  return int(value)


def check_weight(name: str, value: float) -> float:
  """A loss weight: finite and >= 0 (a negative commitment pushes the encoder away)."""
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"{name}: expected a finite weight >= 0, got {value!r}")
  return float(value)


def split_nonfinite(h: Array, mask: Array | None) -> tuple[Array, Array, Array]:
  """(h with non-finite rows zeroed, the mask without them, bad rows (...)): rows of
  (..., D) with a NaN or inf are left out of losses and statistics."""
  bad = jnp.logical_not(jnp.all(jnp.isfinite(h), axis=-1))
  keep = jnp.logical_not(bad)
  return (jnp.where(bad[..., None], 0.0, h).astype(h.dtype),
          keep if mask is None else keep & mask.astype(bool), bad)


def mark_nonfinite(out: "QuantizerOutput", bad: Array) -> "QuantizerOutput":
  """Index INVALID and a NaN vector for the bad rows; their count in the metrics."""
  lead_bad = bad.reshape(bad.shape + (1,) * (out.indices.ndim - bad.ndim))
  return out.replace(
      quantized=jnp.where(bad[..., None], jnp.nan, out.quantized).astype(out.quantized.dtype),
      indices=jnp.where(lead_bad, INVALID, out.indices),
      metrics={**out.metrics, "nonfinite_inputs": jnp.sum(bad).astype(jnp.float32)})


def empty_output(z: Array, index_shape: tuple[int, ...]) -> "QuantizerOutput":
  """What a quantizer returns for a batch without rows: nothing to learn from."""
  return QuantizerOutput(quantized=z, indices=jnp.zeros(index_shape, jnp.int32),
                         loss=jnp.float32(0.0), metrics={"nonfinite_inputs": jnp.float32(0.0)})


def lookup_indices(indices: Array, size: int, name: str = "indices") -> tuple[Array, Array]:
  """(indices safe to look up, valid mask) for codes that must be in [0, size). Concrete
  indices out of range are a ValueError; traced ones (under jit) are flagged in `valid`
  for the caller to decode to NaN (`nan_where_invalid`)."""
  check_indices(indices, name)
  if not isinstance(indices, jax.core.Tracer):
    values = np.asarray(indices)
    bad = (values < 0) | (values >= size)
    if bad.any():
      raise ValueError(f"{name}: expected codes in [0, {size}), got {int(bad.sum())} outside "
                       f"(min {values.min()}, max {values.max()})")
  valid = (indices >= 0) & (indices < size)
  return jnp.where(valid, indices, 0), valid


def nan_where_invalid(x: Array, valid: Array) -> Array:
  return jnp.where(valid[..., None], x, jnp.nan).astype(x.dtype)


def usage_buffer(codebook_size: int) -> "QuantizerState":
  """The per-code usage EMA, or an empty one above MAX_TRACKED_CODES codes."""
  return QuantizerState(jnp.zeros((codebook_size if codebook_size <= MAX_TRACKED_CODES else 0,)))


def check_last_dim(z: Array, dim: int, name: str = "z") -> None:
  if z.ndim < 1 or z.shape[-1] != dim:
    raise ValueError(
        f"{name}: expected last dimension {dim}, got shape {tuple(z.shape)}")


def check_indices(indices: Array, name: str = "indices") -> None:
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"{name}: expected an integer array, got dtype {indices.dtype}")


def check_mask(mask: Array | None, z: Array) -> None:
  if mask is not None and tuple(mask.shape) != tuple(z.shape[:-1]):
    raise ValueError(f"mask: expected shape {tuple(z.shape[:-1])}, got {tuple(mask.shape)}")


def entropy(probs: Array, axis: int = -1) -> Array:
  """Shannon entropy in nats, safe at p = 0."""
  probs = probs.astype(jnp.float32)
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-30)), 0.0),
                  axis=axis)


def code_counts(indices: Array, codebook_size: int, mask: Array | None = None) -> Array:
  """Number of times each code was chosen, float32 (K,). `mask` drops entries."""
  flat = indices.reshape(-1).astype(jnp.int32)
  weights = None if mask is None else mask.reshape(-1).astype(jnp.float32)
  return jnp.bincount(flat, weights=weights, length=codebook_size).astype(jnp.float32)


def batch_code_counts(indices: Array, mask: Array | None = None) -> Array:
  """How often each distinct code of the batch occurs, one entry per row (N,) with zeros
  after the distinct ones: counts without a (K,) array, for huge codebooks."""
  flat = indices.reshape(-1).astype(jnp.int32)
  w = jnp.ones(flat.shape, jnp.float32) if mask is None else mask.reshape(-1).astype(jnp.float32)
  order = jnp.argsort(flat)
  flat, w = flat[order], w[order]
  starts = jnp.concatenate([jnp.ones((min(flat.size, 1),), bool), flat[1:] != flat[:-1]])
  run = jnp.cumsum(starts) - 1
  return jax.ops.segment_sum(w, run, num_segments=flat.size)


def usage_metrics(counts: Array, codebook_size: int | None = None, prefix: str = ""
                  ) -> dict[str, Array]:
  """Batch code usage (fraction of the `codebook_size` (default len(counts)) codes hit),
  entropy (nats) and perplexity."""
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  ent = entropy(probs)
  hit = jnp.sum((counts > 0).astype(jnp.float32))
  return {
      f"{prefix}usage": hit / (codebook_size or counts.shape[0]),
      f"{prefix}entropy": ent,
      f"{prefix}perplexity": jnp.exp(ent),
  }


def ema_usage_metrics(usage_ema: Array, threshold: float, prefix: str = "") -> dict[str, Array]:
  """Usage over the recent past: codes whose EMA count per step is >= `threshold`."""
  probs = usage_ema / jnp.maximum(usage_ema.sum(), 1e-12)
  return {
      f"{prefix}ema_usage": jnp.mean((usage_ema >= threshold).astype(jnp.float32)),
      f"{prefix}ema_perplexity": jnp.exp(entropy(probs)),
  }


def ema(old: Array, new: Array, decay: float) -> Array:
  return old * decay + new * (1.0 - decay)


def track_usage(module: nnx.Module, indices: Array, mask: Array | None = None
                ) -> dict[str, Array]:
  """Batch usage metrics and, when training, the module's usage EMA update.

  The module needs `codebook_size`, `usage` (a `QuantizerState` (K,)), `usage_decay`,
  `usage_threshold` and `deterministic`. The EMA starts at the first batch's counts
  rather than at zero, so a fresh codebook is not declared dead on its first steps.
  """
  if module.codebook_size > MAX_TRACKED_CODES:
    return usage_metrics(batch_code_counts(indices, mask), module.codebook_size)
  counts = code_counts(indices, module.codebook_size, mask)
  metrics = usage_metrics(counts)
  if not module.deterministic:
    old = module.usage[...]
    module.usage[...] = jnp.where(jnp.all(old == 0), counts, ema(old, counts, module.usage_decay))
  metrics.update(ema_usage_metrics(module.usage[...], module.usage_threshold))
  return metrics


def sg(x: Array) -> Array:
  return jax.lax.stop_gradient(x)


def mse(a: Array, b: Array) -> Array:
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=axis, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


def binary_entropy_terms(bit_logits: Array, max_group_bits: int, mask: Array | None = None
                         ) -> tuple[Array, Array]:
  """Per-sample and codebook entropy of a factorized distribution over binary codes.

  `bit_logits` (N, D) are log-odds of each bit being 1; the distribution over the 2^D
  codes is the product of the D Bernoullis (exact for LFQ and BSQ, whose
  softmax-over-codes factorizes over bits). The per-sample entropy is then exact: a sum
  of binary entropies. The codebook (batch-averaged) distribution does not factorize,
  so, as Open-MAGVIT2 and BSQ do, it is computed exactly within consecutive groups of
  at most `max_group_bits` bits (as equal as possible) and summed over groups: exact
  when max_group_bits >= D, and O(N 2^max_group_bits) memory at 2^18 codes.
  `mask` (N,) drops rows. Returns (mean per-sample entropy, codebook entropy), nats.
  """
  n, d = bit_logits.shape
  if max_group_bits < 1:
    raise ValueError(f"max_group_bits: expected >= 1, got {max_group_bits}")
  w = jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)
  w = w / jnp.maximum(w.sum(), 1.0)
  logits = bit_logits.astype(jnp.float32)
  p1 = jax.nn.sigmoid(logits)
  # H(Bernoulli) from logits, stable for large |logit|.
  per_sample = jnp.sum(w * jnp.sum(jax.nn.softplus(logits) - p1 * logits, axis=-1))
  log_p1, log_p0 = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  codebook = 0.0
  for bits in np.array_split(np.arange(d), -(-d // max_group_bits)):
    g = len(bits)
    # log-probability of each of the group's 2^g codes (MSB first) for every row
    codes = ((np.arange(2**g)[:, None] >> np.arange(g - 1, -1, -1)) & 1).astype(np.float32)
    sl = slice(int(bits[0]), int(bits[-1]) + 1)
    log_probs = (jnp.matmul(log_p1[:, sl], codes.T, precision=EXACT)
                 + jnp.matmul(log_p0[:, sl], 1.0 - codes.T, precision=EXACT))
    codebook = codebook + entropy(w @ jnp.exp(log_probs))
  return per_sample, codebook


def bits_to_indices(bits: Array) -> Array:
  """(..., D) {0,1} -> int32 index, most-significant bit first (LFQ/BSQ convention)."""
  d = bits.shape[-1]
  if d > 31:
    raise ValueError(f"bits: at most 31 bits fit an int32 index, got {d}")
  weights = (1 << jnp.arange(d - 1, -1, -1)).astype(jnp.int32)
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1).astype(jnp.int32)


def indices_to_bits(indices: Array, d: int) -> Array:
  shifts = jnp.arange(d - 1, -1, -1, dtype=jnp.int32)
  return (indices.astype(jnp.int32)[..., None] >> shifts) & 1


class ImplicitCodebookQuantizer(nnx.Module):
  """Skeleton shared by FSQ, LFQ and BSQ: codes are computed, not looked up.

  Optional linear projections map `dim` input channels to the `code_dim` code axes and
  back. Subclasses define `quantize_codes(h, mask) -> (codes, loss, metrics)` on float32
  rows, `codes_to_indices` and `indices_to_codes`.
  """

  def __init__(self, dim: int | None, code_dim: int, codebook_size: int, *,
               usage_decay: float, usage_threshold: float, rngs: nnx.Rngs | None):
    dim = code_dim if dim is None else dim
    if not isinstance(dim, int) or dim < 1:
      raise ValueError(f"dim: expected a positive int, got {dim!r}")
    self.dim, self.code_dim, self.codebook_size = dim, code_dim, codebook_size
    self.usage_decay, self.usage_threshold = usage_decay, usage_threshold
    self.deterministic = False
    if dim != code_dim and rngs is None:
      raise ValueError(f"rngs: needed for the projections from dim={dim} to "
                       f"code_dim={code_dim}, got None")
    project = dim != code_dim
    self.project_in = nnx.data(nnx.Linear(dim, code_dim, rngs=rngs) if project else None)
    self.project_out = nnx.data(nnx.Linear(code_dim, dim, rngs=rngs) if project else None)
    self.usage = usage_buffer(codebook_size)

  def __call__(self, z: Array, mask: Array | None = None) -> QuantizerOutput:
    check_last_dim(z, self.dim)
    check_mask(mask, z)
    if z.size == 0:
      return empty_output(z, z.shape[:-1])
    h = z if self.project_in is None else self.project_in(z)
    h, mask, bad = split_nonfinite(h.astype(jnp.float32), mask)
    codes, loss, metrics = self.quantize_codes(h, mask)
    indices = self.codes_to_indices(sg(codes))
    metrics.update(track_usage(self, indices, mask))
    out = codes if self.project_out is None else self.project_out(codes)
    return mark_nonfinite(QuantizerOutput(quantized=out.astype(z.dtype), indices=indices,
                                          loss=jnp.asarray(loss, jnp.float32), metrics=metrics),
                          bad)

  def decode(self, indices: Array) -> Array:
    """Indices (...) -> quantized vectors (..., dim) without the input (see the module
    docstring for indices out of range)."""
    safe, valid = lookup_indices(indices, self.codebook_size)
    codes = self.indices_to_codes(safe)
    out = codes if self.project_out is None else self.project_out(codes)
    return nan_where_invalid(out, valid)


def masked_mean(x: Array, mask: Array | None) -> Array:
  """Mean of x (..., D) over all entries, counting only rows where mask (...) is set."""
  x = x.astype(jnp.float32)
  if mask is None:
    return jnp.sum(x) / max(x.size, 1)  # 0, not NaN, for an empty batch
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m) * x.shape[-1], 1.0)
