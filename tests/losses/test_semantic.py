"""Semantic distillation: CTC against PyTorch's reference implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.losses import semantic


def test_phoneme_ctc_matches_pytorch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  b, f, classes, n = 3, 20, 7, 6
  logits = rng.normal(size=(b, f, classes)).astype(np.float32)
  counts = np.array([6, 3, 0])  # a clip with no phonemes: only blanks are likely
  labels = np.zeros((b, n), np.int32)
  for i, c in enumerate(counts):
    labels[i, :c] = rng.integers(0, classes - 1, c)  # blank is the last class
  labels[0, 1] = labels[0, 2]  # a repeat needs a blank between: CTC's hard case
  got = semantic.phoneme_ctc(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(counts),
                             blank_id=classes - 1)
  log_probs = torch.log_softmax(torch.tensor(logits), -1).transpose(0, 1)  # (F, B, C)
  ref = torch.nn.functional.ctc_loss(log_probs, torch.tensor(labels, dtype=torch.long),
                                     torch.full((b,), f, dtype=torch.long),
                                     torch.tensor(counts, dtype=torch.long),
                                     blank=classes - 1, reduction="none")
  expected = np.mean(ref.numpy() / np.maximum(counts, 1))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_phoneme_ctc_gradient_raises_the_said_phonemes():
  f, classes = 12, 5
  labels, counts = jnp.array([[1, 3, 0]]), jnp.array([2])
  logits = jnp.zeros((1, f, classes))
  g = jax.grad(lambda x: semantic.phoneme_ctc(x, labels, counts, blank_id=4))(logits)
  # the said phonemes (1, 3) and blank gain probability; the unsaid ones (0, 2) lose it
  total = np.asarray(g[0].sum(axis=0))
  assert total[1] < 0 and total[3] < 0 and total[4] < 0
  assert total[0] > 0 and total[2] > 0
