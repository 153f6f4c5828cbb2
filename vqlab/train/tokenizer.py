"""The image-tokenizer trainer (VQGAN / ViT-VQGAN with any quantizer).

  vqlab train --config configs/vqgan_quickstart.py --workdir runs/quickstart

grain input -> one sharded `jax.jit` step on a mesh from `config.mesh` (batch over
data x fsdp, parameters and optimizer state FSDP-sharded) -> orbax async checkpoints,
resumed automatically from the workdir -> metrics.jsonl + TensorBoard -> reconstruction
grids (images/) -> summary.json with the held-out PSNR, SSIM, code usage and perplexity.

Loss (taming-transformers' VQGAN): recon_weight * |x - x^|_1 (or squared) +
perceptual_weight * LPIPS + quantizer_weight * quantizer loss, and from `disc_start`
on, lambda * GAN generator loss, with lambda VQGAN's adaptive weight (ratio of the
last decoder layer's gradient norms) or `disc_weight` alone. The PatchGAN
discriminator is trained from `disc_start` with hinge / non-saturating loss and
optional LeCam regularisation. An EMA of the generator's parameters (`ema_decay`) is
what evaluation and the tokenizer API use when it is on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vqlab import parallel
from vqlab.data import builtin
from vqlab.data.pipeline import image_dataset, iterate
from vqlab.eval import inception
from vqlab.eval.image_metrics import frechet_distance, gaussian_stats, psnr, ssim
from vqlab.losses import adversarial
from vqlab.losses.perceptual import LPIPS
from vqlab.models import image_tokenizer
from vqlab.models.discriminator import PatchGAN
from vqlab.quantizers.core import usage_metrics
from vqlab.train import loop
from vqlab.train.common import MetricWriter, config_main, labeled_grid, to_pixels, to_unit

RECON_LOSSES = ("l1", "l2")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The loss settings the compiled step closes over (hashable, unlike a ConfigDict)."""
  recon: str
  recon_weight: float
  quantizer_weight: float
  perceptual_weight: float
  gan_loss: str
  disc_weight: float
  adaptive_weight: bool
  lecam_weight: float
  lecam_decay: float
  ema_decay: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossSpec":
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "ema_decay"]
    return cls(**{k: config.loss[k] for k in fields}, ema_decay=config.train.ema_decay)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Everything that can be checked before a file is read or an array allocated."""
  if config.loss.recon not in RECON_LOSSES:
    raise ValueError(f"loss.recon: expected one of {RECON_LOSSES}, got {config.loss.recon!r}")
  adversarial.check_gan_loss(config.loss.gan_loss)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ValueError(f"train.ema_decay: expected in [0, 1), got {config.train.ema_decay}")
  loop.check_nonfinite_mode(config.train.nonfinite)
  if config.train.steps < 1 or config.train.batch_size < 1:
    raise ValueError(f"train.steps, train.batch_size: expected >= 1, got "
                     f"{config.train.steps}, {config.train.batch_size}")
  if config.train.schedule == "cosine" and config.train.warmup_steps >= config.train.steps:
    raise ValueError(f"train.warmup_steps: expected fewer than train.steps="
                     f"{config.train.steps} for the cosine schedule, got "
                     f"{config.train.warmup_steps}")
  if config.loss.perceptual_weight > 0 and not config.loss.lpips_weights:
    raise ValueError("loss.lpips_weights: expected a converted LPIPS .npz (python -m "
                     "vqlab.losses.perceptual --help) or 'random' when "
                     f"loss.perceptual_weight={config.loss.perceptual_weight} > 0")
  weights = config.loss.lpips_weights
  if config.loss.perceptual_weight > 0 and weights != "random" and not os.path.exists(weights):
    raise FileNotFoundError(f"loss.lpips_weights: no such file {weights!r}")
  shape = image_tokenizer.make_shape(config.model.arch, config.model.shape.to_dict())
  size = shape.resolution if config.model.arch == "vqgan" else shape.image_size
  if config.data.image_size != size:
    raise ValueError(f"data.image_size: expected the model's image size {size}, got "
                     f"{config.data.image_size}")


# ----------------------------------------------------------------------------- state


def build_model(config: ml_collections.ConfigDict, seed: int
                ) -> image_tokenizer.ImageTokenizer:
  m = config.model
  return image_tokenizer.build(m.arch, m.shape.to_dict(), m.quantizer.kind,
                               m.quantizer.args.to_dict(), rngs=nnx.Rngs(seed))


def schedule(config: ml_collections.ConfigDict, lr: float) -> optax.Schedule:
  t = config.train
  if t.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(t.warmup_steps, 1)),
                                 optax.constant_schedule(lr)], [max(t.warmup_steps, 1)])
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(t.warmup_steps, 1), t.steps,
                                              end_value=lr * 0.1)
  raise ValueError(f"train.schedule: expected 'constant' or 'cosine', got {t.schedule!r}")


def make_optimizer(config: ml_collections.ConfigDict, lr: float) -> optax.GradientTransformation:
  t = config.train
  adam = optax.adamw(schedule(config, lr), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adam) if t.grad_clip else adam


@dataclasses.dataclass
class Parts:
  """What a step merges back from (graphdef, state)."""
  model: image_tokenizer.ImageTokenizer
  disc: PatchGAN
  opt_g: nnx.Optimizer
  opt_d: nnx.Optimizer


def init_state(config: ml_collections.ConfigDict):
  """(graphdef, state): state = {"nnx": model, discriminator and both optimizers,
  "ema": the generator parameters' EMA (empty when off), "lecam": EMAs of D's mean
  outputs on real and fake}."""
  model = build_model(config, config.seed)
  disc = PatchGAN(model.channels, config.disc.width, config.disc.n_layers,
                  norm=config.disc.norm, rngs=nnx.Rngs(config.seed + 1))
  opt_g = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=nnx.Param)
  opt_d = nnx.Optimizer(disc, make_optimizer(config, config.train.disc_lr), wrt=nnx.Param)
  graphdef, nnx_state = nnx.split((model, disc, opt_g, opt_d))
  ema = (jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if config.train.ema_decay
         else {})
  state = {"nnx": nnx_state, "ema": ema, "lecam": jnp.zeros((2,), jnp.float32)}
  # Initialisers may share one buffer between leaves (e.g. the optimizers' zero counts);
  # the step donates its state, which needs every leaf in a buffer of its own.
  return graphdef, jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def merge(graphdef, state) -> Parts:
  return Parts(*nnx.merge(graphdef, state["nnx"]))


def load_lpips(config: ml_collections.ConfigDict):
  """(graphdef, state) of the LPIPS network, (None, None) when the perceptual loss is off."""
  if config.loss.perceptual_weight <= 0:
    return None, None
  lpips = LPIPS(nnx.Rngs(config.seed + 2))
  if config.loss.lpips_weights != "random":
    lpips.load_npz(config.loss.lpips_weights)
  return nnx.split(lpips)


# ----------------------------------------------------------------------------- step


def _rgb(x: jax.Array) -> jax.Array:
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def train_step(state, images, lpips_state, *, graphdef, lpips_graphdef, loss: LossSpec,
               gan: bool):
  """One generator (+ discriminator when `gan`) update; returns (state, metrics)."""
  p = merge(graphdef, state)
  x = to_unit(images)
  perceptual = None
  if lpips_graphdef is not None:
    lpips = nnx.merge(lpips_graphdef, lpips_state)
    perceptual = lambda a, b: jnp.mean(lpips(_rgb(a), _rgb(b)))
  disc_graph, disc_state = nnx.split(p.disc)
  # The generator sees a copy of D: its batch statistics move only in D's own update.
  frozen_disc = lambda y: nnx.merge(disc_graph, disc_state, copy=True)(y)

  def nll_fn(recon):
    err = jnp.abs(recon - x) if loss.recon == "l1" else jnp.square(recon - x)
    rec = jnp.mean(err)
    nll = loss.recon_weight * rec
    terms = {"recon_loss": rec}
    if perceptual is not None:
      terms["perceptual_loss"] = perceptual(recon, x)
      nll = nll + loss.perceptual_weight * terms["perceptual_loss"]
    return nll, terms

  def generator_loss(model):
    h, q = model.features(x)
    kernel = model.decoder.last_kernel
    recon = model.decoder.last_layer(h, kernel)
    nll, terms = nll_fn(recon)
    total = nll + loss.quantizer_weight * q.loss
    terms = {**terms, "quantizer_loss": q.loss, **{f"q/{k}": v for k, v in q.metrics.items()}}
    if gan:
      gan_fn = lambda y: adversarial.generator_loss(frozen_disc(y), loss.gan_loss)
      g = gan_fn(recon)
      if loss.adaptive_weight:
        weight = adversarial.adaptive_weight(lambda k: model.decoder.last_layer(h, k), kernel,
                                             lambda y: nll_fn(y)[0], gan_fn, loss.disc_weight)
      else:
        weight = jnp.asarray(loss.disc_weight, jnp.float32)
      total = total + weight * g
      terms.update(generator_loss=g, gan_weight=weight)
    return total, (recon, terms)

  diff = nnx.DiffState(0, nnx.Param)
  (total, (recon, terms)), grads = nnx.value_and_grad(generator_loss, argnums=diff,
                                                      has_aux=True)(p.model)
  p.opt_g.update(p.model, grads)
  metrics = {"loss": total, **terms, "grad_norm/generator": optax.global_norm(grads),
             "psnr": jnp.mean(psnr(recon, x))}
  if min(x.shape[1:3]) >= 11:
    metrics["ssim"] = jnp.mean(ssim(recon, x))
  lecam = state["lecam"]
  if gan:
    fake = jax.lax.stop_gradient(recon)

    def disc_loss(disc):
      real_logits, fake_logits = disc(x), disc(fake)
      d = adversarial.discriminator_loss(real_logits, fake_logits, loss.gan_loss)
      if loss.lecam_weight:
        d = d + loss.lecam_weight * adversarial.lecam_regularization(
            real_logits, fake_logits, lecam[0], lecam[1])
      return d, (jnp.mean(real_logits), jnp.mean(fake_logits))

    (d, (real_mean, fake_mean)), d_grads = nnx.value_and_grad(
        disc_loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(p.disc)
    p.opt_d.update(p.disc, d_grads)
    means = jnp.stack([real_mean, fake_mean])
    lecam = loss.lecam_decay * lecam + (1.0 - loss.lecam_decay) * means
    metrics.update({"disc_loss": d, "disc/real_logits": real_mean, "disc/fake_logits": fake_mean,
                    "grad_norm/discriminator": optax.global_norm(d_grads)})
  ema = state["ema"]
  if loss.ema_decay:
    ema = jax.tree.map(lambda e, w: loss.ema_decay * e + (1.0 - loss.ema_decay) * w, ema,
                       nnx.state(p.model, nnx.Param))
  new_state = {"nnx": nnx.state((p.model, p.disc, p.opt_g, p.opt_d)), "ema": ema,
               "lecam": lecam}
  return new_state, metrics


@functools.partial(jax.jit, static_argnames=("graphdef",))
def reconstruct(state, images, *, graphdef):
  """Reconstructions (in [-1, 1]) and indices with the evaluation weights (EMA if on)."""
  model = eval_model(graphdef, state)
  recon, q = model(to_unit(images))
  return recon, q.indices


def eval_model(graphdef, state) -> image_tokenizer.ImageTokenizer:
  """The generator in eval mode, with the EMA parameters when they are kept."""
  model = merge(graphdef, state).model
  if state["ema"]:
    nnx.update(model, state["ema"])
  model.eval()
  return model


# ----------------------------------------------------------------------------- data


def datasets(config: ml_collections.ConfigDict, split: str, *, train: bool,
             batch_size: int, num_examples: int | None = None, labels: bool = False,
             drop_remainder: bool = True, split_by_process: bool = True):
  """A grain dataset of uint8 image batches for this process: shuffled, flipped and
  endless for training; else fixed crops (the evaluation seed), enough passes for
  `num_examples` (default one). `labels` keeps the source's labels when it has them.
  `split_by_process=False` gives every process the same examples (fixed image grids)."""
  d = config.data
  source = builtin.load(d.name, d.data_dir, split)
  processes = jax.process_count() if split_by_process else 1
  wanted = (num_examples or len(source)) * processes  # every process gets its part
  epochs = None if train else max(1, math.ceil(wanted / len(source)))
  keys = ("image", "label") if labels and "label" in source[0] else ("image",)
  return image_dataset(source, batch_size=batch_size, image_size=d.image_size,
                       seed=config.seed if train else config.seed + 1,
                       min_crop=d.min_crop or None, max_crop=d.max_crop or None,
                       flip=d.flip and train, shuffle=train, num_epochs=epochs,
                       process_index=jax.process_index() if split_by_process else 0,
                       process_count=processes,
                       in_memory=d.in_memory, keys=keys, drop_remainder=drop_remainder)


def local_batch_size(global_batch: int, mesh) -> int:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(f"train.batch_size: expected a multiple of the data x fsdp devices "
                     f"({shards}) and of the processes ({jax.process_count()}), got "
                     f"{global_batch}")
  return global_batch // jax.process_count()


@jax.jit
def _inception_pair(params, x, recon):
  return inception.inception_features(params, x), inception.inception_features(params, recon)


def evaluate(config: ml_collections.ConfigDict, graphdef, state, mesh, *, split: str,
             num_examples: int, inception_params=None) -> dict[str, Any]:
  """PSNR, SSIM, code usage and perplexity of held-out reconstructions (fixed crops);
  rFID (Frechet distance of Inception features, originals vs reconstructions) when
  `inception_params` are given."""
  batch = config.train.batch_size
  ds = datasets(config, split, train=False, batch_size=local_batch_size(batch, mesh),
                num_examples=num_examples)
  sharding = parallel.batch_sharding(mesh)
  fn = functools.partial(reconstruct, graphdef=graphdef)
  psnrs, ssims, counts, real_feats, fake_feats = [], [], None, [], []
  codebook = merge(graphdef, state).model.quantizer.codebook_size
  for i, b in enumerate(iterate(ds, config.data.threads, config.data.prefetch)):
    if i * batch >= num_examples:
      break
    images = jax.make_array_from_process_local_data(sharding, b["image"])
    recon, indices = fn(state, images)
    x = to_unit(images)
    psnrs.append(parallel.to_host(psnr(recon, x)))
    if min(x.shape[1:3]) >= 11:
      ssims.append(parallel.to_host(ssim(recon, x)))
    if inception_params is not None:
      real, fake = _inception_pair(inception_params, x, recon)
      real_feats.append(parallel.to_host(real))
      fake_feats.append(parallel.to_host(fake))
    flat = parallel.to_host(indices).ravel()
    c = np.bincount(flat[flat >= 0], minlength=codebook)  # -1: a dropped residual level
    counts = c if counts is None else counts + c
  if counts is None:
    raise ValueError(f"data: split {split!r} of {config.data.name!r} gave no full batch of "
                     f"{batch}")
  usage = usage_metrics(jnp.asarray(counts, jnp.float32))
  extra = {}
  if inception_params is not None:
    extra["rfid"] = frechet_distance(*gaussian_stats(np.concatenate(real_feats)),
                                     *gaussian_stats(np.concatenate(fake_feats)))
  return {**extra, "psnr": float(np.mean(np.concatenate(psnrs))),
          "ssim": float(np.mean(np.concatenate(ssims))) if ssims else float("nan"),
          "usage": float(usage["usage"]), "perplexity": float(usage["perplexity"]),
          "codebook_size": int(codebook), "examples": int(sum(len(p) for p in psnrs))}


def describe(r: dict[str, Any]) -> str:
  rfid = f"rFID {r['rfid']:.2f}, " if "rfid" in r else ""
  return (f"{rfid}PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, code usage {r['usage']:.1%} "
          f"of {r['codebook_size']}, perplexity {r['perplexity']:.0f} ({r['examples']} images)")


# ----------------------------------------------------------------------------- loop


def save_grid(writer: MetricWriter, workdir: str, step: int, originals: np.ndarray,
              recon) -> str:
  path = os.path.join(workdir, "images", f"recon_{step:07d}.png")
  if writer.enabled:
    grid = labeled_grid([("original", originals), (f"step {step}", to_pixels(recon))])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    writer.write_image(step, "reconstructions", grid)
  return path


def compile_steps(config: ml_collections.ConfigDict, graphdef, lpips_graphdef, shardings,
                  mesh) -> dict:
  """{gan: the jitted step}: with and without the GAN terms, state donated."""
  loss = LossSpec.from_config(config)
  data_sharding = parallel.batch_sharding(mesh)
  return {gan: jax.jit(loop.guard_nonfinite(
                   functools.partial(train_step, graphdef=graphdef, loss=loss, gan=gan,
                                     lpips_graphdef=lpips_graphdef), config.train.nonfinite),
                       in_shardings=(shardings, data_sharding, None),
                       out_shardings=(shardings, None), donate_argnums=0)
          for gan in (False, True)}


def dry_run(config: ml_collections.ConfigDict, mesh) -> dict:
  """Compile the train step (with the GAN when it is on) for the config's mesh and
  global batch without allocating the state or reading data; prints and returns the
  state's memory per device and XLA's memory and FLOPs figures."""
  graphdef, abstract, shardings = loop.abstract_state(lambda: init_state(config), mesh,
                                                      config.mesh)
  lpips_graphdef, lpips_state = load_lpips(config)
  step = compile_steps(config, graphdef, lpips_graphdef, shardings, mesh)[
      config.loss.disc_weight > 0]
  shape = image_tokenizer.make_shape(config.model.arch, config.model.shape.to_dict())
  size, channels = config.data.image_size, getattr(shape, "in_channels", None) or shape.channels
  images = jax.ShapeDtypeStruct((config.train.batch_size, size, size, channels), jnp.uint8,
                                sharding=parallel.batch_sharding(mesh))
  return loop.dry_run(step, mesh, abstract, shardings, images, lpips_state)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the summary also written to summary.json.
  With `config.dry_run` only compiles the step and reports (`dry_run`)."""
  check_config(config)
  main_process = jax.process_index() == 0
  mesh = parallel.make_mesh({a: config.mesh[a] for a in parallel.AXES})
  batch = local_batch_size(config.train.batch_size, mesh)
  if config.dry_run:
    return dry_run(config, mesh)
  loop.prepare_workdir(workdir, config, ("model", "disc"))
  train_ds = datasets(config, config.data.train_split, train=True, batch_size=batch)
  fixed = next(iterate(datasets(config, config.data.eval_split, train=False, batch_size=8,
                                num_examples=8, split_by_process=False), threads=0))["image"]
  loop.write_config(workdir, config)
  lpips_graphdef, lpips_state = load_lpips(config)
  graphdef, state = init_state(config)
  state, shardings = loop.place_state(workdir, state, mesh, config.mesh)
  data_sharding = parallel.batch_sharding(mesh)
  steps = compile_steps(config, graphdef, lpips_graphdef, shardings, mesh)

  def step_fn(state, batch, step):
    images = jax.make_array_from_process_local_data(data_sharding, batch["image"])
    gan = config.loss.disc_weight > 0 and step >= config.loss.disc_start
    return steps[gan](state, images, lpips_state)

  writer = MetricWriter(workdir, enabled=main_process)

  def grid(state, done):
    recon, _ = reconstruct(state, parallel.put(fixed, NamedSharding(mesh, P())),
                           graphdef=graphdef)
    save_grid(writer, workdir, done, fixed, recon)

  ckpt = loop.checkpointer(workdir, config.log.keep_checkpoints)
  it = iterate(train_ds, config.data.threads, config.data.prefetch)
  start, state = loop.resume(ckpt, state, it)
  state = loop.run(state, it, step_fn, start=start, total=config.train.steps, ckpt=ckpt,
                   writer=writer, log_every=config.log.every,
                   checkpoint_every=config.log.checkpoint_every,
                   periodic=[(config.log.image_every, grid)], postfix=("loss", "psnr", "q/usage"))
  summary = {"step": config.train.steps, **evaluate(config, graphdef, state, mesh,
                                                     split=config.data.eval_split,
                                                     num_examples=config.log.eval_examples)}
  if main_process:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"\n{config.data.name} {config.data.eval_split}: {describe(summary)}")
    print(f"wrote {workdir}/summary.json, metrics.jsonl, tensorboard/, images/, "
          f"checkpoints/")
  return summary


def restore(workdir: str, step: int | None = None, mesh=None):
  """(config, graphdef, state, step) of a run's checkpoint (default the latest), placed
  on `mesh` (default: every device, parameters replicated)."""
  return loop.restore_placed(workdir, init_state, step, mesh)


def load_tokenizer(workdir: str, step: int | None = None) -> image_tokenizer.ImageTokenizer:
  """The trained tokenizer of a workdir, in eval mode, with EMA weights when kept:
  `model.encode(x).indices` for images x in [-1, 1], `model.decode(indices)`."""
  _, graphdef, state, _ = restore(workdir, step)
  return eval_model(graphdef, state)


def main(argv: list[str]) -> None:
  config_main(argv, train, "configs/<name>.py[:runlocal]")
