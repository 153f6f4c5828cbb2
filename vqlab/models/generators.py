"""Token generators on one transformer (vqlab.nn.transformer):

- `NextTokenGenerator`: raster-order class-conditional generation (LlamaGen,
  https://arxiv.org/abs/2406.06525): input = [class embedding, tokens[:-1]], causal,
  2D RoPE over the token grid (the class slot at angle 0) or learned positions; over a
  video tokenizer's (t, h, w) tokens (`frames` > 1), frame by frame in raster order with 3D
  RoPE (MAGVIT-v2's video tokens modelled as LlamaGen models an image's).
- `MaskedGenerator`: MaskGIT (https://arxiv.org/abs/2202.04200): a class token then
  all image tokens, bidirectional, `mask_id = vocab_size` for masked slots.
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

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.nn.transformer import (KVCache, Transformer, TransformerShape, embedding, linear,
                                  param, rope_1d, rope_2d, rope_3d)

Array = jax.Array
POSITIONS = ("rope2d", "rope3d", "learned")


def _check_labels(labels: Array, num_classes: int) -> None:
  if labels.ndim != 1:
    raise ValueError(f"labels: expected (B,), got shape {labels.shape}")


def drop_labels(labels: Array, key: Array, rate: float, num_classes: int) -> Array:
  """Replace each label by the null class with probability `rate` (CFG training)."""
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), num_classes, labels)


class NextTokenGenerator(nnx.Module):

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               grid: int, *, frames: int = 1, positions: str = "rope2d", rngs: nnx.Rngs):
    if positions not in POSITIONS:
      raise ValueError(f"positions: expected one of {POSITIONS}, got {positions!r}")
    if frames > 1 and positions == "rope2d":
      raise ValueError(f"positions: expected 'rope3d' or 'learned' for video tokens ({frames} "
                       "latent frames), got 'rope2d'")
    self.shape, self.vocab_size, self.num_classes, self.grid = shape, vocab_size, num_classes, grid
    self.positions, self.frames = positions, frames
    self.seq_len = frames * grid * grid
    self.tok_embed = embedding(vocab_size, shape.width, ("vocab", "embed"), rngs)
    self.cls_embed = embedding(num_classes + 1, shape.width, (None, "embed"), rngs)
    if positions == "learned":
      self.pos_embed = param(0.02 * jax.random.normal(rngs.params(), (self.seq_len, shape.width)),
                             (None, "embed"))
    self.transformer = Transformer(shape, rngs)
    self.head = linear(shape.width, vocab_size, ("embed", "vocab"), rngs)

  def _angles(self, positions: Array) -> Array | None:
    """Input slot p holds token p-1 (slot 0: the class): its grid cell gives the angle."""
    if self.positions == "learned":
      return None
    cell, g, head_dim = jnp.maximum(positions - 1, 0), self.grid, self.shape.width // self.shape.heads
    if self.positions == "rope3d":
      angles = rope_3d(cell // (g * g), cell // g % g, cell % g, head_dim)
    else:
      angles = rope_2d(cell // g, cell % g, head_dim)
    return jnp.where((positions == 0)[..., None], 0.0, angles)[None]

  def embed(self, tokens: Array, labels: Array) -> Array:
    """Teacher-forcing inputs (B, N, D): the class, then tokens[:, :-1]."""
    x = jnp.concatenate([self.cls_embed(labels)[:, None], self.tok_embed(tokens[:, :-1])], 1)
    return self._add_positions(x, 0)

  def embed_class(self, labels: Array) -> Array:
    """Slot 0 alone (B, 1, D): the start of sampling."""
    return self._add_positions(self.cls_embed(labels)[:, None], 0)

  def embed_tokens(self, tokens: Array, start: Array | int) -> Array:
    """Tokens (B, L) placed in slots start .. start + L - 1 (slot p holds token p - 1)."""
    return self._add_positions(self.tok_embed(tokens), start)

  def _add_positions(self, x: Array, start: Array | int) -> Array:
    if self.positions != "learned":
      return x  # RoPE rotates q and k inside attention instead
    return x + jax.lax.dynamic_slice_in_dim(self.pos_embed[...], start, x.shape[1])[None]

  def step(self, x: Array, offset: Array | int, cache: KVCache | None = None):
    """Logits for input embeddings x (B, L, D) at slots offset..offset+L-1."""
    b, l, _ = x.shape
    positions = offset + jnp.arange(l)
    levels = jnp.broadcast_to(positions, (b, l))
    h, cache = self.transformer(x, levels, angles=self._angles(positions), cache=cache,
                                offset=offset)
    return self.head(h).astype(jnp.float32), cache

  def __call__(self, tokens: Array, labels: Array) -> Array:
    """Teacher forcing: logits (B, N, V) predicting tokens (B, N) in raster order."""
    _check_labels(labels, self.num_classes)
    if tokens.shape[1] != self.seq_len:
      raise ValueError(f"tokens: expected (B, {self.seq_len}), got shape {tokens.shape}")
    logits, _ = self.step(self.embed(tokens, labels), 0)
    return logits


class MaskedGenerator(nnx.Module):

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int, grid: int,
               *, rngs: nnx.Rngs):
    self.shape, self.vocab_size, self.num_classes, self.grid = shape, vocab_size, num_classes, grid
    self.seq_len = grid * grid
    self.mask_id = vocab_size
    self.tok_embed = embedding(vocab_size + 1, shape.width, ("vocab", "embed"), rngs)
    self.cls_embed = embedding(num_classes + 1, shape.width, (None, "embed"), rngs)
    self.pos_embed = param(0.02 * jax.random.normal(rngs.params(), (self.seq_len + 1, shape.width)),
                           (None, "embed"))
    self.transformer = Transformer(shape, rngs)
    self.head = linear(shape.width, vocab_size, ("embed", "vocab"), rngs)

  def __call__(self, tokens: Array, labels: Array) -> Array:
    """tokens (B, N) with `mask_id` where masked -> logits (B, N, V) for every slot."""
    _check_labels(labels, self.num_classes)
    x = jnp.concatenate([self.cls_embed(labels)[:, None], self.tok_embed(tokens)], 1)
    x = x + self.pos_embed[...][None]
    levels = jnp.zeros(x.shape[:2], jnp.int32)  # one level: bidirectional
    h, _ = self.transformer(x, levels)
    return self.head(h[:, 1:]).astype(jnp.float32)


class NextScaleGenerator(nnx.Module):
  """VAR's transformer over the scales `patch_nums` of a `MultiScaleVQ` (latent width
  `latent_dim`, `vocab_size` codes). Use `TransformerShape(adaln=True, norm="layer",
  mlp="gelu", qk_norm="l2")` for VAR's architecture."""

  def __init__(self, shape: TransformerShape, vocab_size: int, num_classes: int,
               patch_nums: Sequence[int], latent_dim: int, *, rngs: nnx.Rngs):
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
    self.head = linear(w, vocab_size, ("embed", "vocab"), rngs)

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
    """Teacher forcing: logits (B, L, V) for all scales, from the multi-scale
    quantizer's `teacher_forcing_input(indices)` (B, L - first_len, latent_dim)."""
    _check_labels(labels, self.num_classes)
    want = self.seq_len - self.first_len
    if features.ndim != 3 or features.shape[1] != want:
      raise ValueError(f"features: expected (B, {want}, latent_dim), got shape {features.shape}")
    logits, _ = self.step(self.embed(labels, features, 0), labels, 0)
    return logits


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
