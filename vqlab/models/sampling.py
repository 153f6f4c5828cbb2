"""Sampling for the token generators, each a pure function of (model, labels, key) that
runs inside `jit`: logit filtering (temperature, top-k, top-p), classifier-free
guidance, raster decoding with the KV cache, VAR's scale-by-scale decoding with the
cache and guidance ramped over scales, and MaskGIT's iterative parallel decoding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.models.generators import (DelayPatternGenerator, MaskedGenerator, NextScaleGenerator,
                                     NextTokenGenerator, delay_pattern, undelay_pattern)
from vqlab.nn.transformer import KVCache

Array = jax.Array


def guide(cond: Array, uncond: Array, scale: Array | float) -> Array:
  """uncond + s (cond - uncond), written so that s = 1 returns `cond` exactly."""
  return cond + (scale - 1.0) * (cond - uncond)


def filter_logits(logits: Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """Scaled logits with everything outside the top-k / nucleus set to -inf."""
  if temperature <= 0:
    raise ValueError(f"temperature: expected > 0, got {temperature}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p: expected in (0, 1], got {top_p}")
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # drop a token when the mass before it already reaches top_p (the first always stays)
    drop_sorted = (jnp.cumsum(probs, -1) - probs) >= top_p
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), -1)
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


def sample_logits(key: Array, logits: Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(
      jnp.int32)


def eval_copy(model):
  """A copy in eval mode: sampling never mutates the caller's model (also under jit)."""
  model = nnx.merge(*nnx.split(model), copy=True)
  model.eval()
  return model


def _with_null(labels: Array, num_classes: int, guided: bool) -> Array:
  return jnp.concatenate([labels, jnp.full_like(labels, num_classes)]) if guided else labels


def _pick(logits: Array, key: Array, b: int, guided: bool, scale, **kw) -> Array:
  """Sample rows (b of them; with guidance the conditional rows then the unconditional)
  of logits (.., V) over the last axis."""
  if guided:
    logits = guide(logits[:b], logits[b:], scale)
  return sample_logits(key, logits, **kw)


def sample_next_token(model: NextTokenGenerator, labels: Array, key: Array, *,
                      cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, prompt: Array | None = None) -> Array:
  """Raster-order sampling with the KV cache: tokens (B, N) (stacked: (B, N, D)), each
  position's sub-codes drawn by the model's head (per bit, per sub-token or per level
  where the head is bitwise or depth; guidance and filtering apply to each). `prompt`
  (B, P) (stacked (B, P, D)): the first P tokens are given, not sampled (a video's first
  latent frame: frame prediction; an utterance's first frames). Call inside or outside jit."""
  model = eval_copy(model)
  b, n, guided = labels.shape[0], model.seq_len, cfg_scale != 1.0
  depth = model.stack.depth
  given = jnp.zeros((b, n, depth), jnp.int32)
  num_given = 0
  if prompt is not None:
    ndim = 3 if model.stack.stacked else 2
    if (prompt.ndim != ndim or prompt.shape[0] != b or prompt.shape[1] > n
        or prompt.shape[2:] != ((depth,) if model.stack.stacked else ())):
      raise ValueError(f"prompt: expected (B={b}, P <= {n}"
                       f"{f', {depth}' if model.stack.stacked else ''}), got shape "
                       f"{prompt.shape}")
    given = given.at[:, :prompt.shape[1]].set(model.stack.split(prompt))
    num_given = prompt.shape[1]
  keep = lambda i, codes: jnp.where(i < num_given, given[:, i], codes)
  pick = functools.partial(_pick, b=b, guided=guided, scale=cfg_scale, temperature=temperature,
                           top_k=top_k, top_p=top_p)
  lab = _with_null(labels, model.num_classes, guided)
  cache = KVCache.empty(model.shape, lab.shape[0], n)
  h, cache = model.hidden(model.embed_class(lab), 0, cache)
  key, sub = jax.random.split(key)
  codes = given.at[:, 0].set(keep(0, model.sample_codes(h[:, -1], sub, pick)))
  graphdef, state = nnx.split(model)

  def body(i, carry):
    codes, cache, key = carry
    m = nnx.merge(graphdef, state)
    prev = jax.lax.dynamic_slice_in_dim(codes, i - 1, 1, axis=1)
    prev = jnp.concatenate([prev, prev]) if guided else prev
    h, cache = m.hidden(m.embed_stack(prev, i), i, cache)
    key, sub = jax.random.split(key)
    new = keep(i, m.sample_codes(h[:, -1], sub, pick))
    return jax.lax.dynamic_update_slice_in_dim(codes, new[:, None], i, axis=1), cache, key

  codes, _, _ = jax.lax.fori_loop(1, n, body, (codes, cache, key))
  return model.stack.join(codes)


def sample_next_scale(model: NextScaleGenerator, quantizer, labels: Array, key: Array, *,
                      cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0) -> Array:
  """VAR's sampling: one scale at a time with the KV cache; guidance ramps linearly from
  none at the first scale to `cfg_scale` - 1 extra at the last (VAR's `t = cfg * ratio`
  with s = 1 + t). Returns indices (B, sum pn^2) for `quantizer.decode`; a bitwise model
  samples each bit (guidance and filtering per bit)."""
  model = eval_copy(model)
  b, guided = labels.shape[0], cfg_scale != 1.0
  kw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  lab = _with_null(labels, model.num_classes, guided)
  cache = KVCache.empty(model.shape, lab.shape[0], model.seq_len)
  indices = jnp.zeros((b, model.seq_len), jnp.int32)
  offset, stages = 0, len(model.patch_nums)
  for si, pn in enumerate(model.patch_nums):
    if si == 0:
      x = model.embed(lab, jnp.zeros((lab.shape[0], 0, model.word_embed.in_features)), 0)
    else:  # the cumulative f_hat of the scales so far, at this scale's resolution
      start = offset - model.first_len
      feats = quantizer.teacher_forcing_input(indices)[:, start:start + pn * pn]
      x = model.embed(lab, jnp.concatenate([feats, feats]) if guided else feats, offset)
    logits, cache = model.step(x, lab, offset, cache)
    key, sub = jax.random.split(key)
    scale = 1.0 + (cfg_scale - 1.0) * si / max(stages - 1, 1)
    idx = model.pick_slots(logits, lambda l: _pick(l, sub, b, guided, scale, **kw))
    indices = indices.at[:, offset:offset + pn * pn].set(idx)
    offset += pn * pn
  return indices


MASK_SCHEDULES = ("cosine", "linear", "square")


def mask_schedule(ratio: Array | float, kind: str = "cosine") -> Array:
  """The fraction of tokens still masked at progress `ratio` in [0, 1] (MaskGIT, Chang et
  al. 2022, arXiv 2202.04200, Sec. 3.2): cosine cos(pi/2 r) (its choice), linear 1 - r,
  square 1 - r^2."""
  r = jnp.asarray(ratio, jnp.float32)
  if kind == "cosine":
    return jnp.cos(0.5 * math.pi * r)
  if kind == "linear":
    return 1.0 - r
  if kind == "square":
    return 1.0 - r * r
  raise ValueError(f"schedule: expected one of {MASK_SCHEDULES}, got {kind!r}")


def random_mask(key: Array, batch: int, length: int) -> Array:
  """Training masks (B, N) bool: ceil(cos(pi/2 r) N) random slots per row, r ~ U(0, 1)."""
  k1, k2 = jax.random.split(key)
  count = jnp.clip(jnp.ceil(mask_schedule(jax.random.uniform(k1, (batch,))) * length), 1, length)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(k2, (batch, length)), -1), -1)
  return rank < count[:, None]


def sample_masked(model: MaskedGenerator, labels: Array, key: Array, *, steps: int = 8,
                  cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, choice_temperature: float = 4.5,
                  schedule: str = "cosine") -> Array:
  """MaskGIT decoding of a `MaskedGenerator` (`masked_decoding`); tokens (B, N)."""
  mask_schedule(0.0, schedule)  # an unknown schedule fails here, not mid-loop
  model = eval_copy(model)
  b, guided = labels.shape[0], cfg_scale != 1.0
  lab = _with_null(labels, model.num_classes, guided)

  def logits_fn(tokens):
    logits = model(jnp.concatenate([tokens, tokens]) if guided else tokens, lab)
    return guide(logits[:b], logits[b:], cfg_scale) if guided else logits

  return masked_decoding(logits_fn, b, model.seq_len, model.mask_id, key, steps=steps,
                         temperature=temperature, top_k=top_k, top_p=top_p,
                         choice_temperature=choice_temperature, schedule=schedule)


def masked_decoding(logits_fn, batch: int, n: int, mask_id: int, key: Array, *, steps: int,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    choice_temperature: float = 4.5, schedule: str = "cosine") -> Array:
  """MaskGIT's iterative decoding (Chang et al. 2022, arXiv 2202.04200, Sec. 3.2): start
  all `mask_id`; each step samples every masked slot from `logits_fn(tokens)` (B, N, V),
  keeps the most confident (log-prob + annealed Gumbel noise) and re-masks the rest so
  that mask_schedule((t+1)/T) N stay masked (cosine: cos(pi/2 (t+1)/T) N); tokens (B, N)."""
  tokens = jnp.full((batch, n), mask_id, jnp.int32)
  for t in range(steps):
    key, k_sample, k_noise = jax.random.split(key, 3)
    filtered = filter_logits(logits_fn(tokens), temperature, top_k, top_p)
    sampled = jax.random.categorical(k_sample, filtered).astype(jnp.int32)
    unknown = tokens == mask_id
    sampled = jnp.where(unknown, sampled, tokens)
    logp = jnp.take_along_axis(jax.nn.log_softmax(filtered, -1), sampled[..., None], -1)[..., 0]
    ratio = (t + 1) / steps
    confidence = logp + choice_temperature * (1 - ratio) * jax.random.gumbel(k_noise, (batch, n))
    confidence = jnp.where(unknown, confidence, jnp.inf)  # decided tokens stay
    n_unknown = jnp.sum(unknown, -1, keepdims=True)
    n_mask = jnp.floor(mask_schedule(ratio, schedule) * n).astype(jnp.int32)
    n_mask = jnp.maximum(0, jnp.minimum(n_unknown - 1, n_mask)) if t < steps - 1 else 0 * n_mask
    rank = jnp.argsort(jnp.argsort(confidence, -1), -1)  # 0 = least confident
    tokens = jnp.where(rank < n_mask, mask_id, sampled)
  return tokens


def sample_delay(model: DelayPatternGenerator, labels: Array, key: Array,
                 prompt: Array | None = None, *, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Continue prompts (B, P, K) (None: P = 0) to codes (B, F, K) with the delay pattern and
  the KV cache: each step samples its K delayed tokens, except those of prompt frames
  (kept) and of the pattern's empty corners (pad)."""
  model = eval_copy(model)
  b, guided = labels.shape[0], cfg_scale != 1.0
  if prompt is None:
    prompt = jnp.zeros((b, 0, model.levels), jnp.int32)
  if prompt.ndim != 3 or prompt.shape[0] != b or prompt.shape[2] != model.levels \
      or prompt.shape[1] > model.frames:
    raise ValueError(f"prompt: expected (B={b}, P <= {model.frames}, {model.levels}), got "
                     f"shape {prompt.shape}")
  kw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  lab = _with_null(labels, model.num_classes, guided)
  known = jnp.zeros((b, model.frames, model.levels), jnp.int32).at[:, :prompt.shape[1]].set(prompt)
  known = delay_pattern(known, model.pad_id)  # (B, S, K) the prompt's part of the pattern
  t = jnp.arange(model.seq_len)[:, None] - jnp.arange(model.levels)[None, :]
  keep = (t < prompt.shape[1]) | (t >= model.frames)  # prompt frames and empty corners
  cache = KVCache.empty(model.shape, lab.shape[0], model.seq_len)
  graphdef, state = nnx.split(model)

  def body(i, carry):
    pattern, cache, key = carry
    m = nnx.merge(graphdef, state)
    prev = jax.lax.dynamic_slice_in_dim(pattern, jnp.maximum(i - 1, 0), 1, axis=1)
    x = jnp.where(i == 0, m.cls_embed(lab)[:, None],
                  m.embed_step(jnp.concatenate([prev, prev]) if guided else prev))
    logits, cache = m.step(x, i, cache)
    key, sub = jax.random.split(key)
    tok = _pick(logits[:, -1], sub, b, guided, cfg_scale, **kw)  # (B, K)
    row = jax.lax.dynamic_index_in_dim(known, i, axis=1, keepdims=False)
    tok = jnp.where(jax.lax.dynamic_index_in_dim(keep, i, axis=0, keepdims=False), row, tok)
    return jax.lax.dynamic_update_slice_in_dim(pattern, tok[:, None], i, axis=1), cache, key

  pattern, _, _ = jax.lax.fori_loop(0, model.seq_len, body, (known, cache, key))
  return undelay_pattern(pattern, model.frames)
