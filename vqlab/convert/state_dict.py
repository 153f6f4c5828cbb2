"""Reading published weights: one reader for every converter."""

from __future__ import annotations

import os

import numpy as np


def read_state_dict(path: str, what: str = "weights") -> dict[str, np.ndarray]:
  """name -> numpy array of a PyTorch `.pth` state dict (needs torch; tensors only, no
  pickled code: `weights_only=True`) or of an `.npz` file. Floating tensors come back as
  float32 (bf16 / fp16 releases included)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: no such file {path!r}")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{what}: reading .pth files like {path!r} needs torch (pip install "
                      "torch); or save the state dict as .npz") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def fold_batch_norm(state: dict[str, np.ndarray], prefix: str, eps: float
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(scale, bias) float32 equal to the inference-mode batch norm `prefix`.{weight, bias,
  running_mean, running_var}: y = x * scale + bias."""
  g = lambda s: np.asarray(state[f"{prefix}.{s}"], np.float64)
  scale = g("weight") / np.sqrt(g("running_var") + eps)
  return scale.astype(np.float32), (g("bias") - g("running_mean") * scale).astype(np.float32)
