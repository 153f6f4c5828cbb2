"""Evaluate a trained image tokenizer: reconstruct a split and report PSNR, SSIM, code
usage and perplexity (and rFID when Inception weights are given).

  vqlab eval --workdir runs/quickstart [--split test] [--examples 1000] [--step N]

Writes eval_<split>_<step>.json to the workdir and prints the numbers.
"""

from __future__ import annotations

import json
import os

from vqlab import parallel
from vqlab.train import tokenizer


def evaluate_workdir(workdir: str, split: str | None = None, examples: int | None = None,
                     step: int | None = None, data_dir: str | None = None) -> dict:
  mesh = parallel.make_mesh({"data": -1})
  config, graphdef, state, step = tokenizer.restore(workdir, step, mesh)
  if data_dir:
    config.data.data_dir = data_dir
  split = split or config.data.eval_split
  result = {"step": step, "split": split,
            **tokenizer.evaluate(config, graphdef, state, mesh, split=split,
                                 num_examples=examples or config.log.eval_examples)}
  with open(os.path.join(workdir, f"eval_{split}_{step}.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv: list[str]) -> None:
  from absl import app, flags, logging
  flags.DEFINE_string("workdir", None, "A tokenizer run's workdir.")
  flags.DEFINE_string("split", None, "Split to reconstruct (default: the config's eval split).")
  flags.DEFINE_integer("examples", None, "Images to evaluate (default: log.eval_examples).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("data_dir", None, "Override the config's tfds data dir.")
  flags.mark_flag_as_required("workdir")

  def _main(_):
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    r = evaluate_workdir(f.workdir, f.split, f.examples, f.step, f.data_dir)
    print(f"step {r['step']}, {r['split']}: {tokenizer.describe(r)}")

  app.run(_main, argv=argv)
