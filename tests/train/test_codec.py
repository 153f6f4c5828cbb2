"""The audio-codec trainer end to end: every config runs, a short run on the built-in
speech learns, the outputs a person listens to are written, bad configs fail early."""

import importlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import audio_codec as codec_config
from vqlab import parallel
from vqlab.checkpoint import Checkpointer
from vqlab.data.pipeline import iterate
from vqlab.convert import hubert as convert_hubert
from vqlab.eval import audio_metrics, speech_recognition
from vqlab.models import hubert
from vqlab.train import codec, evaluators, runs, utilisation
from vqlab.train.common import read_jsonl


def _check_runlocal_run(workdir, summary):
  """A finished 2-step runlocal codec run (`summary` as the trainer returned or saved it)."""
  config = runs.load_config(str(workdir))
  rows = read_jsonl(str(workdir / "metrics.jsonl"))
  ladder = [r for r in rows if "ladder/mel_distance@1" in r]
  rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  # log.ladder_every = 1: quality at every number of levels after step 1; the last step's
  # is the summary's (not logged twice)
  levels = config.model.quantizer.args.num_levels
  assert [r["step"] for r in ladder] == [1]
  for n in (*range(1, levels + 1), "unquantized"):
    for metric in ("mel_distance", "si_sdr"):
      assert np.isfinite(ladder[0][f"ladder/{metric}@{n}"])
  assert 0 < ladder[0]["ladder/mel_distance@1"] < 30
  assert "disc_loss" not in rows[0] and "disc_loss" in rows[1]  # discriminators from step 2
  c = config.loss  # step 1 is the waveform warm-up, step 2 the configured losses
  ctc = [c.phoneme_ctc * r.get("phoneme_ctc", 0.0) for r in rows]
  assert rows[0]["loss"] == pytest.approx(
      c.mel * rows[0]["wave_mse"] + c.quantizer * rows[0]["quantizer_loss"] + ctc[0], rel=1e-5)
  assert rows[1]["loss"] == pytest.approx(
      c.wave_l1 * rows[1]["wave_l1"] + c.mel * rows[1]["mel_loss"]
      + c.stft * rows[1]["stft_loss"] + c.quantizer * rows[1]["quantizer_loss"] + ctc[1]
      + c.adversarial * rows[1]["adversarial_loss"] + c.feature * rows[1]["feature_loss"],
      rel=1e-5)
  assert rows[1]["feature_loss"] > 0 and rows[1]["adversarial_loss"] > 0
  for r in rows:
    assert all(np.isfinite(v) for v in r.values()), r
    assert 1 <= r["latent_rank"] <= config.model.shape.latent_dim  # each batch's latent
  semantic = config.loss.phoneme_ctc > 0
  assert all(("phoneme_ctc" in r) == semantic for r in rows)
  if semantic:  # CTC per phoneme starts near log(classes) and above
    assert rows[0]["phoneme_ctc"] > 1.0
  hop = int(np.prod(config.model.shape.strides))
  bitrates = {int(n): b for n, b in summary["bitrate@n"].items()}  # JSON keys are strings
  for n in range(1, levels + 1):
    assert np.isfinite(summary[f"mel_distance@{n}"]) and np.isfinite(summary[f"si_sdr@{n}"])
    bits = n * np.log2(config.model.quantizer.args.codebook_size)
    assert bitrates[n] == pytest.approx(config.data.sample_rate / hop * bits)
    assert 0 < summary[f"level{n - 1}/usage"] <= 1
  # the bottleneck diagnostics: the unquantized latent decoded, what each depth misses
  assert np.isfinite(summary["mel_distance@unquantized"])
  assert np.isfinite(summary["mel_distance@top_direction"])
  assert 1 <= summary["latent_rank"] <= config.model.shape.latent_dim
  missed = [summary[f"latent_error@{n}"] for n in range(1, levels + 1)]
  # finite and >= 0, not < 1: at initialisation a factorized quantizer's untrained
  # projections can put its output farther from the latent than zero is (DAC: ~600x)
  assert all(np.isfinite(m) and m >= 0 for m in missed), missed
  if speech_recognition.available() and config.eval.wer_utterances:  # vqlab[audio]
    assert summary["wer_utterances"] == config.eval.wer_utterances == 1
    for key in ["wer_original"] + [f"wer@{n}" for n in range(1, levels + 1)]:
      assert 0 <= summary[key] <= 10, key  # insertions can take a WER past 1
    assert summary["wer@1"] >= 0.5  # after two steps the words are lost
  if config.eval.probe_utterances:  # the phoneme probe on each level (4 fit, 8 held out)
    assert summary["probe_utterances"] == 4 and summary["probe_held_out"] == 8
    for n in range(1, levels + 1):
      assert 0 < summary[f"phone_error@level{n}"] <= 1
    assert 0.5 < summary["phone_error@majority"] < 1  # pauses: the commonest "phoneme"
  saved = json.load(open(workdir / "summary.json"))
  assert saved["mel_distance"] == summary["mel_distance"]
  audio = workdir / "audio" / "step_0000002"
  assert sorted(os.listdir(audio))[:2] == ["0_original.wav", "0_reconstruction.wav"]
  assert (workdir / "audio" / "step_0000002.png").exists()
  assert Checkpointer(str(workdir / "checkpoints")).all_steps() == [2]
  model = runs.load_codec(str(workdir))
  assert model.sample_rate == config.data.sample_rate and model.num_levels == levels


def test_the_default_variant_trains_in_runlocal(speech_chain):
  """`:semantic,rooms,runlocal` (phoneme CTC, rooms and noise, WER and the probe on) is
  the speech chain's codec, which the generator and eval tests share: checked here, not
  trained again."""
  workdir = pathlib.Path(speech_chain[0])
  config = runs.load_config(str(workdir))
  assert config.loss.phoneme_ctc > 0 and config.eval.wer_utterances and config.eval.probe_utterances
  assert config.data.augment.reverb_prob > 0 and config.data.augment.noise_prob > 0
  _check_runlocal_run(workdir, json.load(open(workdir / "summary.json")))


def test_ladder_scalars_name_every_level_and_the_unquantized_latent():
  r = {"levels": 2, "mel_distance@1": 3.0, "mel_distance@2": 2.5, "mel_distance@unquantized": 2.4,
       "stoi@1": 0.6, "stoi@2": 0.7, "si_sdr@1": -3.0, "si_sdr@2": -1.0, "wer@1": 0.9,
       "latent_error@1": 0.1, "latent_error@2": 0.05, "latent_rank": 3.0, "examples": 64}
  assert codec.ladder_scalars(r) == {
      "ladder/mel_distance@1": 3.0, "ladder/mel_distance@2": 2.5,
      "ladder/mel_distance@unquantized": 2.4, "ladder/stoi@1": 0.6, "ladder/stoi@2": 0.7,
      "ladder/si_sdr@1": -3.0, "ladder/si_sdr@2": -1.0, "ladder/latent_error@1": 0.1,
      "ladder/latent_error@2": 0.05, "ladder/latent_rank": 3.0}


def test_waveform_warm_up_error_and_schedule():
  x = jnp.asarray(np.random.RandomState(0).randn(3, 50, 1), jnp.float32)
  assert float(codec.relative_squared_error(x, jnp.zeros_like(x))) == pytest.approx(1.0)
  assert float(codec.relative_squared_error(x, x)) == 0.0
  assert float(codec.relative_squared_error(x, 0.5 * x)) == pytest.approx(0.25)
  config = codec_config.get_config()
  config.loss.update(mse_warmup_steps=3, disc_start=4)
  job = codec.CodecJob(config, "unused")
  assert [job.variant(s) for s in range(6)] == [(False, True)] * 3 + [(False, False)] + [
      (True, False)] * 2


# the other variants and the learning / resume runs are CI's slow step (.ci/run): minutes each
@pytest.mark.slow
@pytest.mark.parametrize("arg", ["encodec,runlocal", "dac,runlocal"])
def test_every_config_trains_in_runlocal(arg, speech_data_dir, tmp_path):
  config = importlib.import_module("configs.audio_codec").get_config(arg)
  config.data.data_dir = speech_data_dir
  config.eval.update(wer_utterances=0, probe_utterances=0)  # checked in the default variant
  _check_runlocal_run(tmp_path, codec.train(config, str(tmp_path)))


def _stationary_reference(x: np.ndarray) -> np.ndarray:
  """Noise with each clip's own long-term magnitude spectrum and random phase."""
  spectrum = np.abs(np.fft.rfft(x, axis=1))
  phase = np.exp(2j * np.pi * np.random.default_rng(0).random(spectrum.shape))
  return np.fft.irfft(spectrum * phase, n=x.shape[1], axis=1).astype(np.float32)


@pytest.mark.slow
def test_short_run_on_speech_learns(speech_data_dir, tmp_path):
  # 200 steps of a small codec (50 frames/s, 4 levels of 256 codes, quantizer dropout) on
  # the synthesized speech, evaluated on held-out sentences and voices. The bar is noise
  # with each clip's own long-term spectrum: it gets the clip's average spectrum for free,
  # so a codec beats it only by sending how the spectrum changes over time, which only
  # its codes carry. The initial model is ~2 above the bar (~10.7 vs 8.38); with the
  # SEANet decoder and no warm-up this run measured 7.01.
  config = codec_config.get_config("runlocal")
  config.data.update(data_dir=speech_data_dir, crop_seconds=0.5, eval_seconds=2.0,
                     eval_split="synth_test")
  config.model.shape.update(channels=8, strides=(2, 4, 5, 8), dilations=(1, 3, 9), latent_dim=32)
  config.model.quantizer.args.update(num_levels=4, codebook_size=256)
  config.train.update(steps=200, batch_size=8, lr=2e-3, warmup_steps=20)
  # reconstruction only (the GAN has its test); the quickstart's decoder (iSTFT) and
  # waveform warm-up, for half the run
  config.loss.update(disc_start=10_000, stft=0.0, mse_warmup_steps=100)
  # no ladder: runlocal's ladder_every=1 would evaluate every level after every step
  config.log.update(every=50, audio_every=1000, checkpoint_every=1000, eval_examples=32,
                    ladder_every=0)
  config.eval.update(wer_utterances=0, probe_utterances=0)  # checked in runlocal
  summary = codec.train(config, str(tmp_path))
  clips = np.concatenate([b["audio"] for b in iterate(runs.datasets(
      config, "synth_test", train=False, batch_size=8, num_examples=32), threads=0)])[:32]
  bar = float(np.mean(audio_metrics.mel_distance(_stationary_reference(clips), clips, 16000)))
  got = summary["mel_distance"]
  assert got < bar, f"mel distance {got:.3f}, stationary-noise bar {bar:.3f}"


def test_bad_configs_fail_before_the_workdir(speech_data_dir, tmp_path):
  workdir = tmp_path / "run"
  for field, value, match in (("data.crop_seconds", 0.01, "crop_seconds"),
                              ("loss.mel", -1.0, "loss.mel"),
                              ("model.shape.activation", "relu", "activation"),
                              ("data.augment.noise_prob", 1.5, "noise_prob: expected a "
                                                               "probability")):
    config = codec_config.get_config("runlocal")
    config.data.data_dir = speech_data_dir
    section, name = field.rsplit(".", 1)
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = value
    with pytest.raises(ValueError, match=match):
      codec.train(config, str(workdir))
    assert not workdir.exists()


def _tiny_teacher(path, **changes) -> str:
  """A random HuBERT-shaped teacher whose frame is the runlocal codec's (8 samples)."""
  config = hubert.HubertConfig(**{
      **dict(conv_dim=(8, 8), conv_kernel=(2, 4), conv_stride=(2, 4), hidden_size=16,
             num_layers=2, num_heads=2, intermediate_size=32, pos_conv_kernel=4,
             pos_conv_groups=2), **changes})
  convert_hubert.save(str(path), hubert.random_params(config), config)
  return str(path)


def _hubert_config(speech_data_dir, teacher):
  config = codec_config.get_config("hubert,runlocal")
  config.data.data_dir = speech_data_dir
  config.teacher.weights = teacher
  config.loss.update(disc_start=100, mse_warmup_steps=0)  # one compiled step variant
  config.eval.update(wer_utterances=0, probe_utterances=0)
  config.log.update(ladder_every=0, audio_every=100)
  return config


@pytest.mark.slow  # CI's slow step (the default run's budget); the losses' tests are default
def test_hubert_feature_distillation_trains_and_its_codec_loads(speech_data_dir, tmp_path):
  """`:hubert` with a (random) converted teacher: each step's loss is its logged terms with
  the distillation weighted in, SpeechTokenizer's D-axis loss lies in its range, the
  teacher head is as wide as the teacher's features (teacher.dim read from the weights
  into config.json) and the trained codec loads from its workdir."""
  config = _hubert_config(speech_data_dir, _tiny_teacher(tmp_path / "teacher.npz"))
  workdir = tmp_path / "run"
  codec.train(config, str(workdir))
  c = config.loss
  rows = [r for r in read_jsonl(str(workdir / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert r["loss"] == pytest.approx(
        c.wave_l1 * r["wave_l1"] + c.mel * r["mel_loss"] + c.stft * r["stft_loss"]
        + c.quantizer * r["quantizer_loss"] + c.feature_distill * r["feature_distill"],
        rel=1e-5)
    # -log sigmoid(cos) for cos in [-1, 1]: log(1 + e^-1) .. log(1 + e)
    assert np.log1p(np.exp(-1)) <= r["feature_distill"] <= np.log1p(np.e)
  assert c.feature_distill == pytest.approx(c.mel * 120 / 45)
  saved = runs.load_config(str(workdir))
  assert saved.teacher.dim == 16
  model = runs.load_codec(str(workdir))
  assert model.teacher_head.out_features == 16 and model.phoneme_head is None


def test_a_teacher_that_does_not_fit_the_codec_fails_before_the_workdir(speech_data_dir,
                                                                       tmp_path):
  workdir = tmp_path / "run"
  for weights, match in (("", "teacher.weights"),
                         (_tiny_teacher(tmp_path / "hop4.npz", conv_stride=(2, 2)),
                          "the teacher's frames are 4 samples, the codec's 8")):
    with pytest.raises(ValueError, match=match):
      codec.train(_hubert_config(speech_data_dir, weights), str(workdir))
    assert not workdir.exists()
  config = _hubert_config(speech_data_dir, _tiny_teacher(tmp_path / "t.npz"))
  config.data.sample_rate = 24000
  with pytest.raises(ValueError, match="takes 16000 Hz audio; data.sample_rate is 24000"):
    codec.train(config, str(workdir))
  config = _hubert_config(speech_data_dir, _tiny_teacher(tmp_path / "t.npz"))
  config.teacher.layer = "3"  # the teacher has 2 layers
  with pytest.raises(ValueError, match="teacher.layer: expected <= 2"):
    codec.train(config, str(workdir))


@pytest.mark.slow  # two GAN steps with the LSTM compiled twice: minutes (the default budget)
def test_sharded_step_matches_one_device(speech_data_dir):
  # the discriminators on, on data x fsdp x tensor (conv kernels split over fsdp and
  # tensor, the LSTM's over tensor): step 1 equals one device's; later steps stay close.
  # k-means init and restarts are off: their assignments amplify rounding near ties (the
  # global-array statistics have their own sharded test), and so can a nearest-code tie
  # once the parameters differ by rounding, hence the looser bound after step 1.
  config = codec_config.get_config("encodec,runlocal")
  config.data.data_dir = speech_data_dir
  config.model.shape.update(channels=8, latent_dim=16)
  config.model.quantizer.args.update(kmeans_init=False, dead_code_threshold=0.0)
  config.loss.stft = 0.0  # log |X| of near-silent bins amplifies summation-order rounding
  graphdef, state = codec.init_state(config)
  it = iterate(runs.datasets(config, "train", train=True, batch_size=8), threads=0)
  batches = [next(it)["audio"] for _ in range(2)]  # step 1 tightly, step 2 loosely
  c = config.loss
  loss = codec.LossSpec(config.data.sample_rate, c.wave_l1, c.mel, c.stft, c.quantizer,
                        c.adversarial, c.feature)
  step = lambda state, audio: codec.train_step(state, {"audio": audio}, graphdef=graphdef,
                                               loss=loss, gan=True)
  one = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ref_step = jax.jit(step, in_shardings=(parallel.state_shardings(state, one),
                                         parallel.batch_sharding(one)))
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = parallel.state_shardings(state, mesh, min_fsdp_size=256)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs)
  batch = parallel.batch_sharding(mesh)
  sharded = jax.jit(step, in_shardings=(shardings, batch), out_shardings=(shardings, None))
  ref_state, got_state = state, jax.device_put(state, shardings)
  for i, audio in enumerate(batches):
    ref_state, ref_metrics = ref_step(ref_state, jnp.asarray(audio))
    got_state, got_metrics = sharded(got_state, jax.device_put(audio, batch))
    for k in ("loss", "mel_loss", "disc_loss", "feature_loss", "quantizer_loss"):
      np.testing.assert_allclose(got_metrics[k], ref_metrics[k], rtol=1e-4 if i == 0 else 2e-2,
                                 atol=1e-5, err_msg=f"step {i + 1} {k}")
    if i == 0:
      # Adam turns rounding of a near-zero gradient into a ~sign(g) lr update (lr 3e-4)
      for a, b in zip(jax.tree.leaves(nnx.state(got_state["nnx"], nnx.Param)),
                      jax.tree.leaves(nnx.state(ref_state["nnx"], nnx.Param))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=6e-4)


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(speech_data_dir, tmp_path):
  def config(steps):
    c = codec_config.get_config("runlocal")
    c.data.data_dir = speech_data_dir
    c.train.steps = steps
    c.log.update(eval_examples=8, audio_every=100, ladder_every=0)
    c.eval.update(wer_utterances=0, probe_utterances=0)
    return c

  codec.train(config(2), str(tmp_path / "resumed"))
  codec.train(config(3), str(tmp_path / "resumed"))  # picks up at step 2
  codec.train(config(3), str(tmp_path / "straight"))
  rows = {name: read_jsonl(str(tmp_path / name / "metrics.jsonl")) for name in ("resumed", "straight")}
  assert [r["step"] for r in rows["resumed"]] == [1, 2, 3]
  for a, b in zip(rows["resumed"], rows["straight"]):
    assert utilisation.without_timing(a) == utilisation.without_timing(b)
  states = [runs.restore(str(tmp_path / name))[2] for name in ("resumed", "straight")]
  raw = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(np.asarray(raw(a)), np.asarray(raw(b)))


def test_vqlab_eval_on_a_codec_run_gives_its_summary(speech_chain):
  """`vqlab eval` evaluates any tokenizer run: on a codec, the restored checkpoint's
  numbers at every bitrate are the ones the trainer wrote after its last step."""
  from vqlab.train import tokenizer_eval
  codec_dir = speech_chain[0]
  summary = json.load(open(os.path.join(codec_dir, "summary.json")))
  result = tokenizer_eval.evaluate_workdir(codec_dir)
  assert result["step"] == summary["step"] == 2 and result["levels"] == summary["levels"] == 3
  for n in range(1, 4):
    for metric in ("mel_distance", "si_sdr"):
      assert result[f"{metric}@{n}"] == pytest.approx(summary[f"{metric}@{n}"], rel=1e-5)
  with pytest.raises(ValueError, match="rFID is an image metric"):
    tokenizer_eval.evaluate_workdir(codec_dir, inception_weights="random")
  with pytest.raises(ValueError, match="expected a run of tokenizer, got a codec run"):
    runs.load_tokenizer(codec_dir)


def test_effective_rank_counts_the_directions_a_latent_uses():
  rng = np.random.default_rng(0)
  line = rng.normal(size=(4000, 1)) * rng.normal(size=(1, 16))  # one direction in 16-d
  assert audio_metrics.effective_rank(line + 1e-6 * rng.normal(size=line.shape)) < 1.01
  iso = rng.normal(size=(4000, 16))
  assert audio_metrics.effective_rank(iso) == pytest.approx(16, rel=0.02)
  two = np.concatenate([rng.normal(size=(4000, 2)), np.zeros((4000, 14))], axis=1)
  assert audio_metrics.effective_rank(two) == pytest.approx(2, rel=0.02)


def test_latent_ladder_measures_what_each_depth_misses(speech_chain):
  """On a trained (2-step) codec: the share of the latent's variance the first n levels
  miss equals |z - q_n|^2 / |z - mean z|^2 computed directly from the model."""
  workdir, _, _ = speech_chain
  _, graphdef, state, _ = runs.restore(workdir)
  model = runs.eval_model(graphdef, state)
  audio = jnp.asarray(np.random.default_rng(1).normal(0, 0.1, (2, 8000)), jnp.float32)
  recon, z, errors, variance, one_direction = evaluators.latent_ladder(state, audio,
                                                                       graphdef=graphdef)
  z_direct = model.encoder(model.pad(audio))
  np.testing.assert_allclose(z, z_direct, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(recon, model.decoder(z_direct)[:, :8000], rtol=1e-4, atol=1e-5)
  # the top principal direction by numpy's PCA of the batch's frames (its sign is free)
  frames = np.asarray(z_direct, np.float64).reshape(-1, z_direct.shape[-1])
  mean = frames.mean(axis=0)
  _, singular, directions = np.linalg.svd(frames - mean, full_matrices=False)
  assert singular[0] > 1.5 * singular[1]  # a well-defined top direction (here ~5x)
  top = directions[0]
  on_top = (mean + np.outer((frames - mean) @ top, top)).reshape(z_direct.shape)
  expected = model.decoder(jnp.asarray(on_top, jnp.float32))[:, :8000]
  np.testing.assert_allclose(one_direction, expected, rtol=1e-3, atol=1e-4)
  centred = np.sum(np.square(z_direct - z_direct.mean(axis=(0, 1))))
  np.testing.assert_allclose(variance, centred, rtol=1e-4)
  for n in range(1, model.num_levels + 1):
    q = model.quantizer(z_direct, num_levels=n).quantized
    np.testing.assert_allclose(errors[n - 1], np.sum(np.square(z_direct - q)), rtol=1e-4)
