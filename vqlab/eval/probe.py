"""What a token stream says about phonemes: a small probe trained on frozen tokens predicts
each frame's phoneme; its error on held-out speech is the measure (SpeechTokenizer, Zhang
et al. 2023, https://arxiv.org/abs/2308.16692, probes each RVQ level the same way).

The probe sees the tokens of frames t - context .. t + context (embedded, concatenated),
one ReLU layer, then phoneme logits; trained with Adam on cross-entropy. The frame phone
error rate it reports is 1 - frame accuracy (not an edit distance over phoneme strings).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def windows(tokens: Sequence[np.ndarray], vocab: int, context: int) -> np.ndarray:
  """(frames, 2 context + 1) token windows over utterances, padded with id `vocab`."""
  out = []
  for t in tokens:
    t = np.asarray(t, np.int32).ravel()
    padded = np.pad(t, (context, context), constant_values=vocab)
    out.append(np.stack([padded[i:i + len(t)] for i in range(2 * context + 1)], axis=1))
  return np.concatenate(out)


def _init(key, vocab: int, num_labels: int, context: int, width: int):
  k1, k2, k3 = jax.random.split(key, 3)
  span = 2 * context + 1
  return {"embed": jax.random.normal(k1, (vocab + 1, width)) * 0.1,
          "hidden": jax.random.normal(k2, (span * width, width)) / np.sqrt(span * width),
          "hidden_bias": jnp.zeros(width),
          "out": jax.random.normal(k3, (width, num_labels)) / np.sqrt(width),
          "out_bias": jnp.zeros(num_labels)}


def _logits(params, x):
  h = params["embed"][x].reshape(x.shape[0], -1)
  h = jax.nn.relu(h @ params["hidden"] + params["hidden_bias"])
  return h @ params["out"] + params["out_bias"]


def fit(tokens: Sequence[np.ndarray], labels: Sequence[np.ndarray], vocab: int,
        num_labels: int, *, context: int = 2, width: int = 64, steps: int = 400,
        batch_size: int = 2048, lr: float = 3e-3, seed: int = 0):
  """Probe parameters fitted to per-utterance tokens (ids < vocab) and frame labels."""
  x = windows(tokens, vocab, context)
  y = np.concatenate([np.asarray(lab, np.int32).ravel() for lab in labels])
  if len(x) != len(y):
    raise ValueError(f"tokens / labels: expected one label per frame, got {len(x)} frames "
                     f"and {len(y)} labels")
  flat = np.concatenate([np.asarray(t).ravel() for t in tokens])
  if flat.max() >= vocab or y.max() >= num_labels or min(flat.min(), y.min()) < 0:
    raise ValueError(f"tokens / labels: expected tokens in [0, {vocab}) and labels in "
                     f"[0, {num_labels})")
  params = _init(jax.random.key(seed), vocab, num_labels, context, width)
  opt_state = optax.adam(lr).init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    pick = rng.integers(0, len(x), min(batch_size, len(x)))
    params, opt_state = _step(params, opt_state, jnp.asarray(x[pick]), jnp.asarray(y[pick]),
                              lr=lr)
  return {"params": params, "vocab": vocab, "context": context}


# module level, so that fitting a probe per codec level compiles the step once
@functools.partial(jax.jit, static_argnames=("lr",))
def _step(params, opt_state, xb, yb, *, lr: float):
  grads = jax.grad(lambda p: jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(_logits(p, xb), yb)))(params)
  updates, opt_state = optax.adam(lr).update(grads, opt_state)
  return optax.apply_updates(params, updates), opt_state


def error_rate(probe, tokens: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
  """The share of frames whose phoneme the probe gets wrong."""
  x = windows(tokens, probe["vocab"], probe["context"])
  y = np.concatenate([np.asarray(lab).ravel() for lab in labels])
  predicted = np.asarray(_predict(probe["params"], jnp.asarray(x)))
  return float(np.mean(predicted != y))


@jax.jit
def _predict(params, x):
  return jnp.argmax(_logits(params, x), axis=-1)


def phone_error_rate(train_tokens, train_labels, eval_tokens, eval_labels, vocab: int,
                     num_labels: int, **kwargs) -> float:
  """Fit on the training utterances, report the frame phone error rate on the others."""
  probe = fit(train_tokens, train_labels, vocab, num_labels, **kwargs)
  return error_rate(probe, eval_tokens, eval_labels)
