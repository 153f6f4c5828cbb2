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


# CI's slow step: maskgit's gFID wiring compiles a whole Inception network (the masked
# generator trains in the default run on TiTok's tokens and as MaskBit); raster's digits
# metrics (~75 s; the raster generator trains and resumes in the default run below)
@pytest.mark.parametrize("paradigm", [pytest.param("raster", marks=pytest.mark.slow),
                                      pytest.param("maskgit", marks=pytest.mark.slow), "var"])
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
  c.paradigm = "maskgit"  # image-only paradigms refuse audio tokens
  with pytest.raises(ValueError, match="audio-codec tokens are modelled by 'delay'"):
    generator.train(c, str(tmp_path / "maskgit"))
  c.paradigm = "raster"  # 3 levels a frame: not one softmax
  with pytest.raises(ValueError, match="3 indices per position; expected 'depth'"):
    generator.train(c, str(tmp_path / "raster"))


def test_rq_transformer_continues_speech_prompts(speech_chain, tmp_path):
  """RQ-Transformer over an audio codec's frames (1D RoPE, a depth transformer over the
  3 levels): trains, continues held-out prompts keeping their frames, writes audio."""
  import jax
  import jax.numpy as jnp

  from vqlab.models import sampling
  codec_dir, tokens_dir, prompts_dir = speech_chain
  c = generator_quickstart.get_config("raster,rq,audio,runlocal")
  c.update(tokenizer_workdir=codec_dir, tokens_dir=tokens_dir)
  c.sample.update(prompts_dir=prompts_dir, prompt_frames=10, num=2)
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert _near_uniform(rows[0]["loss"], (64,) * 3), rows[0]["loss"]
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert sorted(os.listdir(tmp_path / "audio" / "samples_0000002")) == sorted(
      f"{i}_{k}.wav" for i in range(2) for k in ("original", "continued"))
  model, tok = runs.load_generator(str(tmp_path))
  assert (model.seq_len, model.stack.sizes, model.positions) == (25, (64,) * 3, "rope1d")
  from vqlab.data.tokens import TokenSource
  prompts = TokenSource(prompts_dir)
  prompt = jnp.asarray(np.stack([prompts[i]["indices"] for i in range(2)])[:, :10], jnp.int32)
  codes = sampling.sample_next_token(model, jnp.zeros((2,), jnp.int32), jax.random.key(0),
                                     prompt=prompt)
  assert codes.shape == (2, 25, 3) and int(codes.min()) >= 0 and int(codes.max()) < 64
  np.testing.assert_array_equal(codes[:, :10], prompt)


HEAD_CHAINS = {"rq": ("rvq", (1024,) * 4), "bitwise": ("lfq", (2,) * 16),
               "factorized": ("lfq", (64, 1024))}


def _near_uniform(loss: float, sizes) -> bool:
  """An untrained model's loss on a whole stack of sub-codes: about the sum of ln(size)
  (uniform), plus each sub-code's excess of random initial logits (~0.5 nats for logits
  of unit scale), nothing like one sub-code's loss or their mean."""
  uniform = float(np.sum(np.log(sizes)))
  return uniform - 1.0 < loss < uniform + 1.2 * len(sizes)


# CI's slow step: factorized shares the LFQ chain with bitwise and the depth head with rq;
# rq's depth head also trains in the default run on speech tokens (test_rq_transformer_...)
@pytest.mark.parametrize("head", ["bitwise", pytest.param("rq", marks=pytest.mark.slow),
                                  pytest.param("factorized", marks=pytest.mark.slow)])
def test_every_head_trains_and_samples_its_tokenizers_tokens(head, chain, tmp_path):
  kind, sizes = HEAD_CHAINS[head]
  c = generator_quickstart.get_config(f"raster,{head},runlocal")
  c.update(tokenizer_workdir=chain[kind][0], tokens_dir=chain[kind][1])
  c.model.num_classes = 10
  if head == "bitwise":
    c.train.bit_flip = 0.1  # Infinity's self-correction on
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert _near_uniform(rows[0]["loss"], sizes), rows[0]["loss"]
  assert rows[0]["bits_per_token"] == pytest.approx(rows[0]["loss"] / np.log(2))
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  model, tok = runs.load_generator(str(tmp_path))
  assert (model.stack.sizes, model.stack.stacked) == (sizes, head == "rq")
  assert model.head_kind == ("bitwise" if head == "bitwise" else "depth")


# by hand (-m manual): the delay model and sampler are CI's on the speech chain
# (test_delay_paradigm_continues_speech_prompts); this is its image-token wiring
@pytest.mark.manual
def test_delay_pattern_models_a_residual_image_tokenizer(chain, tmp_path):
  """MusicGen's delay pattern over the 4 levels of the RVQ chain's 4x4 positions: 16 + 3
  steps, each predicting one code of each level."""
  c = generator_quickstart.get_config("delay,digits,runlocal")
  c.update(tokenizer_workdir=chain["rvq"][0], tokens_dir=chain["rvq"][1])
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert _near_uniform(rows[0]["loss"], (1024,)), rows[0]["loss"]  # per code: one level
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  model, _ = runs.load_generator(str(tmp_path))
  assert (model.levels, model.vocab_size) == (4, 1024)
  assert model.frames == json.load(open(os.path.join(chain["rvq"][1], "tokens.json")))[
      "latent_size"]**2
  c.update(tokenizer_workdir=chain["vq"][0], tokens_dir=chain["vq"][1])
  with pytest.raises(ValueError, match="'delay' models the levels of an audio codec or of"):
    generator.train(c, str(tmp_path / "vq"))


@pytest.mark.slow  # CI's slow step: the default run's budget
def test_bitwise_next_scale_trains_with_self_correction_and_samples(chain, tmp_path):
  """Infinity: the binary multi-scale chain (scales 1, 2, 4, 8; 16 bits a position), d
  bit logits per slot, bitwise self-correction on."""
  c = generator_quickstart.get_config("var,bitwise,runlocal")
  c.update(tokenizer_workdir=chain["msbsq"][0], tokens_dir=chain["msbsq"][1])
  c.model.num_classes = 10
  c.train.bit_flip = 0.1
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert _near_uniform(rows[0]["loss"], (2,) * 16), rows[0]["loss"]  # 16 bits a slot
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  model, tok = runs.load_generator(str(tmp_path))
  assert (model.bits, tok.quantizer.binary, model.head.out_features) == (16, True, 16)
  c = generator_quickstart.get_config("var,bitwise,runlocal")
  c.update(tokenizer_workdir=chain["msvq"][0], tokens_dir=chain["msvq"][1])
  c.model.num_classes = 10
  with pytest.raises(ValueError, match="binary multi-scale quantizer"):
    generator.train(c, str(tmp_path / "codebook"))


def test_maskbit_trains_and_samples_lfq_tokens(chain, tmp_path):
  """MaskBit on the 2^16-code LFQ chain: 2 groups of 8 bits per token, each a slot."""
  c = generator_quickstart.get_config("maskgit,bitwise,runlocal")
  c.update(tokenizer_workdir=chain["lfq"][0], tokens_dir=chain["lfq"][1])
  c.model.num_classes = 10
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert _near_uniform(rows[0]["loss"], (2**8,)), rows[0]["loss"]  # per slot: one group
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  model, tok = runs.load_generator(str(tmp_path))
  assert (model.bit_groups, model.vocab_size, model.seq_len) == (2, 256, 2 * model.num_positions)


# raster on 1D tokens is CI's slow step (the default run's budget): the same model with
# frames = 32, grid = 1
@pytest.mark.parametrize("paradigm", [pytest.param("raster", marks=pytest.mark.slow), "maskgit"])
def test_generators_model_a_1d_tokenizers_tokens(paradigm, chain, tmp_path):
  """TiTok's (B, 32) tokens: raster with 1D positions, MaskGIT over 32 positions."""
  c = generator_quickstart.get_config(f"{paradigm},runlocal")
  c.update(tokenizer_workdir=chain["titok"][0], tokens_dir=chain["titok"][1])
  c.model.num_classes = 10
  summary = generator.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert _near_uniform(rows[0]["loss"], (64,)), rows[0]["loss"]  # 64 codes
  assert np.isfinite(summary["sample_tokens_per_second"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  model, tok = runs.load_generator(str(tmp_path))
  assert tok.token_shape == (32,)
  if paradigm == "maskgit":
    assert model.token_shape == (32,) and model.seq_len == 32
  else:
    assert (model.frames, model.grid, model.seq_len) == (32, 1, 32)  # a 1D sequence


def test_tokens_a_paradigm_cannot_model_are_named(chain, tmp_path):
  rvq, lfq = chain["rvq"], chain["lfq"]
  cases = [("raster", rvq, {}, "ResidualVQ gives 4 indices per position; expected 'depth'"),
           ("maskgit", rvq, {}, "'maskgit' models one index per latent position"),
           ("raster", chain["vq"], {"head": "bitwise"}, "'bitwise' predicts the bits"),
           ("raster", lfq, {"head": "depth", "sub_token_bits": (16,)}, "sub_token_bits"),
           ("maskgit", chain["vq"], {"head": "bitwise"}, r"'bitwise' \(MaskBit\) models the bits"),
           ("maskgit", lfq, {"head": "bitwise", "bit_groups": 3}, "a divisor of d for 65536"),
           ("maskgit", lfq, {"head": "depth"}, "'bitwise' also for 'maskgit'"),
           ("var", chain["msvq"], {"head": "depth"}, "predicts one softmax per slot")]
  for i, (paradigm, (workdir, tokens), model, message) in enumerate(cases):
    c = generator_quickstart.get_config(f"{paradigm},runlocal")
    c.update(tokenizer_workdir=workdir, tokens_dir=tokens)
    c.model.update(num_classes=10, **model)
    with pytest.raises(ValueError, match=message):
      generator.train(c, str(tmp_path / str(i)))
  c = generator_quickstart.get_config("raster,bitwise,runlocal")
  c.train.bit_flip = 0.1
  c.model.head = "softmax"
  c.update(tokenizer_workdir=lfq[0], tokens_dir=lfq[1])
  with pytest.raises(ValueError, match="train.bit_flip"):
    generator.train(c, str(tmp_path / "flip"))


@pytest.mark.parametrize("head", ["bitwise", "rq"])
def test_sharded_head_step_matches_one_device(head, sharded_steps_match):
  import functools

  import jax.numpy as jnp

  from configs import vqgan_quickstart
  from vqlab.train import tokenizer
  c = generator_quickstart.get_config(f"raster,{head},runlocal")
  c.train.update(batch_size=8, bit_flip=0.1 if head == "bitwise" else 0.0, ema_decay=0.0)
  tok = tokenizer.build_model(vqgan_quickstart.get_config(
      f"{'lfq' if head == 'bitwise' else 'rvq'},runlocal"), 0)
  graphdef, state = generator.init_state(c, tok, {"latent_size": 4})
  sizes = 2**16 if head == "bitwise" else 1024
  per_position = 1 if head == "bitwise" else 4
  rng = np.random.default_rng(0)
  batches = [{"tokens": jnp.asarray(rng.integers(0, sizes, (8, 16 * per_position)), jnp.int32),
              "label": jnp.zeros((8,), jnp.int32)} for _ in range(2)]
  spec = generator.StepSpec("raster", c.model.num_classes, c.train.label_dropout, 0.0, 1,
                            c.train.bit_flip)
  step = functools.partial(generator.train_step, graphdef=graphdef, quantizer_graphdef=None,
                           spec=spec)
  sharded_steps_match(step, state, batches, {"data": 2, "fsdp": 4}, ("loss", "grad_norm"),
                      1024)
