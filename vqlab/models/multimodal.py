"""One vocabulary and one sequence for text, image and audio tokens.

Early-fusion token models (Chameleon, arXiv 2405.09818; Emu3, arXiv 2409.18869; AnyGPT,
arXiv 2402.12226) put every modality's discrete tokens into one sequence over one
vocabulary and train one decoder-only transformer on it. Here the vocabulary is laid
out as

    [specials | text | image codes | audio level 0 codes | ... | audio level L-1 codes]

each block behind its offset. A codec's frame of L residual levels becomes L tokens,
level 0 first (the flattening of UniAudio / VALL-E's AR stage over all levels), each
level in its own id range so that one softmax tells the levels apart. Image and audio
spans are bracketed by `<boi>` ... `<eoi>` and `<boa>` ... `<eoa>`; a document is
`<bos>` segment segment ... `<eos>`, padded with `<pad>`.

The attention of a sequence is given as `levels` (vqlab.nn.transformer: a query at level
a sees keys at levels <= a): "causal" is the position (Chameleon / Emu3), "show-o" gives
every token of an image the level of the image's first token, so an image attends
within itself in both directions while text stays causal (Show-o, arXiv 2408.12528).
`<pad>` is at level UNSEEN: no other token sees it, so prompts can be left-padded.

`UnifiedGenerator` is the one transformer over that vocabulary, and `sample` continues
prompts of any modality with the KV cache, each generated id restricted to the ids a
task allows (the image's codes, text and `<eos>`, ...), with classifier-free guidance
against an unconditional prompt.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.nn.transformer import (UNSEEN, KVCache, Transformer, TransformerShape, embedding,
                                  linear, rope_1d)

Array = jax.Array

# <mask>: an image token hidden for Show-o's masked-token training
SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<mask>")
PAD, BOS, EOS, BOI, EOI, BOA, EOA, MASK = range(len(SPECIALS))
MODALITIES = ("text", "image", "audio")
MASKS = ("causal", "show-o")
# per-position modality ids of `Vocabulary.modalities`: specials are their own kind
SPECIAL, TEXT, IMAGE, AUDIO = range(4)
_BRACKETS = {"image": (BOI, EOI), "audio": (BOA, EOA)}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Sizes of each modality's token set. `audio_codes` is the codebook size of one codec
  level and `audio_levels` how many levels a frame carries (0 codes: no audio)."""
  text: int
  image: int = 0
  audio_codes: int = 0
  audio_levels: int = 1

  def __post_init__(self):
    for name in ("text", "image", "audio_codes"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}: expected >= 0 tokens, got {getattr(self, name)}")
    if self.text < 1:
      raise ValueError(f"text: expected a text vocabulary of >= 1 tokens, got {self.text}")
    if self.audio_levels < 1:
      raise ValueError(f"audio_levels: expected >= 1, got {self.audio_levels}")

  @property
  def text_offset(self) -> int:
    return len(SPECIALS)

  @property
  def image_offset(self) -> int:
    return self.text_offset + self.text

  @property
  def audio_offset(self) -> int:
    return self.image_offset + self.image

  @property
  def size(self) -> int:
    return self.audio_offset + self.audio_codes * self.audio_levels

  def span(self, modality: str) -> tuple[int, int]:
    """[start, stop) of a modality's ids (audio: all its levels)."""
    start = {"text": self.text_offset, "image": self.image_offset,
             "audio": self.audio_offset}[_check_modality(modality)]
    return start, start + {"text": self.text, "image": self.image,
                           "audio": self.audio_codes * self.audio_levels}[modality]

  # ------------------------------------------------------------------ segments <-> ids

  def encode(self, modality: str, tokens) -> np.ndarray:
    """One segment's ids: text (n,) token ids; image (n,) code indices (any shape,
    flattened row-major); audio (frames, levels) codes, flattened frame-major with each
    level behind its own offset. Image and audio come bracketed."""
    tokens = np.asarray(tokens)
    _check_modality(modality)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"{modality} tokens: expected integers, got {tokens.dtype}")
    if modality == "audio":
      if tokens.ndim != 2 or tokens.shape[1] != self.audio_levels:
        raise ValueError(f"audio tokens: expected (frames, {self.audio_levels}) codes, got "
                         f"shape {tokens.shape}")
      size = self.audio_codes
    else:
      tokens = tokens.reshape(-1)
      size = self.text if modality == "text" else self.image
    if size == 0:
      raise ValueError(f"{modality}: this vocabulary has no {modality} tokens")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= size):
      raise ValueError(f"{modality} tokens: expected ids in [0, {size}), got "
                       f"[{tokens.min()}, {tokens.max()}]")
    if modality == "audio":
      ids = self.audio_offset + np.arange(self.audio_levels) * self.audio_codes + tokens
      ids = ids.reshape(-1)
    else:
      ids = self.span(modality)[0] + tokens
    if modality == "text":
      return ids.astype(np.int32)
    begin, end = _BRACKETS[modality]
    return np.concatenate([[begin], ids, [end]]).astype(np.int32)

  def document(self, segments, length: int | None = None) -> np.ndarray:
    """`[(modality, tokens), ...]` -> `<bos>` segments `<eos>`, padded with `<pad>` to
    `length` when given (an error if it does not fit)."""
    ids = np.concatenate([[BOS]] + [self.encode(m, t) for m, t in segments] + [[EOS]])
    ids = ids.astype(np.int32)
    if length is not None:
      if len(ids) > length:
        raise ValueError(f"length: the document needs {len(ids)} ids, got length={length}")
      ids = np.concatenate([ids, np.full(length - len(ids), PAD, np.int32)])
    return ids

  def decode(self, ids) -> list[tuple[str, np.ndarray]]:
    """ids -> `[(modality, tokens), ...]`, the inverse of `document` / `encode`: text runs
    become text segments, bracketed spans image / audio ones (audio as (frames, levels)).
    `<bos>`, `<eos>` and `<pad>` are dropped. A span that is not closed, or an id of the
    wrong modality inside one, is an error."""
    ids = np.asarray(ids).reshape(-1)
    kinds = self.modalities(ids)
    segments, i = [], 0
    while i < len(ids):
      if ids[i] in (BOS, EOS, PAD):
        i += 1
        continue
      if kinds[i] == TEXT:
        j = i
        while j < len(ids) and kinds[j] == TEXT:
          j += 1
        segments.append(("text", ids[i:j] - self.text_offset))
        i = j
        continue
      modality = {BOI: "image", BOA: "audio"}.get(int(ids[i]))
      if modality is None:
        raise ValueError(f"ids[{i}]: {self.name(ids[i])} outside a segment it can end")
      end = _BRACKETS[modality][1]
      stop = np.flatnonzero(ids[i + 1:] == end)
      if not len(stop):
        raise ValueError(f"ids[{i}]: {self.name(ids[i])} is never closed by "
                         f"{SPECIALS[end]}")
      body = ids[i + 1:i + 1 + stop[0]]
      want = IMAGE if modality == "image" else AUDIO
      if np.any(kinds[i + 1:i + 1 + stop[0]] != want):
        raise ValueError(f"ids[{i}:]: a {modality} span holds ids of another modality")
      if modality == "image":
        segments.append(("image", body - self.image_offset))
      else:
        if len(body) % self.audio_levels:
          raise ValueError(f"ids[{i}:]: an audio span of {len(body)} codes is not whole "
                           f"frames of {self.audio_levels} levels")
        codes = (body - self.audio_offset).reshape(-1, self.audio_levels)
        level = np.arange(self.audio_levels) * self.audio_codes
        if np.any(codes // self.audio_codes != level // self.audio_codes):
          raise ValueError(f"ids[{i}:]: audio codes out of their level's order")
        segments.append(("audio", codes - level))
      i += stop[0] + 2
    return segments

  # ------------------------------------------------------------------ per position

  def modalities(self, ids) -> np.ndarray:
    """Per id: SPECIAL, TEXT, IMAGE or AUDIO (works on numpy and jax arrays)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.size):
      raise ValueError(f"ids: expected values in [0, {self.size}), got "
                       f"[{ids.min()}, {ids.max()}]")
    return np.select([ids < self.text_offset, ids < self.image_offset,
                      ids < self.audio_offset], [SPECIAL, TEXT, IMAGE], AUDIO).astype(np.int32)

  def name(self, i) -> str:
    i = int(i)
    if i < len(SPECIALS):
      return SPECIALS[i]
    return f"{MODALITIES[int(self.modalities(i)) - 1]} id {i}"


def attention_levels(ids: Array, vocab: Vocabulary, mask: str = "causal") -> Array:
  """(..., T) ids -> (..., T) int32 levels for `vqlab.nn.transformer` (a query sees keys
  at levels <= its own), the ids in cache slots 0 .. T-1. "causal": the slot. "show-o":
  the tokens of an image (between `<boi>` and `<eoi>`, not the brackets; `<mask>` counts
  as one) share the level of the image's first token, so each sees the whole image and
  everything before it; `<eoi>` and what follows see it all, causally. `<pad>` is at
  UNSEEN: seen by no other token. Traceable (jit)."""
  if mask not in MASKS:
    raise ValueError(f"mask: expected one of {MASKS}, got {mask!r}")
  ids = jnp.asarray(ids)
  slots = jnp.broadcast_to(jnp.arange(ids.shape[-1], dtype=jnp.int32), ids.shape)
  levels = slots
  if mask == "show-o":
    start, stop = vocab.span("image")
    image = ((ids >= start) & (ids < stop)) | (ids == MASK)
    # the first image token of each run: where an image token follows a non-image one
    before = jnp.concatenate([jnp.zeros_like(image[..., :1]), image[..., :-1]], -1)
    first = jax.lax.cummax(jnp.where(image & ~before, slots, 0), axis=ids.ndim - 1)
    levels = jnp.where(image, first, slots)
  return jnp.where(ids == PAD, UNSEEN, levels).astype(jnp.int32)


def _check_modality(modality: str) -> str:
  if modality not in MODALITIES:
    raise ValueError(f"modality: expected one of {MODALITIES}, got {modality!r}")
  return modality


class UnifiedGenerator(nnx.Module):
  """One decoder-only transformer over a `Vocabulary` (early fusion: Chameleon / Emu3):
  one embedding table for every id, the shared transformer, one head. Positions are 1D
  RoPE over the sequence that continue across modalities (as Chameleon and Emu3): an
  image's 2D layout is implicit in its fixed length, and a prompt's text and the image
  it asks for stay at their true distance. Left padding does not move them
  (`positions_of`)."""

  def __init__(self, shape: TransformerShape, vocab: Vocabulary, *, rngs: nnx.Rngs):
    self.shape, self.vocab = shape, vocab
    self.embed = embedding(vocab.size, shape.width, ("vocab", "embed"), rngs)
    self.transformer = Transformer(shape, rngs)
    self.head = linear(shape.width, vocab.size, ("embed", "vocab"), rngs)

  def __call__(self, ids: Array, levels: Array, positions: Array,
               cache: KVCache | None = None, offset: Array | int = 0
               ) -> tuple[Array, KVCache | None]:
    """float32 logits (B, L, V) of the id after each of ids (B, L), with attention
    `levels` and RoPE `positions` (B, L); with `cache` the chunk is written at `offset`."""
    angles = rope_1d(positions, self.shape.width // self.shape.heads)
    h, cache = self.transformer(self.embed(ids), levels, angles=angles, cache=cache,
                                offset=offset)
    return self.head(h).astype(jnp.float32), cache


def positions_of(ids: Array) -> Array:
  """RoPE positions (B, T): each id's index among the row's non-`<pad>` ids, so a
  left-padded prompt has the positions of the unpadded one."""
  return jnp.maximum(jnp.cumsum(ids != PAD, axis=-1) - 1, 0).astype(jnp.int32)


def causal_levels(ids: Array, start: Array | int = 0) -> Array:
  """Causal attention levels (B, T) of ids in cache slots start .. start + T - 1, `<pad>`
  at UNSEEN (`attention_levels(..., "causal")` from any slot)."""
  slots = start + jnp.arange(ids.shape[-1], dtype=jnp.int32)
  return jnp.where(ids == PAD, UNSEEN, slots).astype(jnp.int32)


def allowed_ids(vocab: Vocabulary, *modalities: str, specials: tuple[int, ...] = ()
                ) -> np.ndarray:
  """(V,) bool: the ids of `modalities` and the given special ids."""
  allowed = np.zeros(vocab.size, bool)
  for m in modalities:
    start, stop = vocab.span(m)
    allowed[start:stop] = True
  allowed[list(specials)] = True
  return allowed


def allowed_audio(vocab: Vocabulary, stop: int = EOA) -> np.ndarray:
  """(levels, V) bool for `sample`: a frame's levels in turn, each from its own codes;
  `stop` only where a frame would begin (so the speech ends on whole frames)."""
  allowed = np.zeros((vocab.audio_levels, vocab.size), bool)
  for level in range(vocab.audio_levels):
    start = vocab.audio_offset + level * vocab.audio_codes
    allowed[level, start:start + vocab.audio_codes] = True
  allowed[0, stop] = True
  return allowed


def audio_codes_of(vocab: Vocabulary, ids, stop: int = EOA) -> np.ndarray:
  """Generated audio ids (n,) up to `stop` (or `<pad>` / the end) -> codes (frames,
  levels): the inverse of `encode("audio", ...)` without its brackets; a frame left
  incomplete at the end is dropped."""
  ids = np.asarray(ids).reshape(-1)
  end = np.flatnonzero((ids == stop) | (ids == PAD))
  ids = ids[:end[0] if len(end) else len(ids)]
  ids = ids[:len(ids) - len(ids) % vocab.audio_levels]
  if np.any(vocab.modalities(ids) != AUDIO):
    raise ValueError("ids: expected audio ids before the stop id")
  codes = (ids - vocab.audio_offset).reshape(-1, vocab.audio_levels)
  level = np.arange(vocab.audio_levels)
  if np.any(codes // vocab.audio_codes != level):
    raise ValueError("ids: audio codes out of their level's order")
  return codes - level * vocab.audio_codes


def sample(model: UnifiedGenerator, prompt: Array, key: Array, *, steps: int,
           allowed: Array, uncond: Array | None = None, cfg_scale: float = 1.0,
           temperature: float = 1.0, top_k: int = 0, stop: int = -1,
           mask: str = "causal") -> Array:
  """Continue left-padded prompts (B, P) by `steps` ids (B, steps) with the KV cache,
  each drawn from the ids where `allowed` (V,) is True; `allowed` (C, V): step i draws from
  row i mod C (a codec's levels in turn: row l holds level l's codes). `uncond` (B, P'): the prompts
  without their condition (e.g. `<bos> <boi>` for a caption's `<bos> caption <boi>`);
  given, the logits are guided, uncond + cfg_scale (cond - uncond) (Chameleon / Emu3's
  classifier-free guidance on the prompt; scale 1 is the conditional model). After a
  row draws `stop` (e.g. `<eos>`) it gives `<pad>`. `mask`: the prompts' attention
  ("show-o": an image in the prompt attends within itself); what is drawn is causal.
  Runs inside jit."""
  from vqlab.models.sampling import eval_copy, guide, sample_logits
  model = eval_copy(model)
  blocked = jnp.where(jnp.asarray(allowed), 0.0, -jnp.inf)
  blocked = blocked[None] if blocked.ndim == 1 else blocked

  def start(ids):
    cache = KVCache.empty(model.shape, ids.shape[0], ids.shape[1] + steps)
    positions = positions_of(ids)
    logits, cache = model(ids, attention_levels(ids, model.vocab, mask), positions, cache, 0)
    return logits[:, -1], cache, positions[:, -1]

  def advance(token, state, length):
    _, cache, position = state
    position = position + (token != PAD)
    logits, cache = model(token[:, None], causal_levels(token[:, None], length),
                          position[:, None], cache, length)
    return logits[:, 0], cache, position

  states = [start(prompt)] + ([start(uncond)] if uncond is not None else [])
  lengths = [prompt.shape[1]] + ([uncond.shape[1]] if uncond is not None else [])
  out = jnp.full((prompt.shape[0], steps), PAD, jnp.int32)
  done = jnp.zeros(prompt.shape[0], bool)

  def body(i, carry):
    states, out, done, key = carry
    logits = states[0][0]
    if uncond is not None:
      logits = guide(logits, states[1][0], cfg_scale)
    key, sub = jax.random.split(key)
    allowed_now = blocked[i % blocked.shape[0]]
    token = jnp.where(done, PAD, sample_logits(sub, logits + allowed_now, temperature, top_k))
    states = [advance(token, s, n + i) for s, n in zip(states, lengths)]
    return states, out.at[:, i].set(token), done | (token == stop), key

  return jax.lax.fori_loop(0, steps, body, (states, out, done, key))[1]


def sample_image_masked(model: UnifiedGenerator, prompt: Array, key: Array, *,
                        image_tokens: int, steps: int, uncond: Array | None = None,
                        cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                        schedule: str = "cosine") -> Array:
  """Show-o's image generation: prompts (B, P) ending in `<boi>` are followed by
  `image_tokens` `<mask>` ids and `<eoi>`, and MaskGIT's iterative decoding fills the
  masks (vqlab.models.sampling.masked_decoding) under the Show-o attention (the image
  attends within itself and to the prompt); guided against `uncond` as `sample`.
  Returns codes (B, image_tokens) in [0, vocab.image)."""
  from vqlab.models.sampling import eval_copy, guide, masked_decoding, mask_schedule
  mask_schedule(0.0, schedule)  # an unknown schedule fails here, not mid-loop
  model = eval_copy(model)
  vocab, b = model.vocab, prompt.shape[0]
  start, stop = vocab.span("image")
  codes_to_ids = lambda codes: jnp.where(codes == vocab.image, MASK, codes + start)

  def image_logits(prefix, codes):
    ids = jnp.concatenate([prefix, codes_to_ids(codes),
                           jnp.full((b, 1), EOI, jnp.int32)], 1).astype(jnp.int32)
    logits, _ = model(ids, attention_levels(ids, vocab, "show-o"), positions_of(ids))
    p = prefix.shape[1]
    return logits[:, p:p + image_tokens, start:stop]  # each masked slot predicts itself

  def logits_fn(codes):
    logits = image_logits(prompt, codes)
    return logits if uncond is None else guide(logits, image_logits(uncond, codes), cfg_scale)

  return masked_decoding(logits_fn, b, image_tokens, vocab.image, key, steps=steps,
                         temperature=temperature, top_k=top_k, schedule=schedule)
