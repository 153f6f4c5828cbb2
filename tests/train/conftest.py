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


def _build_speech_chain(root, data_dir):
  from configs import audio_codec
  from vqlab.train import codec
  c = audio_codec.get_config("runlocal")
  c.data.update(data_dir=data_dir, crop_seconds=0.5, eval_seconds=0.5)
  c.model.shape.update(strides=(2, 4, 5, 8))  # 50 frames/s: 25 frames per 0.5 s record
  c.loss.disc_start = 10_000  # codes only
  c.eval.update(wer_utterances=0, probe_utterances=0)  # the codec tests check those
  workdir = str(root / "codec")
  codec.train(c, workdir)
  export_tokens.export(workdir, str(root / "tokens"), split="train", examples=24, batch_size=8)
  export_tokens.export(workdir, str(root / "prompts"), split="synth_test", examples=8,
                       batch_size=8)


@pytest.fixture(scope="session")
def speech_chain(build_once, speech_data_dir):
  """A 2-step speech codec (3 levels of 64 codes, 50 frames/s), 24 exported training
  clips of 0.5 s and 8 held-out prompt clips; built once per session."""
  root = build_once("speech_chain", lambda d: _build_speech_chain(d, speech_data_dir))
  return str(root / "codec"), str(root / "tokens"), str(root / "prompts")
