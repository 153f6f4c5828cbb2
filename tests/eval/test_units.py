"""Unit quality (HuBERT's phone purity, cluster purity, PNMI) on constructed cases."""

import numpy as np
import pytest

from vqlab.eval import units


def test_a_relabelling_of_the_phonemes_is_perfect():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 1000)
  perm = np.array([3, 0, 4, 1, 2])  # units name the phonemes under other numbers
  q = units.unit_quality(labels, perm[labels], 5, 8)
  assert q == pytest.approx({"phone_purity": 1.0, "cluster_purity": 1.0, "pnmi": 1.0})


def test_independent_units_carry_nothing():
  labels, unit = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
  labels = np.concatenate([labels.ravel(), np.zeros(24, int)])  # p(y=0) = 1/2 + ...
  unit = np.concatenate([unit.ravel(), np.tile(np.arange(6), 4)])  # still independent
  q = units.unit_quality(labels, unit, 4, 6)
  assert q["pnmi"] == pytest.approx(0.0, abs=1e-12)
  assert q["phone_purity"] == pytest.approx(np.mean(labels == 0))  # the majority phoneme


def test_a_hand_computed_case():
  # p(y, z): (0, 0) = 1/2, (1, 0) = 1/4, (1, 1) = 1/4
  q = units.unit_quality([0, 0, 1, 1], [0, 0, 0, 1], 2, 2)
  mutual = 0.5 * np.log(0.5 / (0.5 * 0.75)) + 0.25 * np.log(0.25 / (0.5 * 0.75)) \
      + 0.25 * np.log(0.25 / (0.5 * 0.25))
  assert q["pnmi"] == pytest.approx(mutual / np.log(2))
  assert q["phone_purity"] == pytest.approx(0.75) and q["cluster_purity"] == pytest.approx(0.75)
  # splitting a unit never lowers purity or PNMI; merging all into one unit gives 0
  assert units.unit_quality([0, 0, 1, 1], [0, 0, 0, 0], 2, 1)["pnmi"] == 0.0


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="one label per unit"):
    units.unit_quality([0, 1], [0], 2, 2)
  with pytest.raises(ValueError, match=r"units: expected values in \[0, 2\)"):
    units.unit_quality([0, 1], [0, 2], 2, 2)


def test_deduplicate_collapses_runs():
  np.testing.assert_array_equal(units.deduplicate([3, 3, 1, 1, 1, 3, 0, 0]), [3, 1, 3, 0])
  assert units.deduplicate([]).size == 0
