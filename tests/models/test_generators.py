"""Token generators: the KV cache gives the uncached logits, VAR's block-causal mask
hides later scales, guidance and logit filters match their definitions, and tiny
models memorise a handful of sequences and sample them back."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vqlab.models import sampling
from vqlab.models.generators import (DelayPatternGenerator, MaskedGenerator, NextScaleGenerator,
                                     NextTokenGenerator, delay_pattern, undelay_pattern)
from vqlab.nn.transformer import KVCache, TransformerShape, apply_rope, attention_mask, rope_3d
from vqlab.quantizers import MultiScaleVQ

SHAPE = TransformerShape(width=32, depth=2, heads=4, mlp_ratio=2.0)
VAR_SHAPE = TransformerShape(width=32, depth=2, heads=4, mlp_ratio=2.0, norm="layer",
                             mlp="gelu", qk_norm="l2", adaln=True)
PATCH_NUMS = (1, 2, 3)


@pytest.mark.parametrize("positions,frames", [("rope2d", 1), ("learned", 1), ("rope3d", 2)])
def test_cached_raster_decoding_gives_the_uncached_logits(positions, frames):
  model = NextTokenGenerator(SHAPE, vocab_size=17, num_classes=3, grid=3, frames=frames,
                             positions=positions, rngs=nnx.Rngs(0))
  model.eval()
  n = 9 * frames
  tokens = jax.random.randint(jax.random.key(1), (2, n), 0, 17)
  labels = jnp.array([0, 3])
  full = model(tokens, labels)
  cache = KVCache.empty(SHAPE, 2, n)
  logits, cache = model.step(model.embed_class(labels), 0, cache)
  got = [logits[:, 0]]
  for i in range(1, n):
    logits, cache = model.step(model.embed_tokens(tokens[:, i - 1:i], i), i, cache)
    got.append(logits[:, 0])
  np.testing.assert_allclose(jnp.stack(got, 1), full, atol=2e-5, rtol=2e-5)


def test_rope_3d_scores_depend_on_the_offset_in_time_row_and_column():
  # q . k after rotation at (t, r, c) and (t', r', c') depends only on the difference
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 12))
  rotate = lambda x, t, r, c: apply_rope(x, rope_3d(jnp.array([t]), jnp.array([r]),
                                                    jnp.array([c]), 12)[None])
  score = lambda a, b: float(jnp.sum(rotate(q, *a) * rotate(k, *b)))
  assert score((1, 2, 0), (0, 1, 3)) == pytest.approx(score((4, 5, 2), (3, 4, 5)), abs=1e-4)
  others = [score((1, 2, 0), b) for b in ((1, 1, 3), (0, 2, 3), (0, 1, 2))]
  assert all(abs(o - score((1, 2, 0), (0, 1, 3))) > 1e-3 for o in others)  # each axis counts
  assert rope_3d(jnp.arange(2), jnp.arange(2), jnp.arange(2), 12).shape == (2, 6)


def test_video_tokens_need_3d_or_learned_positions_and_prompts_are_kept():
  with pytest.raises(ValueError, match="expected 'rope3d', 'rope1d' or 'learned' for 3 frames"):
    NextTokenGenerator(SHAPE, 17, 1, 2, frames=3, rngs=nnx.Rngs(0))
  model = NextTokenGenerator(SHAPE, 17, 1, 2, frames=3, positions="rope3d", rngs=nnx.Rngs(0))
  prompt = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  labels = jnp.zeros((2,), jnp.int32)
  tokens = jax.jit(lambda p: sampling.sample_next_token(model, labels, jax.random.key(0),
                                                        prompt=p))(prompt)
  assert tokens.shape == (2, 12)
  np.testing.assert_array_equal(tokens[:, :4], prompt)  # the first latent frame, given
  free = sampling.sample_next_token(model, labels, jax.random.key(0))
  assert not np.array_equal(free[:, :4], prompt)
  # the rest is sampled from the model given the prompt: greedy equals teacher forcing
  greedy = sampling.sample_next_token(model, labels, jax.random.key(0), prompt=prompt, top_k=1)
  logits = model(greedy, labels)
  np.testing.assert_array_equal(greedy[:, 4:], jnp.argmax(logits[:, 4:], -1))
  with pytest.raises(ValueError, match=r"prompt: expected \(B=2, P <= 12\)"):
    sampling.sample_next_token(model, labels, jax.random.key(0), prompt=jnp.zeros((2, 13), int))


def _var(seed=0):
  rngs = nnx.Rngs(seed)
  quantizer = MultiScaleVQ(8, 16, PATCH_NUMS, rngs=rngs)
  model = NextScaleGenerator(VAR_SHAPE, vocab_size=16, num_classes=3, patch_nums=PATCH_NUMS,
                             latent_dim=8, rngs=rngs)
  return model, quantizer


def test_cached_scale_decoding_gives_the_uncached_logits():
  model, quantizer = _var()
  model.eval()
  indices = jax.random.randint(jax.random.key(2), (2, 14), 0, 16)
  labels = jnp.array([1, 3])
  feats = quantizer.teacher_forcing_input(indices)
  full = model(labels, feats)
  cache, offset, got = KVCache.empty(VAR_SHAPE, 2, 14), 0, []
  for pn in PATCH_NUMS:
    chunk = feats[:, max(offset - 1, 0):offset - 1 + pn * pn] if offset else feats[:, :0]
    logits, cache = model.step(model.embed(labels, chunk, offset), labels, offset, cache)
    got.append(logits)
    offset += pn * pn
  np.testing.assert_allclose(jnp.concatenate(got, 1), full, atol=2e-5, rtol=2e-5)


def test_block_causal_mask_lets_scale_k_see_scales_up_to_k():
  levels = jnp.asarray(np.repeat(np.arange(3), [1, 4, 9]))[None]
  mask = np.asarray(attention_mask(levels, levels))[0, 0]
  for q in range(14):
    for k in range(14):
      assert mask[q, k] == (levels[0, k] <= levels[0, q])
  # and in the model: changing scale-3 inputs leaves the logits of scales 1-2 alone
  model, quantizer = _var()
  model.eval()
  labels = jnp.array([0, 1])
  feats = jax.random.normal(jax.random.key(3), (2, 13, 8))
  a = model(labels, feats)
  b = model(labels, feats.at[:, 4:].add(1.0))  # inputs of the third scale (slots 5..13)
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


def test_guidance_of_one_is_the_conditional_model_and_top_k_one_is_greedy():
  cond = jax.random.normal(jax.random.key(4), (3, 50)) * 3
  uncond = jax.random.normal(jax.random.key(5), (3, 50)) * 3
  np.testing.assert_array_equal(sampling.guide(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(sampling.guide(cond, uncond, 2.5), uncond + 2.5 * (cond - uncond),
                             rtol=1e-5, atol=1e-5)
  for seed in range(5):
    got = sampling.sample_logits(jax.random.key(seed), cond, temperature=0.7, top_k=1)
    np.testing.assert_array_equal(got, jnp.argmax(cond, -1))


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=0.8)))[0]
  assert kept.tolist() == [True, False, True, False]  # 0.5 + 0.3 reaches 0.8
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=0.81)))[0]
  assert kept.tolist() == [True, False, True, True]
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=2)))[0]
  assert kept.tolist() == [True, False, True, False]
  with pytest.raises(ValueError, match="temperature"):
    sampling.filter_logits(logits, temperature=0.0)


def test_random_mask_follows_the_cosine_schedule():
  mask = sampling.random_mask(jax.random.key(0), 4096, 16)
  counts = np.asarray(mask.sum(-1))
  assert counts.min() >= 1 and counts.max() <= 16
  # E[ceil(cos(pi r / 2) * 16)] for r ~ U(0, 1), by quadrature
  r = (np.arange(100_000) + 0.5) / 100_000
  np.testing.assert_allclose(counts.mean(), np.ceil(np.cos(np.pi * r / 2) * 16).mean(), rtol=0.02)


def _fit(model, loss_fn, steps, lr=3e-3):
  """Adam on loss_fn(model, key); returns the last loss."""
  optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, key):
    loss, grads = nnx.value_and_grad(loss_fn)(model, key)
    optimizer.update(model, grads)
    return loss

  for i in range(steps):
    loss = step(model, optimizer, jax.random.key(i))
  return float(loss)


def test_next_token_model_memorises_and_samples_back_with_guidance():
  data = jax.random.randint(jax.random.key(6), (4, 9), 0, 17)
  labels = jnp.arange(4)
  model = NextTokenGenerator(SHAPE, 17, 4, 3, rngs=nnx.Rngs(1))
  ce = lambda m, _: optax.softmax_cross_entropy_with_integer_labels(m(data, labels), data).mean()
  assert _fit(model, ce, 150) < 0.05
  got = jax.jit(lambda l, k: sampling.sample_next_token(model, l, k, top_k=1))(labels,
                                                                              jax.random.key(0))
  np.testing.assert_array_equal(got, data)
  guided = sampling.sample_next_token(model, labels, jax.random.key(1), cfg_scale=1.5,
                                      temperature=0.5, top_k=1)
  np.testing.assert_array_equal(guided, data)


def test_next_scale_model_memorises_and_samples_back():
  model, quantizer = _var(1)
  indices = jax.random.randint(jax.random.key(7), (3, 14), 0, 16)
  labels = jnp.arange(3)
  feats = quantizer.teacher_forcing_input(indices)
  ce = lambda m, _: optax.softmax_cross_entropy_with_integer_labels(m(labels, feats), indices).mean()
  assert _fit(model, ce, 150) < 0.05
  got = sampling.sample_next_scale(model, quantizer, labels, jax.random.key(0), top_k=1,
                                   cfg_scale=2.0)
  np.testing.assert_array_equal(got, indices)


def test_masked_model_memorises_and_decodes_back():
  data = jax.random.randint(jax.random.key(8), (3, 9), 0, 17)
  labels = jnp.arange(3)
  model = MaskedGenerator(SHAPE, 17, 3, 3, rngs=nnx.Rngs(2))

  def loss(m, key):
    mask = sampling.random_mask(key, 3, 9)
    logits = m(jnp.where(mask, m.mask_id, data), labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, data)
    return jnp.sum(ce * mask) / jnp.sum(mask)

  _fit(model, loss, 300)
  for schedule in sampling.MASK_SCHEDULES:
    got = sampling.sample_masked(model, labels, jax.random.key(0), steps=4, top_k=1,
                                 choice_temperature=0.0, schedule=schedule)
    np.testing.assert_array_equal(got, data)
  with pytest.raises(ValueError, match="schedule: expected one of"):
    sampling.sample_masked(model, labels, jax.random.key(0), schedule="cubic")


def test_maskbit_slots_round_trip_and_a_masked_group_has_no_bits():
  model = MaskedGenerator(SHAPE, 2**6, 3, 2, bit_groups=2, rngs=nnx.Rngs(0))
  assert (model.vocab_size, model.seq_len, model.mask_id) == (8, 8, 8)
  tokens = jnp.asarray([[0, 63, 0b101011, 0b010100]])
  slots = model.to_slots(tokens)  # most significant group first
  np.testing.assert_array_equal(slots, [[0, 0, 7, 7, 5, 3, 2, 4]])
  np.testing.assert_array_equal(model.from_slots(slots), tokens)
  bits = np.asarray([[-1, 1, -1, 0, 0, 0]], np.float32)  # token 0b010...: low group masked
  got = model._embed(jnp.asarray([[2, model.mask_id]]))
  w, b = model.bit_embed.kernel[...], model.bit_embed.bias[...]
  np.testing.assert_allclose(got[0], bits @ w + b, rtol=1e-6, atol=1e-6)
  for groups, vocab in ((4, 2**6), (2, 100)):
    with pytest.raises(ValueError, match="bit_groups"):
      MaskedGenerator(SHAPE, vocab, 3, 2, bit_groups=groups, rngs=nnx.Rngs(0))


def test_maskbit_memorises_and_decodes_back():
  data = jax.random.randint(jax.random.key(8), (3, 9), 0, 2**6)
  labels = jnp.arange(3)
  model = MaskedGenerator(SHAPE, 2**6, 3, 3, bit_groups=2, rngs=nnx.Rngs(2))
  slots = model.to_slots(data)

  def masked_ce(m, mask):
    logits = m(jnp.where(mask, m.mask_id, slots), labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, slots)
    return jnp.sum(ce * mask) / jnp.sum(mask)

  # Random masks plus the all-masked input, the sampler's first step: with it in the loss
  # no slot is left to a low-margin guess (CI once decoded one bit group wrong without it).
  def loss(m, key):
    return masked_ce(m, sampling.random_mask(key, 3, 18)) + masked_ce(m, slots >= 0)

  assert _fit(model, loss, 1200) < 0.05  # slower to memorise than an embedding table
  first = jnp.argmax(model(jnp.full_like(slots, model.mask_id), labels), -1)
  np.testing.assert_array_equal(first, slots)  # memorised from the label alone
  got = sampling.sample_masked(model, labels, jax.random.key(0), steps=6, top_k=1,
                               choice_temperature=0.0)
  np.testing.assert_array_equal(model.from_slots(got), data)


def test_mask_schedules_run_from_all_masked_to_none():
  r = jnp.asarray([0.0, 0.5, 1.0])
  np.testing.assert_allclose(sampling.mask_schedule(r, "cosine"), [1, np.sqrt(0.5), 0],
                             atol=1e-6)
  np.testing.assert_allclose(sampling.mask_schedule(r, "linear"), [1, 0.5, 0], atol=1e-7)
  np.testing.assert_allclose(sampling.mask_schedule(r, "square"), [1, 0.75, 0], atol=1e-7)


def test_delay_pattern_shifts_level_k_by_k_and_inverts():
  codes = jnp.arange(2 * 4 * 3).reshape(2, 4, 3)
  pattern = delay_pattern(codes, -1)
  assert pattern.shape == (2, 6, 3)
  for t in range(6):
    for k in range(3):
      want = codes[0, t - k, k] if 0 <= t - k < 4 else -1
      assert int(pattern[0, t, k]) == int(want)
  np.testing.assert_array_equal(undelay_pattern(pattern, 4), codes)


def test_delay_model_is_causal_in_steps_and_the_cache_gives_the_uncached_logits():
  model = DelayPatternGenerator(SHAPE, 16, 1, 5, 3, rngs=nnx.Rngs(3))
  model.eval()
  labels = jnp.zeros((2,), jnp.int32)
  codes = jax.random.randint(jax.random.key(0), (2, 5, 3), 0, 16)
  logits, pattern = model(codes, labels)
  # changing frame 3 changes pattern steps >= 3: logits of steps <= 3 stay
  other, _ = model(codes.at[:, 3].set((codes[:, 3] + 1) % 16), labels)
  np.testing.assert_allclose(logits[:, :4], other[:, :4], atol=1e-5)
  assert not np.allclose(logits[:, 4:], other[:, 4:])
  cache = KVCache.empty(model.shape, 2, model.seq_len)
  x = model.embed(pattern, labels)
  stepped = []
  for t in range(model.seq_len):
    out, cache = model.step(x[:, t:t + 1], t, cache)
    stepped.append(out)
  np.testing.assert_allclose(jnp.concatenate(stepped, 1), logits, atol=1e-4)


def test_delay_model_memorises_and_continues_prompts():
  codes = jax.random.randint(jax.random.key(9), (3, 6, 3), 0, 16)
  labels = jnp.arange(3)
  model = DelayPatternGenerator(SHAPE, 16, 3, 6, 3, rngs=nnx.Rngs(4))

  def loss(m, _):
    logits, pattern = m(codes, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.minimum(pattern, 15))
    valid = pattern != m.pad_id
    return jnp.sum(ce * valid) / jnp.sum(valid)

  assert _fit(model, loss, 200) < 0.05
  for prompt_frames in (1, 3, 6):
    got = jax.jit(lambda l, k, p: sampling.sample_delay(model, l, k, p, top_k=1))(
        labels, jax.random.key(0), codes[:, :prompt_frames])
    np.testing.assert_array_equal(got, codes)
  # a wrong prompt is kept as given, and the rest is still sampled
  wrong = (codes[:, :2] + 1) % 16
  got = sampling.sample_delay(model, labels, jax.random.key(1), wrong, top_k=1)
  np.testing.assert_array_equal(got[:, :2], wrong)
  with pytest.raises(ValueError, match="prompt"):
    sampling.sample_delay(model, labels, jax.random.key(1), codes[:, :, :2])


def test_remat_keeps_fewer_activations_and_the_same_gradients(remat_shrinks_residuals):
  """`remat`: the residuals the forward pass keeps for the backward (the leaves of the
  VJP closure) shrink from none to "block" (matmul outputs only) to "full" (block inputs
  only), measured here 22 / 6.4 / 1.8 MiB; loss and gradients do not change."""
  tokens = jax.random.randint(jax.random.key(1), (8, 64), 0, 64)
  labels = jnp.zeros((8,), jnp.int32)
  remat_shrinks_residuals(
      lambda remat: NextTokenGenerator(TransformerShape(width=64, depth=4, heads=4, remat=remat),
                                       64, 1, grid=8, rngs=nnx.Rngs(0)),
      lambda m: jnp.mean(jax.nn.log_softmax(m(tokens, labels))), ratios=(2, 4), atol=1e-7)
  with pytest.raises(ValueError, match="remat: expected one of"):
    TransformerShape(remat="some").check()
