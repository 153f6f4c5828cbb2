"""pytorch-fid's Inception weights (`pt_inception-2015-12-05-6726825d.pth`) -> the .npz
that `vqlab.eval.inception.load_npz` reads (FID / rFID / Inception Score):

  vqlab convert inception --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np

from vqlab.convert.state_dict import fold_batch_norm, read_state_dict
from vqlab.eval.inception import BN_EPS


def convert(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pytorch-fid's state dict -> .npz arrays: OIHW -> HWIO, batch norm folded."""
  out = {}
  for key in state:
    if not key.endswith(".conv.weight"):
      continue
    name = key[:-len(".conv.weight")]
    out[f"{name}/kernel"] = np.asarray(state[key], np.float32).transpose(2, 3, 1, 0)
    out[f"{name}/scale"], out[f"{name}/bias"] = fold_batch_norm(state, f"{name}.bn", BN_EPS)
  if "fc.weight" in state:
    out["fc/kernel"] = np.asarray(state["fc.weight"], np.float32).T
    out["fc/bias"] = np.asarray(state["fc.bias"], np.float32)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="vqlab convert inception",
                                   description="Convert pytorch-fid's Inception weights.")
  parser.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  np.savez(args.out, **convert(read_state_dict(args.pth, "--pth")))
  print(f"wrote {args.out}")
