"""Bad input on the command line is one message, not a traceback; switching the quantizer
kind from the command line works; nothing is written before the config is valid."""

import json
import os
import subprocess
import sys

import pytest

from configs import generator_quickstart, vqgan_quickstart
from vqlab.train import runs, tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vqlab(*args):
  done = subprocess.run([sys.executable, "-m", "vqlab.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  return done.returncode, done.stderr


@pytest.mark.parametrize("case", ["field", "file", "step", "kind", "not_a_run"])
def test_bad_input_is_one_message(case, chain, tmp_path):
  tok = chain["vq"][0]
  fake_generator = tmp_path / "gen"
  fake_generator.mkdir()
  (fake_generator / "config.json").write_text(
      generator_quickstart.get_config("raster").to_json())
  args, expect = {
      "field": (["train", "--config", "configs/vqgan_quickstart.py:runlocal", "--workdir",
                 str(tmp_path / "w"), "--config.train.stepz=5"], 'Did you mean "steps"'),
      "file": (["train", "--config", "configs/no_such.py", "--workdir", str(tmp_path / "w")],
               "No such file or directory: 'configs/no_such.py'"),
      "step": (["eval", "--workdir", tok, "--step", "5"],
               "step: expected one of the checkpoints [2]"),
      "kind": (["eval", "--workdir", str(fake_generator)],
               "expected a run of tokenizer or codec, got a generator run"),
      "not_a_run": (["tokens", "--workdir", str(tmp_path), "--out", str(tmp_path / "t")],
                    "expected a run (config.json)"),
  }[case]
  rc, err = _vqlab(*args)
  assert rc == 1 and expect in err, err[-2000:]
  assert "Traceback" not in err and len(err.strip().splitlines()) <= 8, err[-2000:]
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_switching_the_quantizer_kind_takes_that_kinds_defaults(chain, tmp_path):
  c = vqgan_quickstart.get_config("runlocal")  # a VQ config: codebook="ema", k-means ...
  c.data.update(name="vqlab_digits", data_dir=runs.load_config(chain["vq"][0]).data.data_dir,
                min_crop=0, max_crop=0, flip=False)
  c.model.shape.update(in_channels=1, channel_mult=(1, 2))
  c.loss.update(disc_start=10_000, perceptual_weight=0.0, lpips_weights="")
  c.model.quantizer.kind = "fsq"  # = --config.model.quantizer.kind=fsq
  # the model the trainer builds (training it adds nothing here: the default run trains)
  model = tokenizer.build_model(c, c.seed)
  assert type(model.quantizer).__name__ == "FSQ" and model.quantizer.levels == (8, 5, 5, 5)
  assert model.quantizer.codebook_size == 1000
  bad = str(tmp_path / "bad")
  c.model.quantizer.args.levels = (8, 5.5)
  with pytest.raises(ValueError, match="levels: expected a non-empty list of ints"):
    tokenizer.train(c, bad)
  assert not os.path.exists(os.path.join(bad, "config.json"))  # nothing written
  saved = json.loads(c.to_json())["model"]["quantizer"]  # what a run's config.json holds
  assert saved["kind"] == "fsq" and saved["defaults_of"] == "vq"
