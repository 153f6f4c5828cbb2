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

from vqlab.quantizers.core import (ImplicitCodebookQuantizer, as_int, binary_entropy_terms,
                                   bits_to_indices, check_weight, indices_to_bits,
                                   masked_mean, sg)
from vqlab.quantizers.estimators import straight_through

Array = jax.Array


def resolve_bits(bits: int | None, codebook_size: int | None) -> int:
  """The number of bits from either argument, checking they agree."""
  if bits is None and codebook_size is None:
    raise ValueError("bits, codebook_size: expected at least one, got neither")
  if codebook_size is not None:
    codebook_size = as_int("codebook_size", codebook_size, 2)
    if codebook_size & (codebook_size - 1):
      raise ValueError(f"codebook_size: expected a power of two >= 2, got {codebook_size!r}")
    from_size = codebook_size.bit_length() - 1
    if bits is not None and bits != from_size:
      raise ValueError(f"codebook_size: expected 2**bits = {2**bits} for bits={bits}, "
                       f"got {codebook_size}")
    bits = from_size
  bits = as_int("bits", bits)
  if bits > 31:
    raise ValueError(f"bits: expected an int in [1, 31], got {bits!r}")
  return bits


class BinaryQuantizer(ImplicitCodebookQuantizer):
  """What LFQ and BSQ share: each of `bits` axes quantized to +-level (straight-through),
  indices MSB first, and the entropy terms of softmax(-|u - c|^2 * inv_temperature) over
  codes, whose log-odds for bit d are 4 * inv_temperature * level * u_d."""

  def __init__(self, dim: int | None, bits: int | None, codebook_size: int | None, *,
               level: float, inv_temperature: float, entropy_group_bits: int,
               usage_decay: float, usage_threshold: float, rngs: nnx.Rngs | None):
    self.bits = resolve_bits(bits, codebook_size)
    if entropy_group_bits < 1:
      raise ValueError(f"entropy_group_bits: expected >= 1, got {entropy_group_bits}")
    self.level, self.inv_temperature = level, inv_temperature
    self.entropy_group_bits = entropy_group_bits
    super().__init__(dim, self.bits, 2**self.bits, usage_decay=usage_decay,
                     usage_threshold=usage_threshold, rngs=rngs)

  def binary_codes(self, u: Array, mask: Array | None) -> tuple[Array, dict[str, Array]]:
    """Codes of u, and the per-sample entropy, codebook entropy and commitment terms."""
    q = straight_through(u, jnp.where(u > 0, self.level, -self.level))
    per_sample, codebook = binary_entropy_terms(
        4.0 * self.inv_temperature * self.level * u.reshape(-1, self.bits),
        self.entropy_group_bits, None if mask is None else mask.reshape(-1))
    commitment = masked_mean(jnp.square(u - sg(q)), mask)
    return q, {"per_sample_entropy": per_sample, "codebook_entropy": codebook,
               "commitment": commitment}

  def codes_to_indices(self, codes):
    return bits_to_indices(codes > 0)

  def indices_to_codes(self, indices):
    return (indices_to_bits(indices, self.bits) * 2 - 1).astype(jnp.float32) * self.level


class LFQ(BinaryQuantizer):
  """Lookup-free quantization. Give `bits` or `codebook_size` (= 2**bits).

  `dim` (default bits) adds in/out projections when it differs from `bits`; codes are
  +-`scale`. Defaults follow vector-quantize-pytorch, with MAGVIT-v2's 0.25 commitment.
  """

  def __init__(self, dim: int | None = None, *, bits: int | None = None,
               codebook_size: int | None = None, scale: float = 1.0,
               entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
               commitment_weight: float = 0.25, inv_temperature: float = 100.0,
               entropy_group_bits: int = 12, usage_decay: float = 0.99,
               usage_threshold: float = 1e-3, rngs: nnx.Rngs | None = None):
    self.entropy_weight, self.diversity_gamma = entropy_weight, diversity_gamma
    self.commitment_weight = check_weight("commitment_weight", commitment_weight)
    super().__init__(dim, bits, codebook_size, level=scale, inv_temperature=inv_temperature,
                     entropy_group_bits=entropy_group_bits, usage_decay=usage_decay,
                     usage_threshold=usage_threshold, rngs=rngs)

  def quantize_codes(self, h, mask):
    q, terms = self.binary_codes(h, mask)
    loss = (self.entropy_weight * (terms["per_sample_entropy"]
                                   - self.diversity_gamma * terms["codebook_entropy"])
            + self.commitment_weight * terms["commitment"])
    return q, loss, terms
