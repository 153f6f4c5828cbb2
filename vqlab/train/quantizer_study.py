"""The quantizer study: train the same small conv autoencoder on the built-in MNIST
digits with each quantizer, then compare reconstruction, code usage and time.

  vqlab study --config configs/quantizer_study.py --workdir runs/study

Writes to the workdir: config.json (resolved config), results.json, results.md (the
table also printed), reconstructions.png (originals on top, one row per quantizer).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image
from tqdm import tqdm

from vqlab.data.digits import load_mnist_digits, train_eval_split
from vqlab.models.conv_autoencoder import ConvAutoencoder, image_to_unit
from vqlab.quantizers import factory
from vqlab.quantizers.core import usage_metrics
from vqlab.train.common import check_workdir, labeled_grid, run_app, to_pixels


def quantizer_spec(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  if name not in config.q:
    raise ValueError(f"quantizers: unknown quantizer {name!r}; expected names from "
                     f"config.q: {sorted(config.q)}")
  return config.q[name]


def build_model(config: ml_collections.ConfigDict, name: str, seed: int) -> ConvAutoencoder:
  spec = quantizer_spec(config, name)
  rngs = nnx.Rngs(seed)
  quantizer = factory.build(spec.kind, config.latent_dim, rngs=rngs, **spec.args.to_dict())
  return ConvAutoencoder(quantizer, latent_dim=config.latent_dim, width=config.width, rngs=rngs)


def joint_indices(model: ConvAutoencoder, indices: jax.Array) -> tuple[jax.Array, int]:
  """One index per latent position over the full (product) codebook, and its size."""
  k = model.quantizer.codebook_size
  if getattr(model.quantizer, "index_axes", 0) == 0:
    return indices, k
  levels = indices.shape[-1]
  weights = jnp.asarray([k ** (levels - 1 - l) for l in range(levels)], jnp.int32)
  return jnp.sum(indices * weights, axis=-1), k**levels


def train_step_fn(model: ConvAutoencoder, optimizer: nnx.Optimizer, images: jax.Array):
  """One Adam step on reconstruction + quantizer loss; updates model and optimizer."""
  x = image_to_unit(images)

  def loss_fn(model):
    recon, q = model(x)
    mse = jnp.mean((recon - x) ** 2)
    return mse + q.loss, (mse, q.metrics)

  (loss, (mse, metrics)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  return {"loss": loss, "mse": mse, **metrics}


train_step = nnx.jit(train_step_fn)


@nnx.jit
def eval_step(model: ConvAutoencoder, images: jax.Array):
  x = image_to_unit(images)
  recon, q = model(x)
  return jnp.sum((recon - x) ** 2, axis=(1, 2, 3)), q.indices, recon


def evaluate(model: ConvAutoencoder, images: np.ndarray, batch_size: int) -> dict[str, Any]:
  model.eval()
  sq_err, counts, n_pixels = 0.0, None, 0
  for start in range(0, len(images), batch_size):
    err, indices, _ = eval_step(model, jnp.asarray(images[start:start + batch_size]))
    joint, size = joint_indices(model, indices)
    batch_counts = np.bincount(np.asarray(joint).ravel(), minlength=size)
    counts = batch_counts if counts is None else counts + batch_counts
    sq_err += float(err.sum())
    n_pixels += err.shape[0] * int(np.prod(images.shape[1:]))
  model.train()
  mse = sq_err / n_pixels
  usage = usage_metrics(jnp.asarray(counts, jnp.float32))
  return {"mse": mse, "psnr": 10 * math.log10(4.0 / mse),  # signal range [-1, 1]
          "usage": float(usage["usage"]), "perplexity": float(usage["perplexity"]),
          "codebook_size": int(len(counts))}


def train_one(config: ml_collections.ConfigDict, name: str, train: np.ndarray,
              test: np.ndarray) -> tuple[dict[str, Any], ConvAutoencoder]:
  model = build_model(config, name, config.seed)
  optimizer = nnx.Optimizer(model, optax.adam(config.lr), wrt=nnx.Param)
  rng = np.random.default_rng(config.seed)
  train_step(model, optimizer, jnp.asarray(train[:config.batch_size]))  # compile
  start, history = time.perf_counter(), []
  for step in tqdm(range(1, config.steps + 1), desc=name, leave=False, mininterval=2):
    batch = train[rng.integers(0, len(train), config.batch_size)]
    metrics = train_step(model, optimizer, jnp.asarray(batch))
    if step % config.log_every == 0 or step == config.steps:
      history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
  jax.block_until_ready(nnx.state(model))
  seconds = time.perf_counter() - start
  result = {"quantizer": name, "kind": config.q[name].kind, "train_seconds": seconds,
            "steps_per_second": config.steps / seconds, "history": history,
            **evaluate(model, test, config.batch_size)}
  return result, model


def reconstruction_grid(models: dict[str, ConvAutoencoder], images: np.ndarray) -> Image.Image:
  """Originals in the first row, then one row per quantizer, with labels."""
  rows = [("original", images)]
  for name, model in models.items():
    model.eval()
    _, _, recon = eval_step(model, jnp.asarray(images))
    model.train()
    rows.append((name, to_pixels(recon)))
  return labeled_grid(rows)


def results_table(results: list[dict[str, Any]]) -> str:
  lines = ["| quantizer | codes | eval MSE | PSNR dB | code usage | perplexity | train s | steps/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r['quantizer']} | {r['codebook_size']} | {r['mse']:.4f} | {r['psnr']:.2f} "
                 f"| {r['usage']:.1%} | {r['perplexity']:.0f} | {r['train_seconds']:.1f} "
                 f"| {r['steps_per_second']:.1f} |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  names = [n for n in config.quantizers.split(",") if n]
  for name in names:  # fail before anything is written or trained
    quantizer_spec(config, name)
  check_workdir(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  images, _ = load_mnist_digits(pad_to=32)
  train, test = train_eval_split(images, config.eval_size, config.seed)
  print(f"quantizer study: {len(train)} train / {len(test)} eval digits, "
        f"{config.steps} steps x {config.batch_size}, quantizers: {', '.join(names)}")
  results, models = [], {}
  for name in names:
    result, models[name] = train_one(config, name, train, test)
    results.append(result)
    print(f"  {name}: eval MSE {result['mse']:.4f}, usage {result['usage']:.1%}, "
          f"{result['train_seconds']:.1f}s", flush=True)
  table = results_table(results)
  print("\n" + table)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  grid_path = os.path.join(workdir, "reconstructions.png")
  reconstruction_grid(models, test[:16]).save(grid_path)
  print(f"\nwrote {workdir}/results.md, results.json, config.json and {grid_path}")
  return results


def main(argv: list[str]) -> None:
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "configs/quantizer_study.py[:runlocal]",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "runs/study", "Where results and images go.")

  run_app(argv, lambda f: run(f.config, f.workdir))
