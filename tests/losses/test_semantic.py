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


@pytest.mark.parametrize("axis", ["time", "frame"])
def test_feature_distillation_matches_speechtokenizer_losses_in_pytorch(axis):
  """SpeechTokenizer's D-axis ("time") and T-axis ("frame") losses written in PyTorch ops:
  the student has two frames more than the teacher (both cut to the teacher's)."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  student = rng.normal(size=(2, 12, 5)).astype(np.float32)
  teacher = (0.5 * student[:, :10] + rng.normal(size=(2, 10, 5))).astype(np.float32)
  s, t = torch.tensor(student[:, :10]), torch.tensor(teacher)
  dim = 1 if axis == "time" else 2
  expected = -torch.nn.functional.logsigmoid(torch.nn.functional.cosine_similarity(
      s, t, dim=dim)).mean()
  if axis == "frame":
    expected = expected + torch.mean(torch.abs(s - t))
  got = semantic.feature_distillation(jnp.asarray(student), jnp.asarray(teacher), axis)
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_feature_distillation_pulls_the_student_only_and_is_least_when_aligned():
  rng = np.random.default_rng(2)
  teacher = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
  grads = jax.grad(semantic.feature_distillation, argnums=(0, 1))(student, teacher)
  assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) == 0.0
  # cos = 1 everywhere: -log sigmoid(1) = log(1 + e^-1); cos = -1: log(1 + e)
  assert float(semantic.feature_distillation(3.0 * teacher, teacher)) == pytest.approx(
      np.log1p(np.exp(-1.0)), rel=1e-5)
  assert float(semantic.feature_distillation(-teacher, teacher)) == pytest.approx(
      np.log1p(np.e), rel=1e-5)
  with pytest.raises(ValueError, match="axis"):
    semantic.feature_distillation(student, teacher, "channel")
  with pytest.raises(ValueError, match="feature width"):
    semantic.feature_distillation(student, teacher[..., :3])
