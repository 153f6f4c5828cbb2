"""The quantizer study (the main job for now): runs, learns, fails early on bad input."""

import json
import os

import numpy as np
import pytest

from configs import quantizer_study as study_config
from vqlab.data.digits import load_mnist_digits, train_eval_split
from vqlab.quantizers import factory
from vqlab.train import quantizer_study


def test_runlocal_trains_every_quantizer_and_writes_results(tmp_path):
  config = study_config.get_config("runlocal")
  results = quantizer_study.run(config, str(tmp_path))
  assert [r["quantizer"] for r in results] == config.quantizers.split(",")
  for r in results:
    assert np.isfinite(r["mse"]) and 0 < r["usage"] <= 1 and r["codebook_size"] in (1000, 1024)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert [r["quantizer"] for r in saved] == [r["quantizer"] for r in results]
  assert (tmp_path / "reconstructions.png").stat().st_size > 1000
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == config.train.steps


@pytest.mark.parametrize("name", ["vq_ema_restart", "fsq"])
def test_a_short_run_learns_the_real_digits(name, tmp_path):
  """150 steps must halve the error of the best constant guess (the mean training image):
  a model that ignores its input cannot do that, one that reconstructs digits does."""
  config = study_config.get_config()
  config.train.steps, config.quantizers, config.data.eval_size = 150, name, 256
  images, _ = load_mnist_digits()
  train, test = train_eval_split(images, config.data.eval_size)
  x_train, x_test = (i.astype(np.float32) / 127.5 - 1 for i in (train, test))
  baseline = float(np.mean((x_test - x_train.mean(0)) ** 2))
  result = quantizer_study.run(config, str(tmp_path))[0]
  assert result["mse"] < 0.5 * baseline, (result["mse"], baseline)
  assert result["usage"] > 0.01  # more than 10 codes in use: not collapsed


def test_digits_are_real_mnist():
  images, labels = load_mnist_digits()
  assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
  assert sorted(set(labels.tolist())) == list(range(10))
  assert images[:, :2].max() == 0 and 0.1 < (images > 0).mean() < 0.3  # padded strokes


def test_bad_config_fails_before_training(tmp_path):
  config = study_config.get_config("runlocal")
  config.quantizers = "vq_ste,nope"
  with pytest.raises(ValueError, match="quantizers: unknown quantizer 'nope'"):
    quantizer_study.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written
  with pytest.raises(AttributeError):
    study_config.get_config().no_such_field  # noqa: B018
  blocked = tmp_path / "file"
  blocked.write_text("not a directory")
  with pytest.raises(OSError, match="workdir"):
    quantizer_study.run(study_config.get_config("runlocal"), str(blocked / "sub"))


def test_factory_names_bad_kinds_and_arguments():
  from flax import nnx
  with pytest.raises(ValueError, match="kind: expected one of"):
    factory.build("pq", 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown arguments \\['levls'\\]"):
    factory.build("fsq", 8, rngs=nnx.Rngs(0), levls=[3, 3])
  assert factory.build("lfq", 8, rngs=nnx.Rngs(0), bits=4).codebook_size == 16


def test_every_quantizer_argument_is_a_config_field():
  config = study_config.get_config("runlocal")
  config.q.lfq.args.entropy_weight = 0.2
  config.q.rvq.args.estimator = "rotation"
  assert quantizer_study.build_model(config, "lfq", 0).quantizer.entropy_weight == 0.2
  rvq = quantizer_study.build_model(config, "rvq", 0).quantizer
  assert [level.estimator for level in rvq.levels] == ["rotation", "rotation"]
  with pytest.raises(AttributeError):
    config.q.lfq.args.no_such_argument  # noqa: B018
