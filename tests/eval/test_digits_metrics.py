"""The digits sample metrics: a classifier trained on the built-in training digits (held-
out accuracy >= 98%), FID in its feature space, class accuracy, precision / recall; real
held-out digits score as real, noise and mode collapse score as what they are."""

import numpy as np
import pytest

from vqlab.eval import digits
from vqlab.train import evaluators


@pytest.fixture(scope="module")
def classifier():
  """Trained once per machine (the tests' VQLAB_CACHE, tests/conftest.py), under a lock."""
  return evaluators.digits_classifier()


@pytest.fixture(scope="module")
def split():
  return evaluators.digits_split()


def test_the_classifier_scores_at_least_98_percent_on_the_held_out_digits(classifier, split):
  params, meta = classifier
  (train_x, _), (test_x, test_y) = split
  assert len(train_x) == 4500 and len(test_x) == 500
  acc = digits.accuracy(params, test_x, test_y)
  assert acc >= 0.98 and acc == pytest.approx(meta["test_accuracy"])


def test_real_digits_against_themselves_score_perfectly(classifier, split):
  params, _ = classifier
  _, (test_x, test_y) = split
  m = digits.sample_metrics(params, test_x, test_x, test_y)
  assert abs(m["digits_fid"]) < 1e-3
  assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["class_accuracy"] >= 0.98


def test_other_real_digits_score_near_real_and_noise_scores_badly(classifier, split, rng):
  params, _ = classifier
  (train_x, train_y), (test_x, test_y) = split
  real = digits.sample_metrics(params, test_x, train_x[:500], train_y[:500])
  noise = rng.integers(0, 256, size=test_x.shape).astype(np.uint8)
  bad = digits.sample_metrics(params, test_x, noise, test_y)
  assert real["class_accuracy"] >= 0.98 and real["precision"] > 0.8 and real["recall"] > 0.8
  assert bad["digits_fid"] > 20 * real["digits_fid"]
  # noise lies off the digits: none of the real ones is near it (recall), and most of it
  # is near none of them; how much lands inside the real k-NN balls depends on the
  # classifier's rounding (under 0.2, and 0.27-0.31 over 4 noise draws once compiled
  # with other LLVM passes), so it is bounded against the real digits' (0.89)
  assert bad["class_accuracy"] < 0.3 and bad["recall"] < 0.05
  assert bad["precision"] < real["precision"] - 0.45
  wrong = digits.sample_metrics(params, test_x, train_x[:500], (train_y[:500] + 1) % 10)
  assert wrong["class_accuracy"] < 0.05  # samples that show another class than asked for


def test_mode_collapse_keeps_precision_and_loses_recall(classifier, split):
  params, _ = classifier
  (train_x, train_y), (test_x, _) = split
  sevens = train_x[train_y == 7][:300]
  m = digits.sample_metrics(params, test_x, sevens)
  assert m["precision"] > 0.8 and m["recall"] < 0.3 and "class_accuracy" not in m
  diverse = digits.sample_metrics(params, test_x, train_x[:300])
  assert m["digits_fid"] > 5 * diverse["digits_fid"]


def test_precision_recall_on_known_distributions(rng):
  real = rng.normal(size=(400, 2))
  same = digits.precision_recall(real, rng.normal(size=(400, 2)))
  far = digits.precision_recall(real, rng.normal(size=(400, 2)) + 10)
  assert min(same) > 0.9 and far == (0.0, 0.0)
  narrow = digits.precision_recall(real, 0.1 * rng.normal(size=(400, 2)))
  assert narrow[0] > 0.95 and narrow[1] < 0.5  # all inside the real support, covering little
  with pytest.raises(ValueError, match="more than k=3"):
    digits.precision_recall(real[:3], real)


def test_files_that_are_not_a_classifier_are_refused(tmp_path):
  path = str(tmp_path / "x.npz")
  np.savez(path, c1=np.zeros((3, 3)))
  with pytest.raises(ValueError, match="not a digits classifier"):
    digits.load(path)
  with pytest.raises(ValueError, match=r"expected \(B, 32, 32, 1\)"):
    digits.features(digits.init_params(__import__("jax").random.key(0)),
                    np.zeros((2, 28, 28, 1), np.uint8))
