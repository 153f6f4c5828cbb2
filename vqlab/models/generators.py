"""Token generators on one transformer (vqlab.nn.transformer):

- `NextTokenGenerator`: raster-order class-conditional generation (LlamaGen,
  https://arxiv.org/abs/2406.06525): input = [class embedding, tokens[:-1]], causal,
  2D RoPE over the token grid (the class slot at angle 0) or learned positions; over a
  video tokenizer's (t, h, w) tokens (`frames` > 1), frame by frame in raster order with 3D
  RoPE (MAGVIT-v2's video tokens modelled as LlamaGen models an image's); over an audio
  codec's frames with 1D RoPE. Tokens too large for one softmax or stacked per position
  get a bitwise or a depth head (token_heads.py: Infinity, Open-MAGVIT2, RQ-Transformer).
- `MaskedGenerator`: MaskGIT (https://arxiv.org/abs/2202.04200): a class token then
  all image tokens, bidirectional, `mask_id = vocab_size` for masked slots; with
  `bit_groups`, MaskBit's masked bit modelling of LFQ / BSQ tokens (groups of bits as
  slots, the bits themselves as input).
- `NextScaleGenerator`: VAR (https://arxiv.org/abs/2404.02905): the class embedding
  (+ pos_start) predicts scale 1, and word_embed(teacher-forcing features of the
  multi-scale quantizer) the later scales; block-causal by scale, learned level and
  position embeddings, AdaLN on the class embedding.
- `DelayPatternGenerator`: multi-codebook tokens (frames, K levels) of an audio codec
  with MusicGen's delay interleaving (Copet et al. 2023, https://arxiv.org/abs/2306.05284):
  level k is delayed by k steps, one step predicts all K levels with K heads, and the
  step's input is the sum of the K embeddings of the previous step; 1D RoPE over steps.

Labels equal to `num_classes` are the null class of classifier-free guidance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vqlab.models.token_heads import (BitwiseHead, CodeStack, DepthHead, bit_choices,
                                      bit_log_prob)
from vqlab.nn.transformer import (KVCache, Transformer, TransformerShape, embedding, linear,
                                  param, rope_1d, rope_2d, rope_3d)
from vqlab.quantizers.core import bits_to_indices, indices_to_bits

Array = jax.Array
POSITIONS = ("rope2d", "rope3d", "rope1d", "learned")


def _check_labels(labels: Array, num_classes: int) -> None:
  if labels.ndim != 1:
    raise ValueError(f"labels: expected (B,), got shape {labels.shape}")


def drop_labels(labels: Array, key: Array, rate: float, num_classes: int) -> Array:
  """Replace each label by the null class with probability `rate` (CFG training)."""
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), num_classes, labels)


HEADS = ("softmax", "bitwise", "depth")


class NextTokenGenerator(nnx.Module):
  """`head`: "softmax" over `vocab_size` codes (one index per position); "bitwise" (an
  LFQ / BSQ index as its bits) or "depth" (sub-tokens of an index, or a residual / grouped
  quantizer's stacked indices) over the sub-codes `stack` describes (token_heads.py), the
  depth transformer shaped by `depth_shape`. Over an audio codec's frames (`grid` 1,
  `frames` F) positions are 1D ("rope1d")."""

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               grid: int, *, frames: int = 1, positions: str = "rope2d", head: str = "softmax",
               stack: CodeStack | None = None, depth_shape: TransformerShape | None = None,
               rngs: nnx.Rngs):
    if positions not in POSITIONS:
      raise ValueError(f"positions: expected one of {POSITIONS}, got {positions!r}")
    if frames > 1 and positions == "rope2d":
      raise ValueError(f"positions: expected 'rope3d', 'rope1d' or 'learned' for {frames} "
                       "frames of tokens, got 'rope2d'")
    if head not in HEADS:
      raise ValueError(f"head: expected one of {HEADS}, got {head!r}")
    stack = CodeStack((vocab_size,)) if stack is None else stack
    if head == "softmax" and stack.depth != 1:
      raise ValueError(f"head: {stack.depth} codes per position need 'depth' (or 'bitwise' "
                       f"for bits), got 'softmax'")
    if head == "bitwise" and not stack.binary:
      raise ValueError(f"head: 'bitwise' models the bits of an LFQ / BSQ index, got sub-codes "
                       f"of sizes {stack.sizes}")
    if head == "depth" and depth_shape is None:
      raise ValueError("depth_shape: the 'depth' head needs its transformer's shape, got None")
    self.shape, self.vocab_size, self.num_classes, self.grid = shape, vocab_size, num_classes, grid
    self.positions, self.frames, self.head_kind, self.stack = positions, frames, head, stack
    self.seq_len = frames * grid * grid
    self.cls_embed = embedding(num_classes + 1, shape.width, (None, "embed"), rngs)
    if positions == "learned":
      self.pos_embed = param(0.02 * jax.random.normal(rngs.params(), (self.seq_len, shape.width)),
                             (None, "embed"))
    self.transformer = Transformer(shape, rngs)
    if head == "softmax":
      self.tok_embed = embedding(vocab_size, shape.width, ("vocab", "embed"), rngs)
      self.head = linear(shape.width, vocab_size, ("embed", "vocab"), rngs)
    elif head == "bitwise":
      self.head = BitwiseHead(shape.width, stack.depth, rngs)
    else:
      if depth_shape.width != shape.width:
        raise ValueError(f"depth_shape.width: expected the spatial width {shape.width}, got "
                         f"{depth_shape.width}")
      self.head = DepthHead(depth_shape, stack.sizes, rngs)

  def _angles(self, positions: Array) -> Array | None:
    """Input slot p holds token p-1 (slot 0: the class): its grid cell gives the angle."""
    if self.positions == "learned":
      return None
    cell, g, head_dim = jnp.maximum(positions - 1, 0), self.grid, self.shape.width // self.shape.heads
    if self.positions == "rope3d":
      angles = rope_3d(cell // (g * g), cell // g % g, cell % g, head_dim)
    elif self.positions == "rope1d":
      angles = rope_1d(cell, head_dim)
    else:
      angles = rope_2d(cell // g, cell % g, head_dim)
    return jnp.where((positions == 0)[..., None], 0.0, angles)[None]

  def embed_codes(self, codes: Array) -> Array:
    """Sub-code stacks (B, L, D) -> input embeddings (B, L, width), no positions."""
    if self.head_kind == "softmax":
      return self.tok_embed(codes[..., 0])
    return self.head.embed(codes)

  def embed(self, tokens: Array, labels: Array, codes: Array | None = None) -> Array:
    """Teacher-forcing inputs (B, N, D): the class, then tokens[:, :-1] (or the given
    sub-code stacks `codes` (B, N, D), e.g. with flipped bits)."""
    codes = self.stack.split(tokens) if codes is None else codes
    x = jnp.concatenate([self.cls_embed(labels)[:, None], self.embed_codes(codes[:, :-1])], 1)
    return self._add_positions(x, 0)

  def embed_class(self, labels: Array) -> Array:
    """Slot 0 alone (B, 1, D): the start of sampling."""
    return self._add_positions(self.cls_embed(labels)[:, None], 0)

  def embed_tokens(self, tokens: Array, start: Array | int) -> Array:
    """Tokens (B, L) (stacked: (B, L, D)) placed in slots start .. start + L - 1 (slot p
    holds token p - 1)."""
    return self.embed_stack(self.stack.split(tokens), start)

  def embed_stack(self, codes: Array, start: Array | int) -> Array:
    return self._add_positions(self.embed_codes(codes), start)

  def _add_positions(self, x: Array, start: Array | int) -> Array:
    if self.positions != "learned":
      return x  # RoPE rotates q and k inside attention instead
    return x + jax.lax.dynamic_slice_in_dim(self.pos_embed[...], start, x.shape[1])[None]

  def hidden(self, x: Array, offset: Array | int, cache: KVCache | None = None):
    """The spatial transformer's outputs (B, L, width) for input embeddings x (B, L, D) at
    slots offset..offset+L-1."""
    b, l, _ = x.shape
    positions = offset + jnp.arange(l)
    levels = jnp.broadcast_to(positions, (b, l))
    return self.transformer(x, levels, angles=self._angles(positions), cache=cache,
                            offset=offset)

  def step(self, x: Array, offset: Array | int, cache: KVCache | None = None):
    """Logits (softmax head) for input embeddings x (B, L, D) at slots offset..offset+L-1."""
    self._need_softmax("step")
    h, cache = self.hidden(x, offset, cache)
    return self.head(h).astype(jnp.float32), cache

  def sample_codes(self, h: Array, key: Array, pick) -> Array:
    """One position's sub-codes (B, D) from spatial outputs h (B', width)."""
    if self.head_kind == "softmax":
      return pick(self.head(h).astype(jnp.float32), key)[:, None]
    return self.head.sample(h, key, pick)

  def _need_softmax(self, what: str) -> None:
    if self.head_kind != "softmax":
      raise ValueError(f"{what}: logits over one vocabulary exist for the 'softmax' head; the "
                       f"{self.head_kind!r} head scores tokens with log_prob")

  def _check_tokens(self, tokens: Array) -> None:
    want = (self.seq_len, self.stack.depth) if self.stack.stacked else (self.seq_len,)
    if tokens.shape[1:] != want:
      raise ValueError(f"tokens: expected (B, {', '.join(map(str, want))}), got shape "
                       f"{tokens.shape}")

  def __call__(self, tokens: Array, labels: Array) -> Array:
    """Teacher forcing: logits (B, N, V) predicting tokens (B, N) in raster order."""
    self._need_softmax("__call__")
    _check_labels(labels, self.num_classes)
    self._check_tokens(tokens)
    logits, _ = self.step(self.embed(tokens, labels), 0)
    return logits

  def log_prob(self, tokens: Array, labels: Array, codes: Array | None = None
               ) -> tuple[Array, Array]:
    """Teacher forcing, any head: (log p(token_t | class, tokens_<t) (B, N), whether every
    sub-code is the argmax (B, N)). `codes` (B, N, D): other teacher-forcing inputs than
    the tokens' own (Infinity's bitwise self-correction flips some)."""
    _check_labels(labels, self.num_classes)
    self._check_tokens(tokens)
    targets = self.stack.split(tokens)
    h, _ = self.hidden(self.embed(tokens, labels, codes), 0)
    if self.head_kind == "softmax":
      logits = self.head(h).astype(jnp.float32)
      return (-optax.softmax_cross_entropy_with_integer_labels(logits, targets[..., 0]),
              jnp.argmax(logits, -1) == targets[..., 0])
    return self.head.log_prob(h, targets)


class MaskedGenerator(nnx.Module):
  """MaskGIT over `seq_len` slots, `mask_id = vocab_size` where masked.

  `bit_groups` = m > 0 is MaskBit's masked bit modelling (Weber et al. 2024,
  https://arxiv.org/abs/2409.16211, sec. 3.2) for 2^d-code LFQ / BSQ tokens: each token is
  m groups of d / m bits (most significant first), each group a slot of its own that is
  masked and predicted on its own (a softmax over 2^(d/m)); the input is embedding-free,
  a linear map of the token's d bits as +-1 with a masked group's bits set to 0.

  `grid`: tokens per side, or an image's token shape ((h, w), or (K,) for a 1D tokenizer:
  learned positions either way)."""

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               grid: int | tuple[int, ...], *, bit_groups: int = 0, rngs: nnx.Rngs):
    self.num_classes, self.shape = num_classes, shape
    self.token_shape = (grid, grid) if isinstance(grid, int) else tuple(grid)
    self.num_positions = math.prod(self.token_shape)
    bits = max(int(vocab_size).bit_length() - 1, 1)
    if bit_groups and (vocab_size != 2**bits or bits % bit_groups):
      raise ValueError(f"bit_groups: MaskBit splits the d bits of 2^d codes into equal "
                       f"groups; expected a divisor of d for {vocab_size} codes, got "
                       f"{bit_groups}")
    self.bit_groups = bit_groups
    # a slot's vocabulary: a token's, or one group of its bits
    self.stack = CodeStack((2**(bits // bit_groups),) * bit_groups if bit_groups
                           else (vocab_size,))
    self.vocab_size = self.stack.sizes[0]
    self.seq_len = self.num_positions * self.groups
    self.mask_id = self.vocab_size
    if bit_groups:
      self.bit_embed = linear(bits, shape.width, (None, "embed"), rngs)
    else:
      self.tok_embed = embedding(vocab_size + 1, shape.width, ("vocab", "embed"), rngs)
    self.cls_embed = embedding(num_classes + 1, shape.width, (None, "embed"), rngs)
    self.pos_embed = param(0.02 * jax.random.normal(rngs.params(),
                                                    (self.num_positions + 1, shape.width)),
                           (None, "embed"))
    self.transformer = Transformer(shape, rngs)
    self.head = linear(shape.width, self.groups * self.vocab_size, ("embed", "vocab"), rngs)

  @property
  def groups(self) -> int:
    """Slots per position: MaskBit's bit groups, else 1."""
    return self.stack.depth

  def to_slots(self, tokens: Array) -> Array:
    """Tokens (B, N) -> slots (B, N * groups)."""
    return self.stack.split(tokens).reshape(tokens.shape[0], -1)

  def from_slots(self, slots: Array) -> Array:
    """Slots (B, N * groups) -> tokens (B, N)."""
    return self.stack.join(slots.reshape(slots.shape[0], -1, self.groups))

  def _embed(self, slots: Array) -> Array:
    if not self.bit_groups:
      return self.tok_embed(slots)
    groups = slots.reshape(slots.shape[0], -1, self.groups)
    bits = indices_to_bits(groups, self.stack.sizes[0].bit_length() - 1) * 2.0 - 1.0
    bits = jnp.where((groups == self.mask_id)[..., None], 0.0, bits)  # masked: neither sign
    return self.bit_embed(bits.reshape(*groups.shape[:2], -1))

  def __call__(self, slots: Array, labels: Array) -> Array:
    """Slots (B, seq_len) with `mask_id` where masked -> logits (B, seq_len, vocab_size)."""
    _check_labels(labels, self.num_classes)
    x = jnp.concatenate([self.cls_embed(labels)[:, None], self._embed(slots)], 1)
    x = x + self.pos_embed[...][None]
    levels = jnp.zeros(x.shape[:2], jnp.int32)  # one level: bidirectional
    h, _ = self.transformer(x, levels)
    logits = self.head(h[:, 1:]).astype(jnp.float32)
    return logits.reshape(logits.shape[0], self.seq_len, self.vocab_size)


class NextScaleGenerator(nnx.Module):
  """VAR's transformer over the scales `patch_nums` of a `MultiScaleVQ` (latent width
  `latent_dim`, `vocab_size` codes). Use `TransformerShape(adaln=True, norm="layer",
  mlp="gelu", qk_norm="l2")` for VAR's architecture. `bitwise=True` is Infinity's
  bitwise next-scale model (https://arxiv.org/abs/2412.04431, sec. 3.2) for the binary
  multi-scale quantizer's 2^d codes: d bit logits per slot instead of a 2^d softmax (its
  input, the cumulative f_hat, already scales with d, not 2^d)."""

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               patch_nums: Sequence[int], latent_dim: int, *, bitwise: bool = False,
               rngs: nnx.Rngs):
    bits = max(int(vocab_size).bit_length() - 1, 1)
    if bitwise and vocab_size != 2**bits:
      raise ValueError(f"vocab_size: the bitwise head predicts the d bits of 2^d codes, got "
                       f"{vocab_size}")
    self.bits = bits if bitwise else 0
    self.shape, self.vocab_size, self.num_classes = shape, vocab_size, num_classes
    self.patch_nums = tuple(int(p) for p in patch_nums)
    self.seq_len = sum(p * p for p in self.patch_nums)
    self.first_len = self.patch_nums[0] ** 2
    self.levels = jnp.asarray(np.repeat(np.arange(len(self.patch_nums)),
                                        [p * p for p in self.patch_nums]), jnp.int32)
    w = shape.width
    init = lambda n: param(0.02 * jax.random.normal(rngs.params(), (n, w)), (None, "embed"))
    self.cls_embed = embedding(num_classes + 1, w, (None, "embed"), rngs)
    self.pos_start = init(self.first_len)
    self.pos_embed = init(self.seq_len)
    self.lvl_embed = embedding(len(self.patch_nums), w, (None, "embed"), rngs)
    self.word_embed = linear(latent_dim, w, (None, "embed"), rngs)
    self.transformer = Transformer(shape, rngs)
    self.head = (linear(w, self.bits, ("embed", None), rngs) if bitwise
                 else linear(w, vocab_size, ("embed", "vocab"), rngs))

  def embed(self, labels: Array, features: Array, start: int) -> Array:
    """Input embeddings of slots start..start+L-1. Slots of scale 1 come from the class;
    `features` (B, L', latent_dim) are the teacher-forcing inputs of the later slots."""
    parts = []
    if start == 0:
      parts.append(jnp.broadcast_to(self.cls_embed(labels)[:, None] + self.pos_start[...][None],
                                    (labels.shape[0], self.first_len, self.shape.width)))
    if features.shape[1]:
      parts.append(self.word_embed(features.astype(jnp.float32)))
    x = jnp.concatenate(parts, 1)
    l = x.shape[1]
    lvl = jax.lax.dynamic_slice_in_dim(self.levels, start, l)
    return x + self.lvl_embed(lvl)[None] + jax.lax.dynamic_slice_in_dim(
        self.pos_embed[...], start, l)[None]

  def step(self, x: Array, labels: Array, offset: int, cache: KVCache | None = None):
    b, l, _ = x.shape
    levels = jnp.broadcast_to(jax.lax.dynamic_slice_in_dim(self.levels, offset, l), (b, l))
    h, cache = self.transformer(x, levels, cond=self.cls_embed(labels), cache=cache,
                                offset=offset)
    return self.head(h).astype(jnp.float32), cache

  def __call__(self, labels: Array, features: Array) -> Array:
    """Teacher forcing: logits (B, L, V) (bitwise: bit logits (B, L, d)) for all scales,
    from the multi-scale quantizer's `teacher_forcing_input(indices)` (B, L - first_len,
    latent_dim)."""
    _check_labels(labels, self.num_classes)
    want = self.seq_len - self.first_len
    if features.ndim != 3 or features.shape[1] != want:
      raise ValueError(f"features: expected (B, {want}, latent_dim), got shape {features.shape}")
    logits, _ = self.step(self.embed(labels, features, 0), labels, 0)
    return logits

  def log_prob(self, labels: Array, features: Array, indices: Array) -> tuple[Array, Array]:
    """(log p(index), predicted right) per slot (B, L); bitwise: the sum over its bits."""
    logits = self(labels, features)
    if not self.bits:
      return (-optax.softmax_cross_entropy_with_integer_labels(logits, indices),
              jnp.argmax(logits, -1) == indices)
    return bit_log_prob(logits, indices_to_bits(indices, self.bits))

  def pick_slots(self, logits: Array, pick) -> Array:
    """Indices (B, L) from step logits with `pick(logits (.., K)) -> (..)` sampling over
    the last axis: the index itself, or each bit from its 2-way [0, logit] (guidance and
    filtering per bit) packed most significant first."""
    if not self.bits:
      return pick(logits)
    return bits_to_indices(pick(bit_choices(logits)))


def delay_pattern(codes: Array, pad: int) -> Array:
  """codes (B, F, K) -> the delayed sequence (B, F + K - 1, K): entry [t, k] is
  codes[t - k, k], or `pad` where t - k falls outside the frames."""
  b, f, k = codes.shape
  t = jnp.arange(f + k - 1)[:, None] - jnp.arange(k)[None, :]  # source frame of [t, k]
  gathered = jnp.take_along_axis(codes, jnp.clip(t, 0, f - 1)[None].repeat(b, 0), axis=1)
  return jnp.where(((t >= 0) & (t < f))[None], gathered, pad)


def undelay_pattern(sequence: Array, frames: int) -> Array:
  """Inverse of `delay_pattern`: (B, F + K - 1, K) -> codes (B, F, K)."""
  k = sequence.shape[-1]
  t = jnp.arange(frames)[:, None] + jnp.arange(k)[None, :]
  return jnp.take_along_axis(sequence, t[None].repeat(sequence.shape[0], 0), axis=1)


class DelayPatternGenerator(nnx.Module):
  """Step t's input: the class embedding (t = 0) or the sum over levels of the delayed
  tokens of step t - 1; its K heads predict step t of the delay pattern. `pad_id` =
  vocab_size marks the pattern's empty corners (never a target)."""

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               frames: int, levels: int, *, rngs: nnx.Rngs):
    if frames < 1 or levels < 1:
      raise ValueError(f"frames, levels: expected >= 1, got {frames}, {levels}")
    self.shape, self.vocab_size, self.num_classes = shape, vocab_size, num_classes
    self.frames, self.levels = frames, levels
    self.pad_id = vocab_size
    self.seq_len = frames + levels - 1
    self.tok_embed = nnx.List([embedding(vocab_size + 1, shape.width, ("vocab", "embed"), rngs)
                               for _ in range(levels)])
    self.cls_embed = embedding(num_classes + 1, shape.width, (None, "embed"), rngs)
    self.transformer = Transformer(shape, rngs)
    self.heads = nnx.List([linear(shape.width, vocab_size, ("embed", "vocab"), rngs)
                           for _ in range(levels)])

  def embed_step(self, pattern: Array) -> Array:
    """Delayed tokens (B, L, K) -> summed embeddings (B, L, D)."""
    return sum(self.tok_embed[k](pattern[..., k]) for k in range(self.levels))

  def embed(self, pattern: Array, labels: Array) -> Array:
    """Teacher-forcing inputs (B, S, D): the class, then steps 0 .. S - 2."""
    return jnp.concatenate([self.cls_embed(labels)[:, None], self.embed_step(pattern[:, :-1])], 1)

  def step(self, x: Array, offset: Array | int, cache: KVCache | None = None):
    """Logits (B, L, K, V) for input embeddings x (B, L, D) at steps offset .. offset+L-1."""
    b, l, _ = x.shape
    positions = offset + jnp.arange(l)
    angles = rope_1d(positions, self.shape.width // self.shape.heads)[None]
    h, cache = self.transformer(x, jnp.broadcast_to(positions, (b, l)), angles=angles,
                                cache=cache, offset=offset)
    logits = jnp.stack([head(h) for head in self.heads], axis=2)
    return logits.astype(jnp.float32), cache

  def __call__(self, codes: Array, labels: Array) -> tuple[Array, Array]:
    """Teacher forcing on codes (B, F, K): (logits (B, S, K, V), targets (B, S, K) with
    `pad_id` where the pattern is empty)."""
    _check_labels(labels, self.num_classes)
    if codes.ndim != 3 or codes.shape[1:] != (self.frames, self.levels):
      raise ValueError(f"codes: expected (B, {self.frames}, {self.levels}), got shape "
                       f"{codes.shape}")
    pattern = delay_pattern(codes, self.pad_id)
    logits, _ = self.step(self.embed(pattern, labels), 0)
    return logits, pattern
