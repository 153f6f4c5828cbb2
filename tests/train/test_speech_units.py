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
  config.units.features = "hubert"
  with pytest.raises(ValueError, match="units.features: expected one of"):
    speech_units.features(np.zeros(1600, np.float32), config)
