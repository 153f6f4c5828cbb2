"""Export a dataset's tokens with a trained image / video tokenizer or audio codec, for the
generators.

  vqlab tokens --workdir runs/quickstart --out runs/quickstart/tokens_train --split train
  vqlab tokens --workdir runs/codec --out runs/codec/tokens --split train --seconds 2

One pass over the split (no shuffling; for datasets cropped at random, the evaluation
seed fixes the crops and --examples how many), indices written as array_record shards
by `vqlab.data.tokens.write_tokens`. Audio records are (frames, levels) codes of crops
of `seconds` (default the codec's eval_seconds), resampled and loudness-normalised as in
training.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np

from vqlab import parallel
from vqlab.data import splits, tokens
from vqlab.data.pipeline import iterate
from vqlab.models import audio_codec
from vqlab.models.causal3d import latent_frames
from vqlab.quantizers.core import INVALID
from vqlab.train import evaluators, runs
from vqlab.train.common import run_app, to_unit


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode_images(state, images, *, graphdef):  # or clips
  return runs.eval_model(graphdef, state).encode(to_unit(images)).indices


def _records(ds, key: str, encode, batch_size: int, total: float, sharding):
  """{"indices", "label"?} per example, encoding one padded batch shape throughout."""
  done = 0
  for batch in iterate(ds, threads=0):
    x = batch[key]
    n = len(x)  # the last batch is padded so one compiled shape serves all
    x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
    indices = np.asarray(encode(jax.device_put(x, sharding)))[:n]
    bad = (indices == INVALID).reshape(n, -1).any(axis=1)
    if bad.any():  # a non-finite latent (index -1): the model is not usable
      raise ValueError(f"the tokenizer's latents of {int(bad.sum())} of {n} examples are not "
                       "finite; refusing to export tokens of a diverged model")
    for i in range(n):
      if done == total:
        return
      yield {"indices": indices[i], **({"label": batch["label"][i]} if "label" in batch
                                       else {})}
      done += 1


def export(workdir: str, out: str, split: str = "train", examples: int | None = None,
           batch_size: int = 64, data_dir: str | None = None,
           seconds: float | None = None) -> int:
  """Tokens of `split` (all of it, or `examples` images / clips) into `out`; returns the
  count."""
  mesh = parallel.make_mesh({"data": -1})
  audio = runs.kind(runs.load_config_of(workdir, ("tokenizer", "codec"))) == "codec"
  config, graphdef, state, step = runs.restore(workdir, mesh=mesh)
  if data_dir:
    config.data.data_dir = data_dir
  model = runs.eval_model(graphdef, state)
  meta = {"tokenizer_workdir": os.path.abspath(workdir), "step": step,
          "tokenizer_fingerprint": runs.fingerprint(state), "split": split,
          "dataset": config.data.name, "codebook_size": int(model.quantizer.codebook_size)}
  if audio:
    if seconds:
      config.data.eval_seconds = seconds
    ds = splits.audio_split(config, split, train=False, batch_size=batch_size,
                            num_examples=examples, drop_remainder=False)
    key, encode = "audio", functools.partial(evaluators.encode_audio, state, graphdef=graphdef)
    length = splits.crop_length(config, config.data.eval_seconds)
    meta.update(modality="audio", frames=audio_codec.num_frames(length, model.hop),
                levels=model.num_levels, sample_rate=model.sample_rate,
                frame_rate=model.frame_rate, seconds=config.data.eval_seconds)
  else:
    ds = splits.tokenizer_split(config, split, train=False, batch_size=batch_size,
                                num_examples=examples, labels=True, drop_remainder=False)
    key = splits.tokenizer_key(config)
    encode = functools.partial(_encode_images, state, graphdef=graphdef)
    meta.update(modality=key, token_shape=[int(n) for n in model.token_shape],
                image_size=int(config.data.image_size))
    if len(model.token_shape) == 2:  # a latent grid (h = w); 1D tokenizers: (K,) only
      meta["latent_size"] = int(model.token_shape[0])
    if splits.is_video(config):  # indices (latent frames, h, w)
      meta.update(num_frames=int(config.data.num_frames), latent_frames=latent_frames(
          config.data.num_frames, model.temporal_factor))
  total = examples or math.inf  # default: the whole split, one pass
  records = _records(ds, key, encode, batch_size, total, parallel.batch_sharding(mesh))
  return tokens.write_tokens(out, records, meta)


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("workdir", None, "A tokenizer run's workdir.")
  flags.DEFINE_string("out", None, "Directory for the token shards.")
  flags.DEFINE_string("split", "train", "Split to tokenize.")
  flags.DEFINE_integer("examples", None, "Images / audio clips to tokenize (default: the "
                       "whole split, one crop each).")
  flags.DEFINE_integer("batch_size", 64, "Examples per encode call.")
  flags.DEFINE_float("seconds", None, "Audio: clip length (default the codec's eval_seconds).")
  flags.DEFINE_string("data_dir", None, "Override the config's tfds data dir.")
  flags.mark_flags_as_required(["workdir", "out"])

  def body(f):
    n = export(f.workdir, f.out, f.split, f.examples, f.batch_size, f.data_dir, f.seconds)
    print(f"wrote {n} token records to {f.out}")

  run_app(argv, body)
