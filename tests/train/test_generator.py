"""The generator trainer on the whole chain: tokenizer -> exported tokens -> generator
-> decoded samples, for each paradigm; resume; clear errors."""

import json
import os

import numpy as np
import pytest

from configs import generator_quickstart
from vqlab.train import generator, runs
from vqlab.train.common import read_jsonl


def _config(paradigm, chain, **model):
  c = generator_quickstart.get_config(f"{paradigm},runlocal")
  workdir, tokens = chain["msvq" if paradigm == "var" else "vq"]
  c.update(tokenizer_workdir=workdir, tokens_dir=tokens)
  c.model.update(**{"num_classes": 10, **model})
  return c


@pytest.mark.parametrize("paradigm", ["raster", "maskgit", "var"])
def test_each_paradigm_trains_and_samples_images(paradigm, chain, tmp_path):
  c = _config(paradigm, chain)
  if paradigm == "maskgit":  # gFID / IS wiring, on a random Inception network
    c.eval.update(inception="random", examples=20, batch_size=10)
  if paradigm == "raster":  # the digits classifier's metrics of a digits tokenizer's samples
    c.eval.update(digits_examples=40, batch_size=10, sample_settings=({"cfg_scale": 3.0},))
    c.sample.num = 20  # two per class: one row per class
  summary = generator.train(c, str(tmp_path))
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  first = [r for r in rows if "loss" in r][0]
  vocab = 64 if paradigm == "var" else 1024
  # an untrained model predicts about uniformly: ln(vocab) nats per token
  assert abs(first["loss"] - np.log(vocab)) < 1.0
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  assert json.load(open(tmp_path / "summary.json"))["paradigm"] == paradigm
  if paradigm == "raster":  # 2 steps: samples of nothing, scored as such
    assert summary["digits_examples"] == 40 and summary["digits_fid"] > 10
    assert summary["classifier_test_accuracy"] >= 0.98
    assert 0 <= summary["class_accuracy"] <= 1 and 0 <= summary["precision"] <= 1
    assert rows[-1]["digits/digits_fid"] == summary["digits_fid"]
    guided = summary["digits_fid@cfg_scale=3.0"]  # the same model, sampled with guidance 3
    assert guided > 10 and guided != summary["digits_fid"]
    assert summary["sample_seconds@cfg_scale=3.0"] > 0
    from PIL import Image
    grid = Image.open(tmp_path / "images" / "samples_0000002.png")
    assert grid.size[1] >= 10 * 64  # ten rows (one per class) of 32-px samples shown at 64
  if paradigm == "maskgit":
    assert summary["gfid_examples"] == 20 and summary["gfid"] > 0
    assert 1.0 <= summary["inception_score"] <= 1008
    assert rows[-1]["gfid"] == summary["gfid"]


def test_loss_falls_and_resume_continues(chain, tmp_path):
  c = _config("raster", chain)
  c.train.update(steps=40, lr=3e-3)
  c.sample.every = 1000
  c.log.update(every=10, checkpoint_every=20)
  whole = generator.train(c, str(tmp_path / "whole"))
  rows = read_jsonl(str(tmp_path / "whole" / "metrics.jsonl"))
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0] - 1.0, losses
  c2 = _config("raster", chain)
  c2.train.update(steps=20, lr=3e-3)
  c2.sample.every = 1000
  c2.log.update(every=10, checkpoint_every=20)
  generator.train(c2, str(tmp_path / "parts"))
  c2.train.steps = 40
  resumed = generator.train(c2, str(tmp_path / "parts"))
  assert resumed["loss"] == whole["loss"]
  again = generator.train(c2, str(tmp_path / "parts"))  # finished: evaluated again, no steps
  assert again["loss"] == resumed["loss"] and again["accuracy"] == resumed["accuracy"]
  steps = lambda d: [r["step"] for r in read_jsonl(str(tmp_path / d / "metrics.jsonl"))
                     if "loss" in r]
  assert steps("parts") == steps("whole") == [10, 20, 30, 40]  # each step logged once


def test_bad_generator_configs_fail_early(chain, tmp_path):
  c = _config("var", chain)
  c.tokenizer_workdir = chain["vq"][0]
  c.tokens_dir = chain["vq"][1]
  with pytest.raises(ValueError, match="multi-scale quantizer"):
    generator.train(c, str(tmp_path / "a"))
  c = _config("raster", chain)
  c.eval.inception = str(tmp_path / "inception.npz")
  with pytest.raises(FileNotFoundError, match="Inception"):
    generator.train(c, str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "c")
  c = _config("raster", chain, num_classes=3)
  with pytest.raises(ValueError, match="model.num_classes"):
    generator.train(c, str(tmp_path / "b"))
  c = _config("raster", chain)
  c.tokens_dir = str(tmp_path / "none")
  with pytest.raises(FileNotFoundError, match="exported tokens"):
    generator.train(c, str(tmp_path / "c"))
  with pytest.raises(ValueError, match="config arg"):
    generator_quickstart.get_config("runlocal")
  c = _config("maskgit", chain)
  c.sample.schedule = "cubic"
  with pytest.raises(ValueError, match="sample.schedule: expected one of"):
    generator.train(c, str(tmp_path / "d"))
  c = _config("maskgit", chain)
  c.eval.sample_settings = ({"cfg": 2.0},)
  with pytest.raises(ValueError, match="eval.sample_settings: expected dicts of sample fields"):
    generator.train(c, str(tmp_path / "d"))
  assert not os.path.exists(tmp_path / "d")


def test_delay_paradigm_continues_speech_prompts(speech_chain, tmp_path):
  codec_dir, tokens_dir, prompts_dir = speech_chain
  meta = json.load(open(os.path.join(tokens_dir, "tokens.json")))
  assert (meta["modality"], meta["frames"], meta["levels"]) == ("audio", 25, 3)
  c = generator_quickstart.get_config("delay,runlocal")
  c.update(tokenizer_workdir=codec_dir, tokens_dir=tokens_dir)
  c.sample.update(prompts_dir=prompts_dir, prompt_frames=10, num=4)
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert abs(rows[0]["loss"] - np.log(64)) < 1.0  # about uniform over 64 codes at first
  assert np.isfinite(summary["sample_tokens_per_second"])
  samples = tmp_path / "audio" / "samples_0000002"
  names = sorted(os.listdir(samples))
  assert names == sorted([f"{i}_{k}.wav" for i in range(4) for k in ("original", "continued")])
  assert (tmp_path / "audio" / "samples_0000002.png").exists()
  model, tok = runs.load_generator(str(tmp_path))
  assert (model.frames, model.levels) == (25, 3) and tok.sample_rate == 16000
  c.paradigm = "raster"  # image paradigms refuse audio tokens
  with pytest.raises(ValueError, match="delay"):
    generator.train(c, str(tmp_path / "raster"))
