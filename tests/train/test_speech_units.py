"""`vqlab units`: k-means units of speech features against espeak-ng's phonemes."""

import importlib
import json
import os

import numpy as np
import pytest

from vqlab.data import speech, splits, tokens
from vqlab.eval import units as unit_metrics
from vqlab.train import runs, speech_units


def test_deltas_and_cepstra():
  ramp = np.arange(10, dtype=np.float32)[:, None] * np.array([[2.0, -1.0]], np.float32)
  np.testing.assert_allclose(speech_units._deltas(ramp)[2:-2], [[2.0, -1.0]] * 6, rtol=1e-6)
  dct = speech_units._dct_matrix(8, 8)
  np.testing.assert_allclose(dct.T @ dct, np.eye(8), atol=1e-5)  # orthonormal DCT-II
  from scipy.fft import dct as scipy_dct
  x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  np.testing.assert_allclose(x @ dct, scipy_dct(x, type=2, norm="ortho", axis=1), atol=1e-5)


def test_units_track_phonemes_and_export(speech_data_dir, tmp_path):
  config = importlib.import_module("configs.speech_units").get_config("runlocal")
  config.data.data_dir = speech_data_dir
  workdir = str(tmp_path / "units")
  assert runs.kind(config) == "units"
  s = runs.train(config, workdir)
  # k-means units of MFCC carry phoneme information well above as many random units
  assert s["eval/pnmi"] > s["random/pnmi"] + 0.1 and s["random/pnmi"] < 0.05
  assert s["eval/phone_purity"] > 1.5 * s["random/phone_purity"]
  assert 0 < s["eval/pnmi"] < 1 and 0 < s["eval/cluster_purity"] <= 1
  # de-duplication: fewer units than frames, more than phoneme segments
  assert s["eval/phoneme_segments_per_second"] < s["eval/deduplicated_units_per_second"] < 100
  # the summary's numbers are what the saved centres give
  saved = np.load(os.path.join(workdir, "units.npz"))
  utts = splits.aligned_speech(config, "synth_test", config.units.examples)
  labels, assigned = [], []
  for utt in utts:
    f = speech_units.features(utt["audio"], config)
    assigned.append(speech_units.assign(f, saved["mean"], saved["std"], saved["centres"]))
    labels.append(speech.frame_labels(utt["phoneme_starts"], utt["phoneme_ids"], len(f),
                                      config.units.hop / 16000, 16000, centre=0.0))
  q = unit_metrics.unit_quality(np.concatenate(labels), np.concatenate(assigned),
                                len(speech.PHONEMES), config.units.num_units)
  assert q["pnmi"] == pytest.approx(s["eval/pnmi"], abs=1e-9)
  # records of export_length de-duplicated units, as many as the utterances hold
  source = tokens.TokenSource(os.path.join(workdir, "tokens", "synth_test"))
  length = config.units.export_length
  expected = sum(len(unit_metrics.deduplicate(a)) // length for a in assigned)
  assert len(source) == s["eval/records"] == expected > 0
  assert source.meta["codebook_size"] == config.units.num_units and source.meta["frames"] == length
  first = source[0]["indices"]
  np.testing.assert_array_equal(first, unit_metrics.deduplicate(assigned[0])[:length])
  assert np.all(first[1:] != first[:-1])
  # a finished workdir is not recomputed
  assert runs.train(config, workdir) == json.load(open(os.path.join(workdir, "summary.json")))


def test_unlabelled_split_and_unknown_features_are_refused(speech_data_dir):
  config = importlib.import_module("configs.speech_units").get_config("runlocal")
  config.data.data_dir = speech_data_dir
  with pytest.raises(ValueError, match="has no phonemes"):
    splits.aligned_speech(config, "test", 2)
  config.units.features = "wav2vec"
  with pytest.raises(ValueError, match="units.features: expected one of"):
    speech_units.features(np.zeros(1600, np.float32), config)


def test_hubert_units_run_at_the_teachers_frames(speech_data_dir, tmp_path):
  """`:hubert` on a random teacher of the published models' conv arithmetic (tiny widths):
  50 frames/s, frames labelled at the teacher's receptive-field centres, and units of even
  random features carry more phoneme information than random units. A missing teacher is
  refused before the workdir."""
  from vqlab.convert import hubert as convert_hubert
  from vqlab.models import hubert
  config = importlib.import_module("configs.speech_units").get_config("hubert,runlocal")
  config.data.data_dir = speech_data_dir
  workdir = tmp_path / "units"
  with pytest.raises(ValueError, match="needs units.teacher"):
    runs.train(config, str(workdir))
  assert not workdir.exists()
  teacher = hubert.HubertConfig(conv_dim=(8,) * 7, hidden_size=16, num_layers=2, num_heads=2,
                                intermediate_size=32, pos_conv_kernel=8, pos_conv_groups=2)
  config.units.teacher = str(tmp_path / "teacher.npz")
  convert_hubert.save(config.units.teacher, hubert.random_params(teacher), teacher)
  config.units.teacher_layer = 1
  s = runs.train(config, str(workdir))
  assert s["frame_rate"] == 50.0 and s["features"] == "hubert"
  assert speech_units.frame_grid(config) == (320, pytest.approx(0.625))
  wave = np.random.default_rng(0).normal(size=16000).astype(np.float32)
  assert speech_units.features(wave, config).shape == (49, 16)  # (16000 - 400) // 320 + 1
  assert s["eval/pnmi"] > s["random/pnmi"] and 0 < s["eval/pnmi"] < 1
