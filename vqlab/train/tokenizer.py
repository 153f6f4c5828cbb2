"""The image- and video-tokenizer trainer (VQGAN / ViT-VQGAN / the causal 3D video
tokenizer / the 1D TiTok, with any quantizer).

  vqlab train --config configs/vqgan_quickstart.py --workdir runs/quickstart
  vqlab train --config configs/video_quickstart.py --workdir runs/video
  vqlab train --config configs/titok_quickstart.py --workdir runs/titok

TiTok's two-stage recipe (vqlab/models/titok.py) runs here too: `model.proxy.teacher` names
a trained 2D tokenizer run; stage 1 (`model.proxy.stage=1`, `loss.proxy_weight` > 0)
trains the encoder, quantizer and decoder to predict the teacher's codes (cross-entropy);
stage 2 starts from a stage-1 run (`model.proxy.init_from`) and trains only the decoders
on the pixel losses below. The teacher's run must stay where it is: its config and
checkpoint build the model whenever it is loaded.

Clips when `data.num_frames` > 0 (a video arch, `causal3d`): batches (B, T, H, W, C), the
perceptual loss, PSNR and SSIM per frame, and the discriminator the 3D PatchGAN.

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
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vqlab import parallel
from vqlab.data import splits
from vqlab.data.pipeline import iterate
from vqlab.eval.image_metrics import frames, psnr, ssim
from vqlab.losses import adversarial
from vqlab.losses.perceptual import LPIPS
from vqlab.models import image_tokenizer
from vqlab.models.discriminator import PatchGAN
from vqlab.nn import precision
from vqlab.quantizers import factory
from vqlab.train import evaluators, loop, runs
from vqlab.train.common import (accumulated_sum, accumulated_value_and_grad, ema_update,
                                make_optimizer, save_image_grid, to_pixels, to_unit)

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
  proxy_weight: float = 0.0  # TiTok stage 1: cross-entropy against the teacher's codes

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossSpec":
    fields = [f.name for f in dataclasses.fields(cls)
              if f.name not in ("ema_decay", "proxy_weight")]
    return cls(**{k: config.loss[k] for k in fields}, ema_decay=config.train.ema_decay,
               proxy_weight=config.loss.get("proxy_weight", 0.0))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Everything that can be checked before a file is read or an array allocated."""
  if config.loss.recon not in RECON_LOSSES:
    raise ValueError(f"loss.recon: expected one of {RECON_LOSSES}, got {config.loss.recon!r}")
  adversarial.check_gan_loss(config.loss.gan_loss)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ValueError(f"train.ema_decay: expected in [0, 1), got {config.train.ema_decay}")
  loop.check_train_config(config)
  if config.loss.perceptual_weight > 0 and not config.loss.lpips_weights:
    raise ValueError("loss.lpips_weights: expected a converted LPIPS .npz (python -m "
                     "vqlab convert lpips --help) or 'random' when "
                     f"loss.perceptual_weight={config.loss.perceptual_weight} > 0")
  weights = config.loss.lpips_weights
  if config.loss.perceptual_weight > 0 and weights != "random" and not os.path.exists(weights):
    raise FileNotFoundError(f"loss.lpips_weights: no such file {weights!r}")
  if splits.is_video(config) and config.model.arch not in image_tokenizer.VIDEO_ARCHS:
    raise ValueError(f"model.arch: expected a video arch {image_tokenizer.VIDEO_ARCHS} for "
                     f"clips (data.num_frames={config.data.num_frames}), got "
                     f"{config.model.arch!r}")
  shape = image_tokenizer.make_shape(config.model.arch, config.model.shape.to_dict())
  size = image_tokenizer.image_size(shape)
  check_proxy_config(config, shape)
  if config.data.image_size != size:
    raise ValueError(f"data.image_size: expected the model's image size {size}, got "
                     f"{config.data.image_size}")


def check_proxy_config(config: ml_collections.ConfigDict, shape) -> None:
  """TiTok's two-stage recipe: a teacher for the "proxy" decoder, the loss of each stage."""
  proxy = config.model.get("proxy", {})
  uses = config.model.arch == "titok" and shape.decoder == "proxy"
  weight = config.loss.get("proxy_weight", 0.0)
  if not uses:
    if weight:
      raise ValueError(f"loss.proxy_weight: expected 0 without a TiTok 'proxy' decoder, got "
                       f"{weight}")
    return
  stage = proxy.get("stage", 1)
  if stage not in (1, 2):
    raise ValueError(f"model.proxy.stage: expected 1 (proxy codes) or 2 (decoders on "
                     f"pixels), got {stage}")
  if stage == 1 and not proxy.get("teacher"):
    raise ValueError("model.proxy.teacher: expected a trained 2D tokenizer's workdir (its codes "
                     "are stage 1's targets), got none")
  if stage == 1 and not weight:
    raise ValueError("loss.proxy_weight: expected > 0 in stage 1 (it trains on the teacher's "
                     "codes), got 0")
  if stage == 2 and (weight or not proxy.get("init_from")):
    raise ValueError(f"model.proxy: stage 2 starts from a stage-1 run (init_from, got "
                     f"{proxy.get('init_from')!r}) and trains on pixels (loss.proxy_weight 0, "
                     f"got {weight})")


# ----------------------------------------------------------------------------- state


def build_model(config: ml_collections.ConfigDict, seed: int
                ) -> image_tokenizer.ImageTokenizer:
  m = config.model
  shape = m.shape.to_dict()
  teacher, stage = None, 1
  if m.arch == "titok" and shape.get("decoder") == "proxy":
    stage = m.proxy.stage
    if stage == 2:  # the teacher's architecture as stage 1 had it; weights: stage 1's
      first = runs.load_tokenizer(m.proxy.init_from)
      teacher_workdir = runs.load_config(m.proxy.init_from).model.proxy.teacher
    else:
      teacher_workdir = m.proxy.teacher
    teacher = runs.load_tokenizer(teacher_workdir)
  model = image_tokenizer.build(m.arch, shape, m.quantizer.kind, factory.spec_args(m.quantizer),
                                rngs=nnx.Rngs(seed), teacher=teacher, stage=stage)
  if teacher is not None and stage == 2:
    for part in ("encoder", "quantizer", "decoder"):
      nnx.update(getattr(model, part), nnx.state(getattr(first, part)))
  return model


def trainable(model) -> nnx.filterlib.Filter:
  """The generator parameters the optimizer updates (a TiTok stage trains some only)."""
  return model.trainable() if hasattr(model, "trainable") else nnx.Param


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
                  norm=config.disc.norm, video=splits.is_video(config),
                  rngs=nnx.Rngs(config.seed + 1))
  for module in (model, disc):
    precision.set_compute_dtype(module, config.train.compute_dtype)
  opt_g = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=trainable(model))
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
  return nnx.split(precision.set_compute_dtype(lpips, config.train.compute_dtype))


# ----------------------------------------------------------------------------- step


def _rgb(x: jax.Array) -> jax.Array:
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def train_step(state, images, lpips_state, *, graphdef, lpips_graphdef, loss: LossSpec,
               gan: bool, micro_batches: int = 1):
  """One generator (+ discriminator when `gan`) update; returns (state, metrics).

  `micro_batches` > 1 (train.grad_accum_steps): both updates from that many slices of the
  batch in turn (common.accumulated_value_and_grad), each slice's losses weighted 1 / m,
  which gives the large-batch step for the terms that are means over examples. VQGAN's
  adaptive weight needs the whole batch's last-layer gradients before any slice's
  gradient: a look-ahead pass of forwards over the slices gives it first
  (common.accumulated_sum; a forward more per slice). Per slice, as they would be at that
  batch size: the discriminator's batch norm (disc.norm="batch") and the quantizer's
  statistics (EMA codebooks, dead codes, usage)."""
  p = merge(graphdef, state)
  share = 1.0 / micro_batches
  perceptual = None
  if lpips_graphdef is not None:
    lpips = nnx.merge(lpips_graphdef, lpips_state)
    perceptual = lambda a, b: jnp.mean(lpips(_rgb(frames(a)), _rgb(frames(b))))
  disc_graph, disc_state = nnx.split(p.disc)
  # The generator sees a copy of D: its batch statistics move only in D's own update.
  frozen_disc = lambda y: nnx.merge(disc_graph, disc_state, copy=True)(y)
  gan_fn = lambda y: adversarial.generator_loss(frozen_disc(y), loss.gan_loss)

  def nll_fn(recon, x):
    err = jnp.abs(recon - x) if loss.recon == "l1" else jnp.square(recon - x)
    rec = jnp.mean(err)
    nll = loss.recon_weight * rec
    terms = {"recon_loss": rec}
    if perceptual is not None:
      terms["perceptual_loss"] = perceptual(recon, x)
      nll = nll + loss.perceptual_weight * terms["perceptual_loss"]
    return nll, terms

  def last_layer_gradients(model, part):  # this slice's share of the batch's
    x = to_unit(part["image"])
    h, _ = model.features(x)
    return adversarial.last_layer_gradients(
        lambda k: model.decoder.last_layer(h, k), model.decoder.last_kernel,
        lambda y: nll_fn(y, x)[0] * share, lambda y: gan_fn(y) * share)

  batch = {"image": images}
  weight = jnp.asarray(loss.disc_weight, jnp.float32)
  if gan and loss.adaptive_weight and micro_batches > 1:
    weight = adversarial.weight_from_gradients(
        *accumulated_sum(last_layer_gradients, p.model, batch, micro_batches),
        loss.disc_weight)

  def generator_loss(model, part):
    x = to_unit(part["image"])
    if loss.proxy_weight:  # TiTok stage 1: the teacher's codes; pixels only to watch
      q = model.encode(x)
      logits = model.decoder.logits(q.quantized).astype(jnp.float32)
      targets = model.proxy_targets(x)
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
      recon = jax.lax.stop_gradient(model.decoder.last_layer(
          model.decoder.teacher_decoder.features(model.decoder.soft_codes(logits)),
          model.decoder.last_kernel))
      total = loss.proxy_weight * ce + loss.quantizer_weight * q.loss
      terms = {"proxy_loss": ce, "proxy_accuracy": jnp.mean(jnp.argmax(logits, -1) == targets),
               "quantizer_loss": q.loss, **{f"q/{k}": v for k, v in q.metrics.items()}}
    else:
      h, q = model.features(x)
      kernel = model.decoder.last_kernel
      recon = model.decoder.last_layer(h, kernel)
      nll, terms = nll_fn(recon, x)
      total = nll + loss.quantizer_weight * q.loss
      terms = {**terms, "quantizer_loss": q.loss,
               **{f"q/{k}": v for k, v in q.metrics.items()}}
      if gan:
        g = gan_fn(recon)
        w = weight
        if loss.adaptive_weight and micro_batches == 1:  # the batch is this one slice
          w = adversarial.adaptive_weight(lambda k: model.decoder.last_layer(h, k), kernel,
                                          lambda y: nll_fn(y, x)[0], gan_fn, loss.disc_weight)
        total = total + w * g
        terms.update(generator_loss=g, gan_weight=w)
    terms = jax.tree.map(lambda t: t * share, terms)
    return total * share, {**terms, "recon": recon}

  (total, terms), grads = accumulated_value_and_grad(
      generator_loss, p.model, batch, micro_batches, row_keys=("recon",),
      wrt=trainable(p.model))
  recon = terms.pop("recon")
  p.opt_g.update(p.model, grads)
  x = to_unit(images)
  metrics = {"loss": total, **terms, "grad_norm/generator": optax.global_norm(grads),
             "psnr": jnp.mean(psnr(frames(recon), frames(x)))}
  if min(x.shape[-3:-1]) >= 11:
    metrics["ssim"] = jnp.mean(ssim(frames(recon), frames(x)))
  lecam = state["lecam"]
  if gan:
    def disc_loss(disc, part):
      real_logits, fake_logits = disc(to_unit(part["image"])), disc(part["fake"])
      d = adversarial.discriminator_loss(real_logits, fake_logits, loss.gan_loss)
      if loss.lecam_weight:
        d = d + loss.lecam_weight * adversarial.lecam_regularization(
            real_logits, fake_logits, lecam[0], lecam[1])
      return d * share, (jnp.mean(real_logits) * share, jnp.mean(fake_logits) * share)

    (d, (real_mean, fake_mean)), d_grads = accumulated_value_and_grad(
        disc_loss, p.disc, {"image": images, "fake": jax.lax.stop_gradient(recon)},
        micro_batches)
    p.opt_d.update(p.disc, d_grads)
    means = jnp.stack([real_mean, fake_mean])
    lecam = loss.lecam_decay * lecam + (1.0 - loss.lecam_decay) * means
    metrics.update({"disc_loss": d, "disc/real_logits": real_mean, "disc/fake_logits": fake_mean,
                    "grad_norm/discriminator": optax.global_norm(d_grads)})
  ema = ema_update(state["ema"], nnx.state(p.model, nnx.Param), loss.ema_decay)
  new_state = {"nnx": nnx.state((p.model, p.disc, p.opt_g, p.opt_d)), "ema": ema,
               "lecam": lecam}
  return new_state, metrics


# ----------------------------------------------------------------------------- job


class ImageTokenizerJob(evaluators.TokenizerJob):
  postfix = ("loss", "psnr", "q/usage")

  def check(self):
    check_config(self.config)

  def load(self):
    self.lpips_graphdef, self.lpips_state = load_lpips(self.config)

  def init_state(self):
    return init_state(self.config)

  def train_data(self, batch_size):
    c = self.config
    return splits.tokenizer_split(c, c.data.train_split, train=True, batch_size=batch_size)

  def compile(self, graphdef, shardings):
    loss = LossSpec.from_config(self.config)
    key = splits.tokenizer_key(self.config)

    def step(gan):
      fn = functools.partial(train_step, graphdef=graphdef, loss=loss, gan=gan,
                             lpips_graphdef=self.lpips_graphdef,
                             micro_batches=self.config.train.get("grad_accum_steps", 1))
      return lambda state, batch, lpips_state: fn(state, batch[key], lpips_state)

    return {gan: loop.jit_step(step(gan), self.config, shardings, self.mesh, num_args=1)
            for gan in (False, True)}

  def variant(self, step):
    return self.config.loss.disc_weight > 0 and step >= self.config.loss.disc_start

  def step_args(self):
    return (self.lpips_state,)

  def abstract_batch(self):
    c = self.config
    shape = image_tokenizer.make_shape(c.model.arch, c.model.shape.to_dict())
    channels = getattr(shape, "in_channels", None) or shape.channels
    size = c.data.image_size
    frames_ = (c.data.num_frames,) if splits.is_video(c) else ()
    return {splits.tokenizer_key(c): jax.ShapeDtypeStruct(
        (c.train.batch_size, *frames_, size, size, channels), jnp.uint8,
        sharding=parallel.batch_sharding(self.mesh))}

  def periodic(self, graphdef):
    c = self.config
    video = splits.is_video(c)
    count = 2 if video else 8  # clips: a row of frames each
    fixed = next(iterate(splits.tokenizer_split(c, c.data.eval_split, train=False,
                                                batch_size=count, num_examples=count,
                                                split_by_process=False),
                         threads=0))[splits.tokenizer_key(c)]
    replicated = parallel.put(fixed, NamedSharding(self.mesh, P()))

    def grid(state, step):
      recon, _ = evaluators.reconstruct_images(state, replicated, graphdef=graphdef)
      recon = to_pixels(recon)
      rows = ([row for i in range(count) for row in (
          (f"clip {i}", fixed[i]), (f"step {step}", recon[i]))] if video else
              [("original", fixed), (f"step {step}", recon)])
      save_image_grid(self.writer, os.path.join(self.workdir, "images", f"recon_{step:07d}.png"),
                      step, "reconstructions", rows)

    return [(c.log.image_every, grid)]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the summary also written to summary.json.
  With `config.dry_run` only compiles the step and reports memory and FLOPs."""
  return loop.train_job(ImageTokenizerJob(config, workdir))

