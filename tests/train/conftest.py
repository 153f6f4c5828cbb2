"""Fixtures of the trainer tests."""

import pytest

from configs import vqgan_quickstart
from vqlab.train import export_tokens, tokenizer


def _build_chain(root):
  for name, arg in (("vq", "runlocal"), ("msvq", "msvq,runlocal")):
    c = vqgan_quickstart.get_config(arg)
    c.data.update(name="vqlab_digits", data_dir=str(root / "tfds"), min_crop=0, max_crop=0,
                  flip=False)
    c.model.shape.update(in_channels=1, channel_mult=(1, 2, 2) if name == "msvq" else (1, 2))
    c.loss.update(disc_start=10_000, perceptual_weight=0.0, lpips_weights="")  # codes only
    if name == "msvq":
      c.model.quantizer.args.update(codebook_size=64, patch_nums=(1, 2, 4, 8))
    workdir = str(root / name)
    tokenizer.train(c, workdir)
    export_tokens.export(workdir, str(root / f"{name}_tokens"), split="train", examples=100,
                         batch_size=16)


@pytest.fixture(scope="session")
def chain(build_once):
  """Two 2-step digit tokenizers (one index per position, and VAR's multi-scale) and
  100 exported training tokens of each, with labels; built once per session."""
  root = build_once("generator_chain", _build_chain)
  return {name: (str(root / name), str(root / f"{name}_tokens")) for name in ("vq", "msvq")}
