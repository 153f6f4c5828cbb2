"""The unified vocabulary: offsets and brackets round-trip, per-position modalities, the
causal / Show-o attention levels against masks built by hand; the unified model: left
padding changes nothing, cached sampling equals recomputing the whole sequence,
guidance at scale 1 is the conditional model, sampling keeps to the allowed ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models import multimodal
from vqlab.models.multimodal import BOA, BOI, BOS, EOA, EOI, EOS, PAD
from vqlab.nn import transformer

VOCAB = multimodal.Vocabulary(text=50, image=16, audio_codes=8, audio_levels=3)


def test_layout_puts_each_modality_behind_its_offset():
  assert (VOCAB.text_offset, VOCAB.image_offset, VOCAB.audio_offset) == (8, 58, 74)
  assert VOCAB.size == 74 + 8 * 3
  assert VOCAB.span("audio") == (74, 98)
  audio = VOCAB.encode("audio", [[1, 2, 3], [7, 0, 5]])
  # frame-major, level l of code c at audio_offset + 8 l + c
  np.testing.assert_array_equal(audio, [BOA, 75, 84, 93, 81, 82, 95, EOA])
  np.testing.assert_array_equal(VOCAB.encode("image", [[0, 15]]), [BOI, 58, 73, EOI])
  np.testing.assert_array_equal(VOCAB.encode("text", [0, 49]), [8, 57])


def test_text_image_audio_document_round_trips(rng):
  segments = [("text", rng.integers(0, 50, 6)), ("image", rng.integers(0, 16, 9)),
              ("text", rng.integers(0, 50, 2)), ("audio", rng.integers(0, 8, (4, 3))),
              ("image", rng.integers(0, 16, 4))]
  ids = VOCAB.document(segments, length=48)
  assert ids[0] == BOS and ids.dtype == np.int32 and len(ids) == 48
  assert ids[1 + 6 + 11 + 2 + 14 + 6] == EOS and np.all(ids[1 + 6 + 11 + 2 + 14 + 6 + 1:] == PAD)
  back = VOCAB.decode(ids)
  assert [m for m, _ in back] == [m for m, _ in segments]
  for (_, got), (_, want) in zip(back, segments):
    np.testing.assert_array_equal(got, want)
  kinds = VOCAB.modalities(ids)
  assert list(kinds[:9]) == [multimodal.SPECIAL] + [multimodal.TEXT] * 6 + [
      multimodal.SPECIAL, multimodal.IMAGE]


def test_bad_tokens_and_bad_sequences_are_named():
  with pytest.raises(ValueError, match=r"image tokens: expected ids in \[0, 16\), got \[0, 16\]"):
    VOCAB.encode("image", [0, 16])
  with pytest.raises(ValueError, match=r"audio tokens: expected \(frames, 3\) codes"):
    VOCAB.encode("audio", [1, 2, 3])
  with pytest.raises(ValueError, match="modality: expected one of"):
    VOCAB.encode("video", [1])
  with pytest.raises(ValueError, match="no audio tokens"):
    multimodal.Vocabulary(text=4).encode("audio", np.zeros((1, 1), int))
  with pytest.raises(ValueError, match="length: the document needs 5 ids, got length=4"):
    VOCAB.document([("text", [1, 2, 3])], length=4)
  with pytest.raises(ValueError, match="never closed by <eoi>"):
    VOCAB.decode([BOS, BOI, 58, 59])
  with pytest.raises(ValueError, match="a image span holds ids of another modality"):
    VOCAB.decode([BOI, 58, 10, EOI])
  with pytest.raises(ValueError, match="<eoa> outside a segment"):
    VOCAB.decode([BOS, EOA])
  with pytest.raises(ValueError, match="out of their level's order"):
    VOCAB.decode([BOA, 83, 75, 93, EOA])  # level 1's code where level 0's belongs


def _allowed_by_hand(ids, mask):
  """The attention mask written out: [query, key] -> may attend."""
  t = len(ids)
  allowed = np.tril(np.ones((t, t), bool))
  if mask == "show-o":
    image = VOCAB.modalities(ids) == multimodal.IMAGE
    i = 0
    while i < t:  # each run of image tokens: full attention within it
      if image[i]:
        j = i
        while j < t and image[j]:
          j += 1
        allowed[i:j, i:j] = True
        i = j
      else:
        i += 1
  pad = np.asarray(ids) == PAD  # seen by no other token; a pad's own row is never used
  allowed[:, pad] = False
  allowed[pad] = True
  return allowed


@pytest.mark.parametrize("mask", multimodal.MASKS)
def test_attention_levels_give_the_masks_built_by_hand(mask, rng):
  ids = VOCAB.document([("text", rng.integers(0, 50, 3)), ("image", rng.integers(0, 16, 4)),
                        ("text", rng.integers(0, 50, 2)), ("image", rng.integers(0, 16, 3)),
                        ("audio", rng.integers(0, 8, (1, 3)))], length=30)
  levels = multimodal.attention_levels(ids[None], VOCAB, mask)
  got = np.asarray(transformer.attention_mask(levels, levels))[0, 0]
  if mask == "causal":  # from slot 0, the cache's levels
    np.testing.assert_array_equal(levels, multimodal.causal_levels(ids[None]))
  np.testing.assert_array_equal(got, _allowed_by_hand(ids, mask))
  if mask == "show-o":  # the first image token sees the image's last, and no further
    start = 1 + 3 + 1
    assert got[start, start + 3] and not got[start, start + 4]
  with pytest.raises(ValueError, match="mask: expected one of"):
    multimodal.attention_levels(ids, VOCAB, "bidirectional")


SMALL = transformer.TransformerShape(width=32, depth=2, heads=4)
TINY = multimodal.Vocabulary(text=20, image=16)


def _model():
  return multimodal.UnifiedGenerator(SMALL, TINY, rngs=nnx.Rngs(0))


@nnx.jit
def _logits(model, ids):
  return model(ids, multimodal.causal_levels(ids), multimodal.positions_of(ids))[0]


def test_left_padding_changes_no_logit():
  model = _model()
  prompt = TINY.document([("text", [3, 4, 5])])[:-1]  # <bos> text, no <eos>
  alone = _logits(model, jnp.asarray(prompt[None]))
  padded = _logits(model, jnp.asarray(np.concatenate([[PAD] * 3, prompt])[None], jnp.int32))
  np.testing.assert_allclose(padded[:, 3:], alone, atol=1e-5)
  assert float(jnp.max(jnp.abs(alone[0, 1:] - alone[0, :-1]))) > 1e-3  # the context counts


def _prompts():
  captions = [TINY.document([("text", t)])[:-1] for t in ([1, 2], [3, 4, 5, 6], [7])]
  width = max(map(len, captions)) + 1
  return np.stack([np.concatenate([[PAD] * (width - len(c) - 1), c, [BOI]]).astype(np.int32)
                   for c in captions])


def test_cached_sampling_equals_recomputing_the_sequence():
  model, prompt = _model(), _prompts()
  image = multimodal.allowed_ids(TINY, "image")
  steps = 6
  got = jax.jit(lambda m, p, k: multimodal.sample(m, p, k, steps=steps, allowed=image,
                                                  top_k=1))(model, jnp.asarray(prompt),
                                                            jax.random.key(0))
  # greedy, the whole sequence each time, no cache (causal: the ids not yet drawn, here
  # <pad>, do not reach the logits read)
  p = prompt.shape[1]
  seq = np.concatenate([prompt, np.full((3, steps), PAD, np.int32)], 1)
  for i in range(steps):
    logits = _logits(model, jnp.asarray(seq))[:, p - 1 + i] + jnp.where(image, 0.0, -jnp.inf)
    seq[:, p + i] = np.argmax(logits, -1)
  np.testing.assert_array_equal(got, seq[:, p:])
  assert np.all(np.isin(np.asarray(got), np.flatnonzero(image)))


def test_guidance_at_scale_one_is_the_conditional_model_and_stop_pads():
  model, prompt = _model(), jnp.asarray(_prompts())
  uncond = jnp.asarray(np.tile([BOS, BOI], (3, 1)))
  run = jax.jit(lambda m, k, scale: multimodal.sample(
      m, prompt, k, steps=5, allowed=multimodal.allowed_ids(TINY, "image"), uncond=uncond,
      cfg_scale=scale))
  plain = jax.jit(lambda m, k: multimodal.sample(
      m, prompt, k, steps=5, allowed=multimodal.allowed_ids(TINY, "image")))
  key = jax.random.key(1)
  np.testing.assert_array_equal(run(model, key, 1.0), plain(model, key))
  assert not np.array_equal(run(model, key, 8.0), plain(model, key))
  text = multimodal.allowed_ids(TINY, "text", specials=(EOS,))
  ids = np.asarray(jax.jit(lambda m: multimodal.sample(
      m, prompt[:, :-1], key, steps=24, allowed=text, stop=EOS, temperature=3.0))(model))
  for row in ids:
    ended = np.flatnonzero(row == EOS)
    assert np.all(np.isin(row, np.flatnonzero(text)) | (row == PAD))
    if len(ended):
      assert np.all(row[ended[0] + 1:] == PAD) and np.all(row[:ended[0]] != PAD)
  assert np.any(ids == EOS)  # three rows of 24 draws at temperature 3 end


def test_show_o_decoding_fills_every_mask_and_guidance_one_is_conditional():
  model, prompt = _model(), jnp.asarray(_prompts())
  uncond = jnp.asarray(np.tile([BOS, BOI], (3, 1)))
  run = jax.jit(lambda m, k, scale: multimodal.sample_image_masked(
      m, prompt, k, image_tokens=9, steps=3, uncond=uncond, cfg_scale=scale))
  key = jax.random.key(2)
  codes = np.asarray(run(model, key, 1.0))
  assert codes.shape == (3, 9) and codes.min() >= 0 and codes.max() < TINY.image
  plain = jax.jit(lambda m, k: multimodal.sample_image_masked(m, prompt, k, image_tokens=9,
                                                             steps=3))(model, key)
  np.testing.assert_array_equal(codes, plain)
  assert not np.array_equal(np.asarray(run(model, key, 8.0)), codes)


def test_speech_is_drawn_level_by_level_and_stops_on_whole_frames():
  vocab = multimodal.Vocabulary(text=20, image=16, audio_codes=8, audio_levels=3)
  allowed = multimodal.allowed_audio(vocab)
  assert allowed.shape == (3, vocab.size) and allowed[0, EOA] and not allowed[1:, EOA].any()
  for level in range(3):  # row l: level l's 8 codes only
    start = vocab.audio_offset + 8 * level
    np.testing.assert_array_equal(np.flatnonzero(allowed[level]),
                                  ([EOA] if level == 0 else []) + list(range(start, start + 8)))
  model = multimodal.UnifiedGenerator(SMALL, vocab, rngs=nnx.Rngs(2))
  prompt = jnp.asarray(np.tile(vocab.document([("text", [3, 4])])[:-1].tolist() + [BOA], (4, 1)))
  ids = np.asarray(jax.jit(lambda m, k: multimodal.sample(
      m, prompt, k, steps=31, allowed=jnp.asarray(allowed), stop=EOA, temperature=4.0))(
          model, jax.random.key(3)))
  ends = 0
  for row in ids:
    stop = np.flatnonzero(row == EOA)
    body = row[:stop[0]] if len(stop) else row
    if len(stop):
      ends += 1
      assert stop[0] % 3 == 0 and np.all(row[stop[0] + 1:] == PAD)
    levels = (body - vocab.audio_offset) // 8
    np.testing.assert_array_equal(levels, np.arange(len(body)) % 3)
    codes = multimodal.audio_codes_of(vocab, row)
    assert codes.shape == (len(body) // 3, 3) and codes.min() >= 0 and codes.max() < 8
    # back to ids: the same frames, bracketed
    np.testing.assert_array_equal(vocab.encode("audio", codes)[1:-1], body[:len(codes) * 3])
  assert ends > 0  # at temperature 4, some of 4 rows of 10 frames draw <eoa>
  with pytest.raises(ValueError, match="expected audio ids"):
    multimodal.audio_codes_of(vocab, [vocab.text_offset, vocab.text_offset, 9])
  with pytest.raises(ValueError, match="out of their level's order"):
    multimodal.audio_codes_of(vocab, [vocab.audio_offset + 8, vocab.audio_offset,
                                      vocab.audio_offset + 16])
