"""Residual and grouped compositions of any quantizers.

- Residual (SoundStream, Zeghidour et al. 2021, https://arxiv.org/abs/2107.03312;
  EnCodec): level l quantizes what levels < l left over. Quantizer dropout trains one
  model for many bitrates: each example keeps a uniformly drawn number of levels in
  [1, L] (SoundStream), and `aux["num_levels"]` says how many. As in EnCodec's code the
  residual is not stopped, so the straight-through gradient to the input is the identity
  (not L times it). DAC (Kumar et al. 2023, https://arxiv.org/abs/2306.06546, sec. 3.2)
  drops levels for only a fraction of the examples (0.5): `quantizer_dropout` is that
  probability (True = 1.0, SoundStream's), the other examples use every level.
- Grouped / product (e.g. HiFi-Codec's grouped residual VQ, Yang et al. 2023,
  https://arxiv.org/abs/2305.02765): the channels split into groups, each quantized
  by its own quantizer; indices get a group axis.
- Residual FSQ (vector-quantize-pytorch): the input is soft-clamped once to
  c = 1 + 1/(L-1) by tanh(z/c) c, then symmetric, hard-clamped FSQ levels quantize,
  level l at scale L^-l.
Indices of a level that was dropped are -1; `decode` skips them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.quantizers.core import (INVALID, QuantizerOutput, as_int, check_indices,
                                   check_last_dim, check_mask)
from vqlab.quantizers.fsq import FSQ, check_levels
from vqlab.quantizers.vq import VectorQuantizer

Array = jax.Array


def _merge_metrics(outputs: Sequence[QuantizerOutput], label: str) -> dict[str, Array]:
  """Per-part metrics under `{label}{i}/`, plus the mean of each over parts."""
  metrics = {}
  for i, out in enumerate(outputs):
    metrics.update({f"{label}{i}/{k}": v for k, v in out.metrics.items()})
  for k in outputs[0].metrics:
    metrics[k] = jnp.mean(jnp.stack([o.metrics[k] for o in outputs]))
  return metrics


class ResidualQuantizer(nnx.Module):
  """Residual quantization over a list of quantizers (the same object repeated shares it).

  scales: optional per-level divisors of the residual (scalar or per-axis), as in
    residual FSQ; level l sees residual / scale_l and contributes q_l * scale_l.
  quantizer_dropout: the probability (True = 1.0) that a training example keeps a uniformly
    drawn number of levels instead of all (needs `rngs` when > 0).
  Input (B, ..., dim); dropout draws along the leading axis.
  """

  def __init__(self, levels: Sequence[nnx.Module], *, scales: Sequence | None = None,
               quantizer_dropout: float = 0.0, rngs: nnx.Rngs | None = None):
    if not levels:
      raise ValueError("levels: expected at least one quantizer, got none")
    dims = {q.dim for q in levels}
    if len(dims) != 1:
      raise ValueError(f"levels: expected quantizers of one input dim, got dims {sorted(dims)}")
    if scales is not None and len(scales) != len(levels):
      raise ValueError(f"scales: expected {len(levels)} entries, got {len(scales)}")
    quantizer_dropout = float(quantizer_dropout)
    if not 0.0 <= quantizer_dropout <= 1.0:
      raise ValueError(f"quantizer_dropout: expected a probability in [0, 1] (or a bool), "
                       f"got {quantizer_dropout}")
    if quantizer_dropout and rngs is None:
      raise ValueError("rngs: quantizer_dropout needs an nnx.Rngs, got None")
    self.levels = nnx.List(levels)
    self.dim = dims.pop()
    self.codebook_size = levels[0].codebook_size
    self.num_levels = len(levels)
    # Static python floats, not arrays: they are constants, not state.
    self.scales = None if scales is None else tuple(
        tuple(np.atleast_1d(np.asarray(s, np.float64)).tolist()) for s in scales)
    self.quantizer_dropout = quantizer_dropout
    self.index_axes = 1  # indices carry a trailing level axis
    self.rngs = rngs
    self.deterministic = False

  def _check_num_levels(self, num_levels):
    """A concrete `num_levels` (int or array) outside [1, L] is an error; a traced one
    (under jit) is clipped to [1, L]."""
    if num_levels is None:
      return None
    if not isinstance(num_levels, jax.core.Tracer):
      values = np.asarray(num_levels)
      if not np.issubdtype(values.dtype, np.integer) or values.size and (
          values.min() < 1 or values.max() > self.num_levels):
        raise ValueError(f"num_levels: expected in [1, {self.num_levels}], got "
                         f"{num_levels!r}")
      return int(values) if values.ndim == 0 else jnp.asarray(values, jnp.int32)
    return jnp.clip(num_levels, 1, self.num_levels)

  def _scale(self, l: int):
    return 1.0 if self.scales is None else jnp.asarray(self.scales[l], jnp.float32)

  def __call__(self, z: Array, mask: Array | None = None,
               num_levels: int | Array | None = None) -> QuantizerOutput:
    """Quantize z (B, ..., dim). `num_levels` (scalar or (B,)) fixes the bitrate."""
    check_last_dim(z, self.dim)
    check_mask(mask, z)
    if z.ndim < 2:
      raise ValueError(f"z: expected (B, ..., {self.dim}) with a batch axis, got shape "
                       f"{tuple(z.shape)}")
    num_levels = self._check_num_levels(num_levels)
    lead = z.shape[:-1]
    if num_levels is None:
      if self.quantizer_dropout and not self.deterministic:
        key = self.rngs.quantizer()
        num_levels = jax.random.randint(key, (lead[0],), 1, self.num_levels + 1)
        if self.quantizer_dropout < 1.0:
          dropped = jax.random.bernoulli(jax.random.fold_in(key, 1), self.quantizer_dropout,
                                         (lead[0],))
          num_levels = jnp.where(dropped, num_levels, self.num_levels)
      else:
        num_levels = self.num_levels
    n_b = jnp.broadcast_to(jnp.asarray(num_levels, jnp.int32), (lead[0],))
    n_b = n_b.reshape((lead[0],) + (1,) * (len(lead) - 1))

    residual = z
    total = jnp.zeros_like(z)
    outputs, indices = [], []
    for l, quantizer in enumerate(self.levels):
      active = jnp.broadcast_to(l < n_b, lead)
      level_mask = active if mask is None else active & mask.astype(bool)
      scale = self._scale(l)
      out = quantizer(residual / scale, mask=level_mask)
      q_l = jnp.where(active[..., None], out.quantized * scale, 0).astype(z.dtype)
      residual = residual - q_l
      total = total + q_l
      if l == 0:
        first = q_l
      outputs.append(out)
      indices.append(jnp.where(active, out.indices, -1))
    metrics = _merge_metrics(outputs, "level")
    metrics["active_levels"] = jnp.mean(n_b.astype(jnp.float32))
    return QuantizerOutput(
        quantized=total, indices=jnp.stack(indices, axis=-1),
        loss=sum(o.loss for o in outputs), metrics=metrics,
        # first_level: level 0's output (always active), what semantic distillation reads
        aux={"num_levels": n_b.reshape(-1), "residual": residual, "first_level": first})

  def decode(self, indices: Array, num_levels: int | None = None) -> Array:
    """Indices (..., L) -> vectors (..., dim); levels >= num_levels and -1 entries (a
    dropped level) skipped; other values outside the codebook as in every quantizer's
    `decode` (an error outside jit, NaN under jit)."""
    check_indices(indices)
    if indices.shape[-1] != self.num_levels:
      raise ValueError(f"indices: expected a last axis of {self.num_levels} levels, got "
                       f"shape {tuple(indices.shape)}")
    num_levels = self._check_num_levels(num_levels)
    if num_levels is not None and not isinstance(num_levels, int):
      raise ValueError(f"num_levels: decode takes one int, got {num_levels!r}")
    n = self.num_levels if num_levels is None else num_levels
    total = 0.0
    for l in range(n):
      idx = indices[..., l]
      dropped = idx == INVALID
      q = self.levels[l].decode(jnp.where(dropped, 0, idx)) * self._scale(l)
      total = total + jnp.where(dropped[..., None], 0.0, q)
    return total

  def bits_per_vector(self, num_levels: int | None = None) -> float:
    """Bits one quantized vector costs with the first `num_levels` levels."""
    n = self.num_levels if num_levels is None else num_levels
    return float(sum(np.log2(self.levels[l].codebook_size) for l in range(n)))


class GroupedQuantizer(nnx.Module):
  """Split the channels into groups, one quantizer each; indices (..., G, ...)."""

  def __init__(self, groups: Sequence[nnx.Module]):
    if not groups:
      raise ValueError("groups: expected at least one quantizer, got none")
    self.groups = nnx.List(groups)
    self.group_dims = [q.dim for q in groups]
    self.dim = sum(self.group_dims)
    self.codebook_size = groups[0].codebook_size
    self.deterministic = False

  def _split(self, z: Array) -> list[Array]:
    return jnp.split(z, np.cumsum(self.group_dims)[:-1], axis=-1)

  def __call__(self, z: Array, mask: Array | None = None, **kwargs) -> QuantizerOutput:
    check_last_dim(z, self.dim)
    check_mask(mask, z)
    outputs = [q(part, mask=mask, **kwargs) for q, part in zip(self.groups, self._split(z))]
    axis = z.ndim - 1  # the group axis follows the positions, before any level axis
    return QuantizerOutput(
        quantized=jnp.concatenate([o.quantized for o in outputs], axis=-1),
        indices=jnp.stack([o.indices for o in outputs], axis=axis),
        loss=sum(o.loss for o in outputs), metrics=_merge_metrics(outputs, "group"),
        aux={"groups": [o.aux for o in outputs]})

  def decode(self, indices: Array, **kwargs) -> Array:
    check_indices(indices)
    axis = indices.ndim - 1 - getattr(self.groups[0], "index_axes", 0)
    if axis < 0 or indices.shape[axis] != len(self.groups):
      raise ValueError(f"indices: expected a group axis of {len(self.groups)}, got shape "
                       f"{tuple(indices.shape)}")
    parts = [q.decode(jnp.take(indices, g, axis=axis), **kwargs)
             for g, q in enumerate(self.groups)]
    return jnp.concatenate(parts, axis=-1)


def index_sizes(quantizer) -> tuple[int, ...]:
  """The codebook size of each index one latent position gets, in the order of the
  indices' trailing axes flattened (group-major, then level): (K,) for a quantizer with one
  index per position, (K_1, ..., K_L) for a residual one, the groups' in turn for a grouped
  one."""
  if isinstance(quantizer, GroupedQuantizer):
    return tuple(k for g in quantizer.groups for k in index_sizes(g))
  if isinstance(quantizer, ResidualQuantizer):
    return tuple(int(level.codebook_size) for level in quantizer.levels)
  return (int(quantizer.codebook_size),)


def stacked_indices(quantizer) -> bool:
  """Whether the indices carry trailing axes after the positions (a residual quantizer's
  levels, a grouped one's groups), even of length 1: then they are (..., D) with D =
  len(index_sizes(quantizer))."""
  return isinstance(quantizer, GroupedQuantizer) or bool(getattr(quantizer, "index_axes", 0))


# --- the named configurations users ask for -----------------------------------------

class ResidualVQ(ResidualQuantizer):
  """Residual VQ (SoundStream / EnCodec). `vq_kwargs` go to every `VectorQuantizer`."""

  def __init__(self, dim: int, codebook_size: int, num_levels: int, *,
               shared_codebook: bool = False, quantizer_dropout: float = 0.0,
               rngs: nnx.Rngs, **vq_kwargs):
    num_levels = as_int("num_levels", num_levels)
    if shared_codebook:
      levels = [VectorQuantizer(dim, codebook_size, rngs=rngs, **vq_kwargs)] * num_levels
    else:
      levels = [VectorQuantizer(dim, codebook_size, rngs=rngs, **vq_kwargs)
                for _ in range(num_levels)]
    super().__init__(levels, quantizer_dropout=quantizer_dropout, rngs=rngs)


class GroupedVQ(GroupedQuantizer):
  """Grouped / product VQ: `groups` codebooks over dim // groups channels each."""

  def __init__(self, dim: int, codebook_size: int, groups: int, *, rngs: nnx.Rngs,
               **vq_kwargs):
    groups = as_int("groups", groups)
    if dim % groups:
      raise ValueError(f"groups: expected a positive divisor of dim={dim}, got {groups!r}")
    super().__init__([VectorQuantizer(dim // groups, codebook_size, rngs=rngs, **vq_kwargs)
                      for _ in range(groups)])


class GroupedResidualVQ(GroupedQuantizer):
  """Grouped residual VQ (HiFi-Codec): indices (..., groups, num_levels)."""

  def __init__(self, dim: int, codebook_size: int, groups: int, num_levels: int, *,
               shared_codebook: bool = False, quantizer_dropout: float = 0.0,
               rngs: nnx.Rngs, **vq_kwargs):
    groups = as_int("groups", groups)
    if dim % groups:
      raise ValueError(f"groups: expected a positive divisor of dim={dim}, got {groups!r}")
    super().__init__([ResidualVQ(dim // groups, codebook_size, num_levels,
                                 shared_codebook=shared_codebook,
                                 quantizer_dropout=quantizer_dropout, rngs=rngs, **vq_kwargs)
                      for _ in range(groups)])


class ResidualFSQ(ResidualQuantizer):
  """Residual FSQ: symmetric hard-clamped FSQ at every level, level l at scale levels^-l."""

  def __init__(self, levels: Sequence[int], num_levels: int, *, dim: int | None = None,
               quantizer_dropout: float = 0.0, rngs: nnx.Rngs | None = None):
    """`dim`, when given, must be len(levels): residual FSQ works in its code axes."""
    levels = check_levels(levels, symmetric=True)
    if dim is not None and dim != len(levels):
      raise ValueError(f"dim: residual FSQ quantizes len(levels)={len(levels)} channels "
                       f"(no projections), got dim={dim}")
    num_levels = as_int("num_levels", num_levels)
    scales = [np.asarray(levels, np.float32) ** -l for l in range(num_levels)]
    super().__init__([FSQ(levels, symmetric=True, hard_clamp=True) for _ in range(num_levels)],
                     scales=scales, quantizer_dropout=quantizer_dropout, rngs=rngs)
    self.input_clamp = tuple(1.0 + 1.0 / (l - 1) for l in levels)

  def __call__(self, z: Array, mask: Array | None = None,
               num_levels: int | Array | None = None) -> QuantizerOutput:
    c = jnp.asarray(self.input_clamp, jnp.float32)
    return super().__call__(jnp.tanh(z / c) * c, mask, num_levels)
