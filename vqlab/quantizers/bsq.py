"""Binary spherical quantization (Zhao et al. 2024, https://arxiv.org/abs/2406.07548).

The input is projected onto the unit sphere, u = z / |z|, and each axis quantized to
sign(u_d) / sqrt(D), so every code is also on the sphere and the quantization error is
bounded. Indices read the bits most-significant first. Loss (official bsq-vit code):
zeta * (gamma0 * per-sample entropy - gamma * codebook entropy) + beta |u - sg(q)|^2,
with code probabilities softmax(-|u - c|^2 * inv_temperature) (log-odds
4 * inv_temperature * u_d / sqrt(D) per bit) and the codebook entropy factorized over
groups of at most `entropy_group_bits` bits, as in the paper's grouped approximation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.quantizers.core import (ImplicitCodebookQuantizer, binary_entropy_terms,
                                   bits_to_indices, indices_to_bits, l2_normalize,
                                   masked_mean, sg)
from vqlab.quantizers.estimators import straight_through
from vqlab.quantizers.lfq import resolve_bits

Array = jax.Array


class BSQ(ImplicitCodebookQuantizer):
  """Binary spherical quantization. Give `bits` or `codebook_size` (= 2**bits)."""

  def __init__(self, dim: int | None = None, *, bits: int | None = None,
               codebook_size: int | None = None, gamma0: float = 1.0, gamma: float = 1.0,
               zeta: float = 1.0, beta: float = 0.0, inv_temperature: float = 1.0,
               entropy_group_bits: int = 12, usage_decay: float = 0.99,
               usage_threshold: float = 1e-3, rngs: nnx.Rngs | None = None):
    bits = resolve_bits(bits, codebook_size)
    self.bits = bits
    self.gamma0, self.gamma, self.zeta, self.beta = gamma0, gamma, zeta, beta
    self.inv_temperature = inv_temperature
    if entropy_group_bits < 1:
      raise ValueError(f"entropy_group_bits: expected >= 1, got {entropy_group_bits}")
    self.entropy_group_bits = entropy_group_bits
    super().__init__(dim, bits, 2**bits, usage_decay=usage_decay,
                     usage_threshold=usage_threshold, rngs=rngs)

  def quantize_codes(self, h, mask):
    u = l2_normalize(h)
    level = self.bits**-0.5
    q = straight_through(u, jnp.where(u > 0, level, -level))
    flat_mask = None if mask is None else mask.reshape(-1)
    per_sample, codebook = binary_entropy_terms(
        4.0 * self.inv_temperature * level * u.reshape(-1, self.bits),
        self.entropy_group_bits, flat_mask)
    commitment = masked_mean(jnp.square(u - sg(q)), mask)
    loss = (self.zeta * (self.gamma0 * per_sample - self.gamma * codebook)
            + self.beta * commitment)
    return q, loss, {"per_sample_entropy": per_sample, "codebook_entropy": codebook,
                     "commitment": commitment}

  def codes_to_indices(self, codes):
    return bits_to_indices(codes > 0)

  def indices_to_codes(self, indices):
    return (indices_to_bits(indices, self.bits) * 2 - 1).astype(jnp.float32) * self.bits**-0.5
