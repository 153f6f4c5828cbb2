"""Lookup-free quantization (MAGVIT-v2, Yu et al. 2023, https://arxiv.org/abs/2310.05737).

Each of the `bits` code axes is quantized to its sign (times `scale`); the index reads
the bits most-significant first (vector-quantize-pytorch / Open-MAGVIT2). The auxiliary
loss is entropy_weight * (mean per-sample entropy - gamma * codebook entropy) +
commitment_weight * |z - sg(q)|^2, where the distribution over codes is
softmax(-|z - c|^2 * inv_temperature): a product over bits with log-odds
4 * inv_temperature * scale * z_d. The codebook entropy is factorized over groups of
at most `entropy_group_bits` bits, which keeps 2^18 codes tractable (Open-MAGVIT2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.quantizers.core import (ImplicitCodebookQuantizer, binary_entropy_terms,
                                   bits_to_indices, indices_to_bits, masked_mean, sg)
from vqlab.quantizers.estimators import straight_through

Array = jax.Array


def resolve_bits(bits: int | None, codebook_size: int | None) -> int:
  """The number of bits from either argument, checking they agree."""
  if bits is None and codebook_size is None:
    raise ValueError("bits, codebook_size: expected at least one, got neither")
  if codebook_size is not None:
    if not isinstance(codebook_size, int) or codebook_size < 2 or codebook_size & (codebook_size - 1):
      raise ValueError(f"codebook_size: expected a power of two >= 2, got {codebook_size!r}")
    from_size = codebook_size.bit_length() - 1
    if bits is not None and bits != from_size:
      raise ValueError(f"codebook_size: expected 2**bits = {2**bits} for bits={bits}, "
                       f"got {codebook_size}")
    bits = from_size
  if not isinstance(bits, int) or not 1 <= bits <= 31:
    raise ValueError(f"bits: expected an int in [1, 31], got {bits!r}")
  return bits


class LFQ(ImplicitCodebookQuantizer):
  """Lookup-free quantization. Give `bits` or `codebook_size` (= 2**bits).

  `dim` (default bits) adds in/out projections when it differs from `bits`.
  Defaults follow vector-quantize-pytorch, with MAGVIT-v2's 0.25 commitment.
  """

  def __init__(self, dim: int | None = None, *, bits: int | None = None,
               codebook_size: int | None = None, scale: float = 1.0,
               entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
               commitment_weight: float = 0.25, inv_temperature: float = 100.0,
               entropy_group_bits: int = 12, usage_decay: float = 0.99,
               usage_threshold: float = 1e-3, rngs: nnx.Rngs | None = None):
    bits = resolve_bits(bits, codebook_size)
    self.bits, self.scale = bits, scale
    self.entropy_weight, self.diversity_gamma = entropy_weight, diversity_gamma
    self.commitment_weight, self.inv_temperature = commitment_weight, inv_temperature
    if entropy_group_bits < 1:
      raise ValueError(f"entropy_group_bits: expected >= 1, got {entropy_group_bits}")
    self.entropy_group_bits = entropy_group_bits
    super().__init__(dim, bits, 2**bits, usage_decay=usage_decay,
                     usage_threshold=usage_threshold, rngs=rngs)

  def quantize_codes(self, h, mask):
    q = straight_through(h, jnp.where(h > 0, self.scale, -self.scale))
    flat = h.reshape(-1, self.bits)
    flat_mask = None if mask is None else mask.reshape(-1)
    per_sample, codebook = binary_entropy_terms(
        4.0 * self.inv_temperature * self.scale * flat, self.entropy_group_bits, flat_mask)
    commitment = masked_mean(jnp.square(h - sg(q)), mask)
    loss = (self.entropy_weight * (per_sample - self.diversity_gamma * codebook)
            + self.commitment_weight * commitment)
    return q, loss, {"per_sample_entropy": per_sample, "codebook_entropy": codebook,
                     "commitment": commitment}

  def codes_to_indices(self, codes):
    return bits_to_indices(codes > 0)

  def indices_to_codes(self, indices):
    return (indices_to_bits(indices, self.bits) * 2 - 1).astype(jnp.float32) * self.scale
