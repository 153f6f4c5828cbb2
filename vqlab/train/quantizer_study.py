"""The quantizer study: train the same small conv autoencoder on the built-in MNIST
digits with each quantizer, then compare reconstruction, code usage and speed.

  vqlab study --config configs/quantizer_study.py --workdir runs/study

Each quantizer is a job of its own on the shared skeleton (vqlab.train.loop), in
WORKDIR/<quantizer>/: checkpoints, metrics.jsonl, summary.json, and a config.json that is
the study's config narrowed to that quantizer. A stopped or killed study resumes where it
was, and a rerun skips the quantizers that finished. Then it writes to the workdir:
config.json (resolved config), results.json, results.md (the table also printed),
reconstructions.png (originals on top, one row per quantizer).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image

from vqlab import parallel
from vqlab.data.digits import load_mnist_digits, train_eval_split
from vqlab.models.conv_autoencoder import ConvAutoencoder, image_to_unit
from vqlab.nn import precision
from vqlab.quantizers import factory
from vqlab.quantizers.core import MAX_TRACKED_CODES, usage_metrics
from vqlab.train import loop, runs, utilisation
from vqlab.train.common import check_workdir, labeled_grid, read_jsonl, to_pixels


def quantizer_spec(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  if name not in config.q:
    raise ValueError(f"quantizers: unknown quantizer {name!r}; expected names from "
                     f"config.q: {sorted(config.q)}")
  return config.q[name]


def build_model(config: ml_collections.ConfigDict, name: str, seed: int) -> ConvAutoencoder:
  spec = quantizer_spec(config, name)
  rngs = nnx.Rngs(seed)
  m = config.model
  quantizer = factory.build(spec.kind, m.latent_dim, rngs=rngs, **factory.spec_args(spec))
  return ConvAutoencoder(quantizer, latent_dim=m.latent_dim, width=m.width, rngs=rngs)


def joint_indices(model: ConvAutoencoder, indices: jax.Array) -> tuple[jax.Array, int]:
  """One index per latent position over the full (product) codebook, and its size; for
  a residual quantizer whose product codebook is too large to count (more than
  MAX_TRACKED_CODES), each level's index over its own codebook (levels folded into
  the positions: usage is then the mean per level)."""
  k = model.quantizer.codebook_size
  if getattr(model.quantizer, "index_axes", 0) == 0:
    return indices, k
  levels = indices.shape[-1]
  if k**levels > MAX_TRACKED_CODES:
    return indices, k
  weights = jnp.asarray([k ** (levels - 1 - l) for l in range(levels)], jnp.int32)
  return jnp.sum(indices * weights, axis=-1), k**levels


@functools.partial(jax.jit, static_argnums=0)
def _eval_levels(graphdef, state, images, num_levels):
  model = nnx.merge(graphdef, state)
  x = image_to_unit(images)
  q = model.quantizer(model.encode(x), num_levels=num_levels)
  return jnp.sum((model.decode(q.quantized) - x) ** 2, axis=(1, 2, 3))


def mse_by_levels(model: ConvAutoencoder, images: np.ndarray, batch_size: int
                  ) -> dict[str, float]:
  """{"mse_levels<n>": eval MSE decoding the first n residual levels} for n = 1 .. L (a
  residual quantizer only: the bitrate ladder of one model)."""
  graphdef, state = nnx.split(model)
  out = {}
  for n in range(1, model.quantizer.num_levels + 1):
    err = sum(float(_eval_levels(graphdef, state, jnp.asarray(images[i:i + batch_size]),
                                 jnp.int32(n)).sum())
              for i in range(0, len(images), batch_size))
    out[f"mse_levels{n}"] = err / images.size
  return out


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


def train_step(state, batch, *, graphdef):
  """`train_step_fn` on the skeleton's (state, batch) -> (state, metrics)."""
  model, optimizer = nnx.merge(graphdef, state["nnx"])
  metrics = train_step_fn(model, optimizer, batch["image"])
  return {"nnx": nnx.state((model, optimizer))}, metrics


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(graphdef, state, images):
  model = nnx.merge(graphdef, state)
  x = image_to_unit(images)
  z = model.encode(x)
  q = model.quantizer(z)
  recon = model.decode(q.quantized)
  return (jnp.sum((recon - x) ** 2, axis=(1, 2, 3)), q.indices, recon,
          jnp.mean((q.quantized - z) ** 2, axis=(1, 2, 3)))


def eval_step(model: ConvAutoencoder, images
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(squared error per image, indices, reconstructions, squared quantization error
  |q - z|^2 per image) of uint8 images."""
  graphdef, state = nnx.split(model)
  return _eval_step(graphdef, state, jnp.asarray(images))


def evaluate(model: ConvAutoencoder, images: np.ndarray, batch_size: int) -> dict[str, Any]:
  """Eval MSE, PSNR, code usage / perplexity over the whole (joint) codebook, and the
  quantization error (mean (q - z)^2 over latent elements: the encoder's output against
  what the decoder gets)."""
  sq_err, counts, n_pixels, q_err = 0.0, None, 0, 0.0
  for start in range(0, len(images), batch_size):
    err, indices, _, qe = eval_step(model, images[start:start + batch_size])
    q_err += float(qe.sum())
    joint, size = joint_indices(model, indices)
    batch_counts = np.bincount(np.asarray(joint).ravel(), minlength=size)
    counts = batch_counts if counts is None else counts + batch_counts
    sq_err += float(err.sum())
    n_pixels += err.shape[0] * int(np.prod(images.shape[1:]))
  mse = sq_err / n_pixels
  usage = usage_metrics(jnp.asarray(counts, jnp.float32))
  return {"mse": mse, "psnr": 10 * math.log10(4.0 / mse),  # signal range [-1, 1]
          "usage": float(usage["usage"]), "perplexity": float(usage["perplexity"]),
          "quantization_error": q_err / len(images), "codebook_size": int(len(counts))}


def digits(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) digits, 32x32 uint8, a fixed split by `config.seed`."""
  images, _ = load_mnist_digits(pad_to=32)
  return train_eval_split(images, config.data.eval_size, config.seed)


def narrowed(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The study's config for one quantizer: what its job reads and writes."""
  one = copy.deepcopy(config)
  with one.unlocked():
    one.quantizers = name
    one.q = ml_collections.ConfigDict({name: quantizer_spec(config, name)})
  return one


class QuantizerJob(loop.Job):
  """One quantizer of the study: a conv autoencoder trained on the digits."""
  fixed_sections = ("model", "q")
  postfix = ("loss", "mse", "usage")

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.name = config.quantizers

  def check(self):
    super().check()
    quantizer_spec(self.config, self.name)

  def load(self):
    self.train_images, self.eval_images = digits(self.config)

  def init_state(self):
    model = precision.set_compute_dtype(build_model(self.config, self.name, self.config.seed),
                                        self.config.train.compute_dtype)
    optimizer = nnx.Optimizer(model, optax.adam(self.config.train.lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    # unique buffers: the step donates its state
    return graphdef, {"nnx": jax.tree.map(lambda x: jnp.array(x, copy=True), state)}

  def train_data(self, batch_size):
    source = [{"image": x} for x in self.train_images]
    ds = grain.MapDataset.source(source).shuffle(seed=self.config.seed).repeat(None)
    return ds.batch(batch_size, drop_remainder=True)

  def compile(self, graphdef, shardings):
    fn = functools.partial(train_step, graphdef=graphdef)
    return {None: loop.jit_step(fn, self.config, shardings, self.mesh)}

  def abstract_batch(self):
    return {"image": jax.ShapeDtypeStruct((self.config.train.batch_size, 32, 32, 1), jnp.uint8,
                                          sharding=parallel.batch_sharding(self.mesh))}

  def evaluate(self, graphdef, state):
    model = runs.eval_model(graphdef, state)
    summary = {"quantizer": self.name, "kind": self.config.q[self.name].kind,
               **evaluate(model, self.eval_images, self.config.train.batch_size)}
    if getattr(model.quantizer, "index_axes", 0) and hasattr(model.quantizer, "levels"):
      summary.update(mse_by_levels(model, self.eval_images, self.config.train.batch_size))
    return summary

  def describe(self, summary):
    return (f"{self.name}: eval MSE {summary['mse']:.4f}, usage {summary['usage']:.1%} of "
            f"{summary['codebook_size']}")


def init_state(config: ml_collections.ConfigDict):
  """The state template of a one-quantizer run (`runs.restore`)."""
  return QuantizerJob(config, "").init_state()


def train_one(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume, or read back when finished) one quantizer's run."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if summary.get("step") == config.train.steps:
      print(f"  {config.quantizers}: finished earlier, read from {path}")
      return summary
  return loop.train_job(QuantizerJob(config, workdir))


def speed(workdir: str, steps: int) -> dict[str, Any]:
  """Steps/s and training seconds from the run's logged windows (the loop leaves the
  compiling step out of them); and the logged history without its timing."""
  history = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  rates = [r["steps_per_second"] for r in history if "steps_per_second" in r]
  rate = float(np.mean(rates)) if rates else float("nan")
  return {"train_seconds": steps / rate, "steps_per_second": rate,
          "history": [utilisation.without_timing(r) for r in history]}


def reconstruction_grid(models: dict[str, ConvAutoencoder], images: np.ndarray) -> Image.Image:
  """Originals in the first row, then one row per quantizer, with labels."""
  rows = [("original", images)]
  for name, model in models.items():
    _, _, recon, _ = eval_step(model, images)
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
  loop.check_train_config(config)
  check_workdir(workdir)
  loop.write_config(workdir, config)
  train, test = digits(config)
  print(f"quantizer study: {len(train)} train / {len(test)} eval digits, "
        f"{config.train.steps} steps x {config.train.batch_size}, quantizers: "
        f"{', '.join(names)}")
  results, models = [], {}
  for name in names:
    sub = os.path.join(workdir, name)
    summary = train_one(narrowed(config, name), sub)
    results.append({**summary, **speed(sub, config.train.steps)})
    _, graphdef, state, _ = runs.restore(sub)
    models[name] = runs.eval_model(graphdef, state)
  table = results_table(results)
  print("\n" + table)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(table + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    grid_path = os.path.join(workdir, "reconstructions.png")
    reconstruction_grid(models, test[:16]).save(grid_path)
    print(f"\nwrote {workdir}/results.md, results.json, config.json and {grid_path}; one "
          f"run per quantizer in {workdir}/<quantizer>/")
  return results


def train(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """`vqlab train` / `vqlab study` on a study config."""
  return run(config, workdir)
