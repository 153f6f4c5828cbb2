"""How well discrete units track phonemes, as HuBERT measures its k-means targets (Hsu et
al. 2021, https://arxiv.org/abs/2106.07447, sec. 4): from the joint distribution of
(phoneme label y, unit z) over frames,

- phone purity   E_z[max_y p(y | z)]: how well a unit names one phoneme,
- cluster purity E_y[max_z p(z | y)]: how well a phoneme sticks to one unit,
- PNMI           I(y; z) / H(y): the share of the phonemes' uncertainty a unit removes.
"""

from __future__ import annotations

import numpy as np


def joint_counts(labels: np.ndarray, units: np.ndarray, num_labels: int,
                 num_units: int) -> np.ndarray:
  """(num_labels, num_units) frame counts of each (label, unit) pair."""
  labels, units = np.asarray(labels).ravel(), np.asarray(units).ravel()
  if labels.shape != units.shape:
    raise ValueError(f"labels / units: expected one label per unit, got {labels.shape} and "
                     f"{units.shape}")
  for name, x, n in (("labels", labels, num_labels), ("units", units, num_units)):
    if x.size and (x.min() < 0 or x.max() >= n):
      raise ValueError(f"{name}: expected values in [0, {n}), got [{x.min()}, {x.max()}]")
  counts = np.zeros((num_labels, num_units), np.float64)
  np.add.at(counts, (labels, units), 1.0)
  return counts


def unit_quality(labels: np.ndarray, units: np.ndarray, num_labels: int,
                 num_units: int) -> dict[str, float]:
  """phone_purity, cluster_purity and pnmi of frame-aligned labels and units."""
  counts = joint_counts(labels, units, num_labels, num_units)
  total = counts.sum()
  if total == 0:
    raise ValueError("labels / units: expected at least one frame")
  p = counts / total
  p_y, p_z = p.sum(axis=1), p.sum(axis=0)
  nz = p > 0
  mutual = float(np.sum(p[nz] * np.log(p[nz] / (p_y[:, None] * p_z[None, :])[nz])))
  entropy = float(-np.sum(p_y[p_y > 0] * np.log(p_y[p_y > 0])))
  return {"phone_purity": float(p.max(axis=0).sum()),  # sum_z p(z) max_y p(y|z)
          "cluster_purity": float(p.max(axis=1).sum()),
          "pnmi": mutual / entropy if entropy > 0 else 0.0}


def deduplicate(units: np.ndarray) -> np.ndarray:
  """Runs of one unit collapsed to one (GSLM's "deduplicated" units)."""
  units = np.asarray(units).ravel()
  if units.size == 0:
    return units
  return units[np.concatenate([[True], units[1:] != units[:-1]])]
