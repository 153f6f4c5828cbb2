"""Heads for tokens one softmax cannot hold (bitwise, factorized sub-tokens, stacked
levels): the digits of a code stack round-trip, each head's token probabilities are a
distribution over every token at a tiny vocabulary, the bitwise one is the product of its
bits, cached sampling draws what uncached sampling draws, and tiny models memorise."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vqlab.models import sampling
from vqlab.models.generators import NextTokenGenerator
from vqlab.models.token_heads import CodeStack
from vqlab.nn.transformer import TransformerShape
from vqlab.quantizers.core import indices_to_bits

SHAPE = TransformerShape(width=32, depth=2, heads=4, mlp_ratio=2.0)
DEPTH = TransformerShape(width=32, depth=1, heads=4, mlp_ratio=2.0)
GRID = 2  # 4 positions


def _model(kind: str, seed: int = 0, num_classes: int = 3) -> NextTokenGenerator:
  stacks = {"bitwise": CodeStack((2, 2, 2)), "factorized": CodeStack((4, 8)),
            "levels": CodeStack((3, 5), stacked=True)}
  stack = stacks[kind]
  head = "bitwise" if kind == "bitwise" else "depth"
  vocab = 3 if stack.stacked else int(np.prod(stack.sizes))
  return NextTokenGenerator(SHAPE, vocab, num_classes, GRID, head=head, stack=stack,
                            depth_shape=DEPTH, rngs=nnx.Rngs(seed))


def _all_tokens(stack: CodeStack) -> np.ndarray:
  """Every token value, in the tokenizer's format."""
  if stack.stacked:
    return np.array(list(itertools.product(*[range(s) for s in stack.sizes])))
  return np.arange(int(np.prod(stack.sizes)))


def test_code_stack_digits_round_trip_and_bits_read_msb_first():
  bits = CodeStack((2,) * 5)
  idx = jnp.arange(32)
  np.testing.assert_array_equal(bits.split(idx), indices_to_bits(idx, 5))  # the quantizers' order
  factorized = CodeStack((64, 4096))
  big = jnp.array([0, 4095, 4096, 2**18 - 1, 123_456])
  np.testing.assert_array_equal(factorized.split(big), np.stack([big // 4096, big % 4096], -1))
  np.testing.assert_array_equal(factorized.join(factorized.split(big)), big)
  stacked = CodeStack((3, 5), stacked=True)
  codes = jnp.array([[[1, 4], [2, 0]]])
  np.testing.assert_array_equal(stacked.join(stacked.split(codes)), codes)
  with pytest.raises(ValueError, match="last axis of 2 stacked indices"):
    stacked.split(jnp.zeros((1, 2, 3), jnp.int32))
  with pytest.raises(ValueError, match="at most 2\\^31"):
    CodeStack((2,) * 32)


@pytest.mark.parametrize("kind", ["bitwise", "factorized", "levels"])
def test_token_probabilities_sum_to_one_over_every_token(kind):
  model = _model(kind)
  model.eval()
  candidates = _all_tokens(model.stack)
  prefix = jax.random.randint(jax.random.key(1), (1, model.seq_len - 1) + candidates.shape[1:],
                              0, 2)
  tokens = jnp.concatenate([jnp.repeat(prefix, len(candidates), 0),
                            jnp.asarray(candidates)[:, None]], 1)
  logp, _ = model.log_prob(tokens, jnp.ones((len(candidates),), jnp.int32))
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(logp[:, -1]))), 1.0, rtol=1e-5)
  # earlier positions do not depend on the last token
  np.testing.assert_allclose(logp[:, :-1], jnp.repeat(logp[:1, :-1], len(candidates), 0),
                             rtol=1e-5, atol=1e-6)


def test_bitwise_log_likelihood_is_the_sum_of_bit_log_likelihoods_and_a_full_softmax():
  model = _model("bitwise")
  model.eval()
  tokens = jax.random.randint(jax.random.key(2), (2, 4), 0, 8)
  labels = jnp.array([0, 2])
  logp, _ = model.log_prob(tokens, labels)
  h, _ = model.hidden(model.embed(tokens, labels), 0)
  bit_logits = model.head.bit_logits(h)  # (2, 4, 3)
  bits = model.stack.split(tokens)
  by_hand = jnp.sum(jnp.where(bits > 0, jax.nn.log_sigmoid(bit_logits),
                              jax.nn.log_sigmoid(-bit_logits)), -1)
  np.testing.assert_allclose(logp, by_hand, rtol=1e-6, atol=1e-6)
  # the same distribution as a softmax over the 8 codes with logits sum_d b_d l_d
  every = model.stack.split(jnp.arange(8))  # (8, 3)
  full_logits = jnp.einsum("cd,bnd->bnc", every.astype(jnp.float32), bit_logits)
  full = -optax.softmax_cross_entropy_with_integer_labels(full_logits, tokens)
  np.testing.assert_allclose(logp, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["bitwise", "factorized", "levels"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_cached_sampling_draws_what_uncached_sampling_draws(kind, cfg_scale):
  model = _model(kind)
  model.eval()
  labels = jnp.array([0, 2])
  kw = dict(cfg_scale=cfg_scale, temperature=1.3, top_k=0, top_p=1.0)
  cached = jax.jit(lambda k: sampling.sample_next_token(model, labels, k, **kw))(
      jax.random.key(5))
  # uncached: the whole sequence through the transformer for every position, same keys
  guided = cfg_scale != 1.0
  lab = jnp.concatenate([labels, jnp.full_like(labels, 3)]) if guided else labels
  pick = lambda logits, key: sampling._pick(logits, key, 2, guided, cfg_scale, temperature=1.3,
                                            top_k=0, top_p=1.0)
  depth = model.stack.depth
  codes = jnp.zeros((2, model.seq_len, depth), jnp.int32)
  key = jax.random.key(5)
  for i in range(model.seq_len):
    both = jnp.concatenate([codes, codes]) if guided else codes
    h, _ = model.hidden(model.embed(model.stack.join(both), lab), 0)
    key, sub = jax.random.split(key)
    codes = codes.at[:, i].set(model.sample_codes(h[:, i], sub, pick))
  np.testing.assert_array_equal(cached, model.stack.join(codes))
  assert cached.shape == ((2, 4, 2) if kind == "levels" else (2, 4))


@pytest.mark.parametrize("kind", ["bitwise", "factorized", "levels"])
def test_each_head_memorises_and_samples_back(kind):
  model = _model(kind, seed=1, num_classes=4)
  every = _all_tokens(model.stack)
  data = jnp.asarray(every[np.random.default_rng(6).integers(0, len(every), (4, 4))])
  labels = jnp.arange(4)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: -m.log_prob(data, labels)[0].mean())(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(150):
    loss = step(model, optimizer)
  assert float(loss) < 0.05
  got = jax.jit(lambda k: sampling.sample_next_token(model, labels, k, top_k=1))(jax.random.key(0))
  np.testing.assert_array_equal(got, data)
  prompt = data[:, :1]
  continued = sampling.sample_next_token(model, labels, jax.random.key(1), cfg_scale=1.5,
                                         top_k=1, prompt=prompt)
  np.testing.assert_array_equal(continued, data)


def test_heads_refuse_tokens_they_cannot_model():
  with pytest.raises(ValueError, match="need 'depth'"):
    NextTokenGenerator(SHAPE, 8, 1, GRID, stack=CodeStack((2, 4)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'bitwise' models the bits"):
    NextTokenGenerator(SHAPE, 32, 1, GRID, head="bitwise", stack=CodeStack((4, 8)),
                       rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="depth_shape"):
    NextTokenGenerator(SHAPE, 32, 1, GRID, head="depth", stack=CodeStack((4, 8)),
                       rngs=nnx.Rngs(0))
  model = _model("bitwise")
  with pytest.raises(ValueError, match="scores tokens with log_prob"):
    model(jnp.zeros((1, 4), jnp.int32), jnp.zeros((1,), jnp.int32))
