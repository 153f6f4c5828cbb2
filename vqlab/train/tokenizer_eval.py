"""Evaluate a trained tokenizer, image, video or audio: reconstruct a split and report its
numbers (images: PSNR, SSIM, code usage, perplexity, and rFID when Inception weights are
given; clips: the same per frame, against repeating the first frame, and rFVD when I3D
weights are given; audio codecs: SI-SDR, mel distance, PESQ / STOI and code usage at every number of
residual levels).

  vqlab eval --workdir runs/quickstart [--split test] [--examples 1000] [--step N]
             [--inception inception_fid.npz]
  vqlab eval --workdir runs/video [--i3d i3d.npz]
  vqlab eval --workdir runs/codec

Writes eval_<split>_<step>.json to the workdir and prints the numbers.
"""

from __future__ import annotations

import json
import os

from vqlab import parallel
from vqlab.eval import i3d, inception
from vqlab.train import evaluators, runs
from vqlab.train.common import run_app


def evaluate_workdir(workdir: str, split: str | None = None, examples: int | None = None,
                     step: int | None = None, data_dir: str | None = None,
                     inception_weights: str | None = None,
                     i3d_weights: str | None = None) -> dict:
  """Evaluate a run's checkpoint; `inception_weights` ("random" for tests) adds rFID,
  `i3d_weights` rFVD (video runs)."""
  runs.load_config_of(workdir, ("tokenizer", "codec"))
  # loaded before any work: a bad path fails early
  inception_params = inception.load(inception_weights) if inception_weights else None
  i3d_params = i3d.load(i3d_weights) if i3d_weights else None
  mesh = parallel.make_mesh({"data": -1})
  config, graphdef, state, step = runs.restore(workdir, step, mesh)
  if data_dir:
    config.data.data_dir = data_dir
  split = split or config.data.eval_split
  result = {"step": step, "split": split,
            **evaluators.evaluate(config, graphdef, state, mesh, split=split,
                                  num_examples=examples, inception_params=inception_params,
                                  i3d_params=i3d_params)}
  with open(os.path.join(workdir, f"eval_{split}_{step}.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("workdir", None, "A tokenizer or codec run's workdir.")
  flags.DEFINE_string("split", None, "Split to reconstruct (default: the config's eval split).")
  flags.DEFINE_integer("examples", None, "Examples to evaluate (default: log.eval_examples).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("data_dir", None, "Override the config's tfds data dir.")
  flags.DEFINE_string("inception", None, "Converted pytorch-fid Inception weights (.npz, "
                      "vqlab convert inception --help): adds rFID (image tokenizers).")
  flags.DEFINE_string("i3d", None, "Converted Inception-I3D weights (.npz, vqlab convert i3d "
                      "--help): adds rFVD (video tokenizers).")
  flags.mark_flag_as_required("workdir")

  def body(f):
    r = evaluate_workdir(f.workdir, f.split, f.examples, f.step, f.data_dir, f.inception,
                         f.i3d)
    config = runs.load_config(f.workdir)
    print(f"step {r['step']}, {evaluators.describe(config, r, r['split'])}")

  run_app(argv, body)
