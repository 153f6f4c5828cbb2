"""The tokenizer trainer on clips (the causal 3D video tokenizer): the quickstart runs in
runlocal with every loss on, a short run lowers the loss, a resumed run is
bit-identical, the sharded step equals one device, the same model trains on images, and
the run's tokenizer, evaluation and token export work on clips."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import video_quickstart
from vqlab import parallel
from vqlab.data import tokens
from vqlab.data.pipeline import iterate
from vqlab.models import causal3d, sampling
from vqlab.train import evaluators, export_tokens, runs, tokenizer, tokenizer_eval, utilisation
from vqlab.train.common import read_jsonl, to_unit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def small_config(data_dir, **train):
  c = video_quickstart.get_config("runlocal")
  c.data.data_dir = data_dir
  c.train.update(**train)
  return c


def _video_run_config(data_dir):
  config = small_config(data_dir)
  config.loss.update(lecam_weight=0.1)
  return config


@pytest.fixture
def video_run(build_once):
  """The quickstart's runlocal (GAN from step 1, LeCam on): (config, workdir, summary).
  Built once for CI's two pytest steps and their workers (build_once); the run is shared,
  so a test that writes into it works on a copy."""
  def build(root):
    tokenizer.train(_video_run_config(str(root / "tfds")), str(root / "run"))

  root = build_once("video_run", build)
  summary = json.load(open(root / "run" / "summary.json"))
  return _video_run_config(str(root / "tfds")), root / "run", summary


def test_quickstart_runlocal_trains_and_its_run_works(video_run, tmp_path):
  config, shared, summary = video_run
  workdir = tmp_path / "run"  # vqlab eval writes its result into the run
  shutil.copytree(shared, workdir)
  rows = read_jsonl(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert "disc_loss" not in rows[0] and "disc_loss" in rows[1]
  for r in rows:
    assert all(np.isfinite(v) for v in r.values()), r
  assert summary["frames"] == 5 and summary["examples"] == 8
  for k in ("psnr", "psnr_after_first", "psnr_repeat_first", "ssim"):
    assert np.isfinite(summary[k]), (k, summary)
  assert 0 < summary["usage"] <= 1
  assert os.path.exists(workdir / "images" / "recon_0000002.png")

  # the run's tokenizer takes clips and images
  model = runs.load_tokenizer(str(workdir))
  ds = runs.datasets(config, "test", train=False, batch_size=2, num_examples=2)
  clip = to_unit(next(iterate(ds, threads=0))["video"])
  q = model.encode(clip)
  assert q.indices.shape == (2, 2, 8, 8)
  assert model.decode(q.indices, 5).shape == clip.shape
  assert model.encode(clip[:, 0]).indices.shape == (2, 8, 8)
  np.testing.assert_array_equal(model.encode(clip[:, 0]).indices, q.indices[:, 0])

  # vqlab eval gives the training summary's numbers again
  again = tokenizer_eval.evaluate_workdir(str(workdir))
  for k in ("psnr", "psnr_after_first", "psnr_repeat_first", "usage"):
    assert again[k] == pytest.approx(summary[k], rel=1e-5), k

  # vqlab tokens: (latent frames, h, w) per clip
  out = str(tmp_path / "tokens")
  assert export_tokens.export(str(workdir), out, split="test", examples=6, batch_size=8) == 6
  source = tokens.TokenSource(out)
  assert source.meta["modality"] == "video" and source.meta["latent_frames"] == 2
  assert np.asarray(source[0]["indices"]).shape == (2, 8, 8)


@pytest.mark.slow  # ~1.5 min: CI's slow step
def test_generator_continues_held_out_clips(video_run, tmp_path):
  # the chain: video tokens -> a 2-step raster generator with 3D RoPE -> frame prediction
  from configs import generator_quickstart
  from vqlab.train import generator
  _, workdir, _ = video_run
  train_tokens, prompts = str(tmp_path / "tokens"), str(tmp_path / "prompts")
  export_tokens.export(str(workdir), train_tokens, split="train", examples=16, batch_size=8)
  export_tokens.export(str(workdir), prompts, split="test", examples=8, batch_size=8)
  c = generator_quickstart.get_config("raster,video,runlocal")
  c.update(tokenizer_workdir=str(workdir), tokens_dir=train_tokens)
  c.sample.prompts_dir = prompts
  gen_dir = tmp_path / "gen"
  summary = generator.train(c, str(gen_dir))
  assert np.isfinite(summary["loss"]) and summary["sample_tokens_per_second"] > 0
  assert os.path.exists(gen_dir / "images" / "samples_0000002.png")
  assert os.path.exists(gen_dir / "images" / "samples_0000002.gif")
  model, tok = runs.load_generator(str(gen_dir))
  prompt = np.stack([tokens.TokenSource(prompts)[i]["indices"] for i in range(2)])
  assert prompt.shape == (2, 2, 8, 8) and model.seq_len == 2 * 8 * 8
  sampled = sampling.sample_next_token(model, jnp.zeros((2,), jnp.int32), jax.random.key(0),
                                       prompt=jnp.asarray(prompt[:, :1].reshape(2, -1)))
  grid = np.asarray(sampled).reshape(2, 2, 8, 8)
  np.testing.assert_array_equal(grid[:, 0], prompt[:, 0])  # the held-out first latent frame
  assert tok.decode(jnp.asarray(grid), 5).shape == (2, 5, 32, 32, 1)


@pytest.mark.slow  # I3D at 224x224 on CPU: CI's slow step
def test_eval_adds_rfvd_with_i3d_weights(video_run):
  # random I3D weights: a number, not an FVD; the run's clips are 5 frames, I3D takes >= 9
  config, workdir, _ = video_run
  with pytest.raises(ValueError, match="expected >= 9 frames"):
    tokenizer_eval.evaluate_workdir(str(workdir), examples=8, i3d_weights="random")
  config.data.num_frames = 9  # the same causal model encodes 9-frame clips
  _, graphdef, state, _ = runs.restore(str(workdir))
  from vqlab.eval import i3d
  mesh = parallel.make_mesh({"data": -1})
  r = evaluators.evaluate(config, graphdef, state, mesh, num_examples=8,
                          i3d_params=i3d.random_params(num_classes=16))
  assert np.isfinite(r["rfvd"]) and r["rfvd"] > 0 and r["frames"] == 9
  with pytest.raises(ValueError, match="rFVD is a video metric"):
    config.data.num_frames = 0
    evaluators.evaluate(config, graphdef, state, mesh, i3d_params={})


@pytest.mark.slow  # 40 executed steps: CI's slow step (the default run's budget)
def test_short_run_lowers_the_loss(data_dir, tmp_path):
  # 40 steps, reconstruction and quantizer losses only: the L1 error of the last ten
  # logged steps is below the first ten's (measured: 0.20 -> 0.06)
  config = small_config(data_dir, steps=40, lr=3e-3)
  config.loss.disc_start = 10_000
  config.log.update(every=1, image_every=1000, checkpoint_every=1000, eval_examples=8)
  tokenizer.train(config, str(tmp_path))
  recon = [r["recon_loss"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert np.mean(recon[-10:]) < 0.6 * np.mean(recon[:10]), recon
  # the decoder's adaptive norms (zero-initialised) learned to read the quantized latent
  model = runs.load_tokenizer(str(tmp_path))
  cond = [m.cond.kernel[...] for _, m in nnx.iter_graph(model.decoder)
          if isinstance(m, causal3d.FrameGroupNorm)]
  assert cond and min(float(jnp.abs(k).max()) for k in cond) > 0


# three runs; the tokenizer trainer's resume is CI's on images (test_tokenizer): by hand
@pytest.mark.manual
def test_resumed_run_is_bit_identical(data_dir, tmp_path):
  def config(steps):
    c = small_config(data_dir, steps=steps, ema_decay=0.9)
    c.loss.update(disc_start=2, lecam_weight=0.1)
    c.log.update(every=1, checkpoint_every=2, image_every=100)
    return c

  tokenizer.train(config(3), str(tmp_path / "whole"))
  tokenizer.train(config(2), str(tmp_path / "parts"))  # "preempted" after step 2
  tokenizer.train(config(3), str(tmp_path / "parts"))
  drop = utilisation.without_timing
  whole = [drop(r) for r in read_jsonl(str(tmp_path / "whole" / "metrics.jsonl"))]
  parts = [drop(r) for r in read_jsonl(str(tmp_path / "parts" / "metrics.jsonl"))]
  assert [r["step"] for r in parts] == [1, 2, 3] and whole == parts


@pytest.mark.slow  # CI's slow step (the default run's budget)
def test_sharded_step_matches_one_device(data_dir, sharded_steps_match):
  # two steps with the 3D GAN, LeCam and EMA on, on a data x fsdp mesh of 8 devices
  config = small_config(data_dir)
  config.loss.update(lecam_weight=0.1)
  config.train.ema_decay = 0.5
  graphdef, state = tokenizer.init_state(config)
  it = iterate(runs.datasets(config, "train", train=True, batch_size=8), threads=0)
  batches = [next(it)["video"] for _ in range(2)]
  loss = tokenizer.LossSpec.from_config(config)
  step = functools.partial(tokenizer.train_step, graphdef=graphdef, loss=loss, gan=True,
                           lpips_graphdef=None)
  sharded_steps_match(step, state, batches, {"data": 2, "fsdp": 4},
                      ("loss", "recon_loss", "disc_loss", "psnr", "gan_weight"), 512)


@pytest.mark.slow  # CI's slow step (the image path of the model is tested in the default run)
def test_the_video_model_trains_on_images(data_dir, tmp_path):
  # joint image-video: data.num_frames = 0 feeds the same arch images (1-frame clips)
  config = small_config(data_dir)
  config.data.update(name="vqlab_digits", num_frames=0, in_memory=False)
  summary = tokenizer.train(config, str(tmp_path))
  assert np.isfinite(summary["psnr"]) and "frames" not in summary
  model = runs.load_tokenizer(str(tmp_path))
  assert model.encode(jnp.zeros((1, 32, 32, 1))).indices.shape == (1, 8, 8)


def test_image_arch_with_clips_is_refused(data_dir, tmp_path):
  from configs import vqgan_quickstart
  config = vqgan_quickstart.get_config("runlocal")
  config.data.update(data_dir=data_dir, name="vqlab_moving_mnist", num_frames=5)
  with pytest.raises(ValueError, match="model.arch: expected a video arch"):
    tokenizer.train(config, str(tmp_path))
  assert not os.listdir(tmp_path)
