"""Export a dataset's tokens with a trained image tokenizer, for the generators.

  vqlab tokens --workdir runs/quickstart --out runs/quickstart/tokens_train --split train

One pass over the split (no shuffling; for datasets cropped at random, the evaluation
seed fixes the crops and --examples how many), indices written as array_record shards
by `vqlab.data.tokens.write_tokens`.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from vqlab import parallel
from vqlab.data import tokens
from vqlab.data.pipeline import iterate
from vqlab.train import tokenizer
from vqlab.train.common import run_app, to_unit


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode(state, images, *, graphdef):
  return tokenizer.eval_model(graphdef, state).encode(to_unit(images)).indices


def export(workdir: str, out: str, split: str = "train", examples: int | None = None,
           batch_size: int = 64, data_dir: str | None = None) -> int:
  """Tokens of `split` (all of it, or `examples` images) into `out`; returns the count."""
  mesh = parallel.make_mesh({"data": -1})
  config, graphdef, state, step = tokenizer.restore(workdir, mesh=mesh)
  if data_dir:
    config.data.data_dir = data_dir
  ds = tokenizer.datasets(config, split, train=False, batch_size=batch_size,
                          num_examples=examples, labels=True, drop_remainder=False)
  total = examples or math.inf  # default: the whole split, one pass
  sharding = parallel.batch_sharding(mesh)

  def examples_iter():
    done = 0
    for batch in iterate(ds, threads=0):
      images = batch["image"]
      n = len(images)  # the last batch is padded so one compiled shape serves all
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])
      indices = np.asarray(_encode(state, jax.device_put(images, sharding),
                                   graphdef=graphdef))[:n]
      for i in range(n):
        if done == total:
          return
        yield {"indices": indices[i], **({"label": batch["label"][i]} if "label" in batch
                                         else {})}
        done += 1

  model = tokenizer.eval_model(graphdef, state)
  meta = {"tokenizer_workdir": workdir, "step": step, "split": split,
          "dataset": config.data.name,
          "codebook_size": int(model.quantizer.codebook_size),
          "latent_size": int(model.latent_size), "image_size": int(config.data.image_size)}
  return tokens.write_tokens(out, examples_iter(), meta)


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("workdir", None, "A tokenizer run's workdir.")
  flags.DEFINE_string("out", None, "Directory for the token shards.")
  flags.DEFINE_string("split", "train", "Split to tokenize.")
  flags.DEFINE_integer("examples", None, "Images to tokenize (default: the whole split).")
  flags.DEFINE_integer("batch_size", 64, "Images per encode call.")
  flags.DEFINE_string("data_dir", None, "Override the config's tfds data dir.")
  flags.mark_flags_as_required(["workdir", "out"])

  def body(f):
    n = export(f.workdir, f.out, f.split, f.examples, f.batch_size, f.data_dir)
    print(f"wrote {n} token records to {f.out}")

  run_app(argv, body)
