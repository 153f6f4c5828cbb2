"""LPIPS-VGG16 weights (torchvision's VGG16 + richzhang/PerceptualSimilarity's linear
layers) -> the .npz that `vqlab.losses.perceptual.LPIPS.load_npz` reads:

  vqlab convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg16.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from vqlab.convert.state_dict import read_state_dict
from vqlab.losses.perceptual import STAGE_ENDS, TORCHVISION_INDEX


def convert(vgg_state: dict, lin_state: dict) -> dict[str, np.ndarray]:
  """PyTorch state dicts (arrays) -> the .npz names: OIHW kernels become HWIO."""
  out = {}
  for i, t in enumerate(TORCHVISION_INDEX):
    w, b = (np.asarray(vgg_state[f"features.{t}.{n}"], np.float32) for n in ("weight", "bias"))
    out[f"conv{i}_kernel"] = w.transpose(2, 3, 1, 0)
    out[f"conv{i}_bias"] = b
  for k in range(len(STAGE_ENDS)):
    out[f"lin{k}"] = np.asarray(lin_state[f"lin{k}.model.1.weight"], np.float32).reshape(-1)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="vqlab convert lpips",
                                   description="Convert LPIPS-VGG16 weights to .npz.")
  parser.add_argument("--vgg", required=True, help="torchvision VGG16 state dict (.pth)")
  parser.add_argument("--lin", required=True, help="LPIPS linear layers, e.g. vgg.pth")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  vgg, lin = read_state_dict(args.vgg, "--vgg"), read_state_dict(args.lin, "--lin")
  np.savez(args.out, **convert(vgg, lin))
  print(f"wrote {args.out}")
