"""Heads for generators whose token is more than one softmax can hold.

A position's token is a stack of D sub-codes with vocabularies `CodeStack.sizes`:
- one index (D = 1): the full softmax of the generators (their own `head`);
- the d bits of an LFQ / BSQ index: `BitwiseHead` (Infinity, Han et al. 2024,
  https://arxiv.org/abs/2412.04431, sec. 3.2): d independent binary classifiers on the
  transformer's output, and the token's +-1 code vector (not an embedding table) as its
  input, so both sides grow with d, not with 2^d;
- sub-tokens of one index (Open-MAGVIT2, Luo et al. 2024, https://arxiv.org/abs/2409.04410,
  "asymmetric token factorization": 2^18 codes as 2^6 x 2^12) or the D indices of a
  residual / grouped quantizer (RQ-Transformer, Lee et al. 2022,
  https://arxiv.org/abs/2203.01941): `DepthHead`, a small causal transformer over the D
  sub-codes of each position started from the spatial transformer's output
  (RQ-Transformer's depth transformer, sec. 3.2.2; Open-MAGVIT2's next-sub-token head).

Every head scores log p(token | context) = sum_d log p(c_d | context, c_<d) (bitwise: the
bits are independent given the context) and samples a stack inside jit; `pick(logits,
key)` does the guidance and filtering (vqlab.models.sampling), per bit or per sub-token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vqlab.nn.transformer import Transformer, TransformerShape, embedding, linear, param

Array = jax.Array
Pick = Callable[[Array, Array], Array]  # (logits (B' , V), key) -> codes (B,)


@dataclasses.dataclass(frozen=True)
class CodeStack:
  """What one position's token is: D sub-codes with vocabularies `sizes`. `stacked`: the
  tokenizer gives the D indices itself (residual / grouped quantizers, tokens (..., D));
  otherwise it gives one index per position, read as mixed-radix digits, most significant
  first (LFQ / BSQ bits, most significant first as their indices; or sub-tokens)."""
  sizes: tuple[int, ...]
  stacked: bool = False

  def __post_init__(self):
    if not self.sizes or any(int(s) < 2 for s in self.sizes):
      raise ValueError(f"sizes: expected vocabularies >= 2, got {self.sizes}")
    if not self.stacked and math.prod(self.sizes) > 2**31:
      raise ValueError(f"sizes: one int32 index holds at most 2^31 codes, got "
                       f"{math.prod(self.sizes)}")

  @property
  def depth(self) -> int:
    return len(self.sizes)

  @property
  def binary(self) -> bool:
    return not self.stacked and all(s == 2 for s in self.sizes)

  def split(self, tokens: Array) -> Array:
    """Tokens as the tokenizer gives them ((..., ) or stacked (..., D)) -> (..., D)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if self.stacked:
      if tokens.shape[-1] != self.depth:
        raise ValueError(f"tokens: expected a last axis of {self.depth} stacked indices, got "
                         f"shape {tokens.shape}")
      return tokens
    digits, rest = [], tokens
    for size in reversed(self.sizes):
      digits.append(rest % size)
      rest = rest // size
    return jnp.stack(digits[::-1], -1)

  def join(self, codes: Array) -> Array:
    """Inverse of `split`."""
    if self.stacked:
      return codes
    out = codes[..., 0]
    for d in range(1, self.depth):
      out = out * self.sizes[d] + codes[..., d]
    return out


def _gather(log_probs: Array, codes: Array) -> Array:
  return jnp.take_along_axis(log_probs, codes[..., None], -1)[..., 0]


def bit_log_prob(logits: Array, bits: Array) -> tuple[Array, Array]:
  """(sum of the bits' log-likelihoods, every bit right) for bit logits (..., d) and
  bits (..., d) in {0, 1}: the log-probability of independent bits."""
  signed = jnp.where(bits > 0, logits, -logits)
  return jnp.sum(jax.nn.log_sigmoid(signed), -1), jnp.all(signed > 0, -1)


def bit_choices(logits: Array) -> Array:
  """Bit logits (..., d) as d 2-way distributions (..., d, 2) = [0, logit], so that one
  sampler (guidance, temperature, top-k / top-p) draws each bit."""
  return jnp.stack([jnp.zeros_like(logits), logits], -1)


class BitwiseHead(nnx.Module):
  """Infinity's bitwise head: input Linear(+-1 bits -> width), output d bit logits."""

  def __init__(self, width: int, bits: int, rngs: nnx.Rngs):
    self.bits = bits
    self.embed_bits = linear(bits, width, (None, "embed"), rngs)
    self.proj = linear(width, bits, ("embed", None), rngs)

  def embed(self, codes: Array) -> Array:
    return self.embed_bits(2.0 * codes.astype(jnp.float32) - 1.0)

  def bit_logits(self, h: Array) -> Array:
    """(..., d) logits of each bit being 1."""
    return self.proj(h).astype(jnp.float32)

  def log_prob(self, h: Array, codes: Array) -> tuple[Array, Array]:
    """(log p(token) = sum of the bits' log-likelihoods, every bit right) per position."""
    return bit_log_prob(self.bit_logits(h), codes)

  def sample(self, h: Array, key: Array, pick: Pick) -> Array:
    """Every bit at once from its own 2-way distribution [0, logit] (guidance, temperature,
    top-k / top-p apply per bit); h (B', width) -> bits (B, d)."""
    return pick(bit_choices(self.bit_logits(h)), key)


class DepthHead(nnx.Module):
  """RQ-Transformer's depth transformer. Its input at depth 0 is the spatial output h_t,
  at depth d > 0 the sum of the embeddings of the sub-codes c_<d (RQ-Transformer eq. 8),
  each plus a learned depth position; causal over depth; one linear head per depth."""

  def __init__(self, shape: TransformerShape, sizes: tuple[int, ...], rngs: nnx.Rngs):
    self.sizes, self.shape = tuple(int(s) for s in sizes), shape
    w = shape.width
    self.code_embed = nnx.List([embedding(s, w, ("vocab", "embed"), rngs) for s in self.sizes])
    self.depth_pos = param(0.02 * jax.random.normal(rngs.params(), (len(self.sizes), w)),
                           (None, "embed"))
    self.transformer = Transformer(shape, rngs)
    self.heads = nnx.List([linear(w, s, ("embed", "vocab"), rngs) for s in self.sizes])

  def embed(self, codes: Array) -> Array:
    """The spatial transformer's input for a position's stack: the sum of its sub-codes'
    embeddings (RQ-Transformer: the quantized feature's stand-in)."""
    return sum(self.code_embed[d](codes[..., d]) for d in range(len(self.sizes)))

  def _depth_inputs(self, h: Array, codes: Array, length: int) -> Array:
    """(..., length, width): h at depth 0, cumulative code embeddings after."""
    parts = [h[..., None, :]]
    total = 0.0
    for d in range(length - 1):
      total = total + self.code_embed[d](codes[..., d])
      parts.append(total[..., None, :].astype(h.dtype))
    return jnp.concatenate(parts, -2) + self.depth_pos[...][:length].astype(h.dtype)

  def _run(self, u: Array) -> Array:
    lead, (length, w) = u.shape[:-2], u.shape[-2:]
    flat = u.reshape(-1, length, w)
    levels = jnp.broadcast_to(jnp.arange(length), flat.shape[:2])
    out, _ = self.transformer(flat, levels)
    return out.reshape(*lead, length, w)

  def log_prob(self, h: Array, codes: Array) -> tuple[Array, Array]:
    out = self._run(self._depth_inputs(h, codes, len(self.sizes)))
    logp, hit = 0.0, True
    for d, head in enumerate(self.heads):
      logits = head(out[..., d, :]).astype(jnp.float32)
      logp = logp - optax.softmax_cross_entropy_with_integer_labels(logits, codes[..., d])
      hit = hit & (jnp.argmax(logits, -1) == codes[..., d])
    return logp, hit

  def sample(self, h: Array, key: Array, pick: Pick) -> Array:
    """Sub-code by sub-code (the depth transformer is re-run on the prefix: D is small);
    h (B', width) -> codes (B, D). With guidance h holds the conditional rows then the
    unconditional ones, and each sampled sub-code is fed to both."""
    rows = h.shape[0]
    codes = jnp.zeros((rows, len(self.sizes)), jnp.int32)
    for d, head in enumerate(self.heads):
      key, sub = jax.random.split(key)
      out = self._run(self._depth_inputs(h, codes, d + 1))[:, d]
      picked = pick(head(out).astype(jnp.float32), sub)
      codes = codes.at[:, d].set(jnp.tile(picked, rows // picked.shape[0]))
    return codes[:picked.shape[0]]
