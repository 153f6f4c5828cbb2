"""Converters from published weights to vqlab's files, behind one command:

  vqlab convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var_samples.png
  vqlab convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg16.npz
  vqlab convert inception --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz
  vqlab convert hubert --weights pytorch_model.bin --out hubert_base.npz
  vqlab convert i3d --pth rgb_imagenet.pt --out i3d.npz

Each converter is a module here with `main(argv)`; file formats (PyTorch state dicts,
read by `state_dict.read_state_dict`) stay out of models/, losses/ and eval/.
"""

from __future__ import annotations

import importlib
import sys

CONVERTERS = {
    "var": ("vqlab.convert.var", "VAR's released VQVAE + transformer: sample a grid"),
    "lpips": ("vqlab.convert.lpips", "LPIPS-VGG16 (torchvision VGG16 + LPIPS linear layers)"),
    "inception": ("vqlab.convert.inception", "pytorch-fid's InceptionV3 (FID, IS)"),
    "hubert": ("vqlab.convert.hubert", "HuBERT (transformers' layout): semantic teacher"),
    "i3d": ("vqlab.convert.i3d", "PyTorch Inception-I3D (pytorch-i3d's layout): FVD"),
}


def main(argv: list[str]) -> None:
  """argv[0] is the program name, argv[1] the converter."""
  names = "\n".join(f"  {k:10s} {help_}" for k, (_, help_) in CONVERTERS.items())
  if len(argv) < 2 or argv[1] not in CONVERTERS:
    got = f"got {argv[1]!r}; " if len(argv) >= 2 and argv[1] not in ("-h", "--help") else ""
    print(f"usage: vqlab convert <converter> ...; {got}converters:\n{names}", file=sys.stderr)
    sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
  importlib.import_module(CONVERTERS[argv[1]][0]).main(argv[2:])
