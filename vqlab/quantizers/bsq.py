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
from flax import nnx

from vqlab.quantizers.core import check_weight, l2_normalize
from vqlab.quantizers.lfq import BinaryQuantizer, resolve_bits

Array = jax.Array


class BSQ(BinaryQuantizer):
  """Binary spherical quantization. Give `bits` or `codebook_size` (= 2**bits).

  Defaults are the official code's: gamma0 = gamma = zeta = 1, inv_temperature 1.
  """

  def __init__(self, dim: int | None = None, *, bits: int | None = None,
               codebook_size: int | None = None, gamma0: float = 1.0, gamma: float = 1.0,
               zeta: float = 1.0, beta: float = 0.0, inv_temperature: float = 1.0,
               entropy_group_bits: int = 12, usage_decay: float = 0.99,
               usage_threshold: float = 1e-3, rngs: nnx.Rngs | None = None):
    self.gamma0, self.gamma, self.zeta = gamma0, gamma, zeta
    self.beta = check_weight("beta", beta)
    n_bits = resolve_bits(bits, codebook_size)
    super().__init__(dim, n_bits, None, level=n_bits**-0.5, inv_temperature=inv_temperature,
                     entropy_group_bits=entropy_group_bits, usage_decay=usage_decay,
                     usage_threshold=usage_threshold, rngs=rngs)

  def quantize_codes(self, h, mask):
    q, terms = self.binary_codes(l2_normalize(h), mask)
    loss = (self.zeta * (self.gamma0 * terms["per_sample_entropy"]
                         - self.gamma * terms["codebook_entropy"])
            + self.beta * terms["commitment"])
    return q, loss, terms
