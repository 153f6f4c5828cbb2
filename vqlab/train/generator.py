"""The token-generator trainer: next-token (raster), next-scale (VAR) or masked (MaskGIT)
prediction on tokens exported by a trained image tokenizer, or delay-pattern prediction
(MusicGen) of the multi-level tokens of an audio codec. Video tokens (a causal 3D
tokenizer's (t, h, w) codes) are modelled in raster order with 3D RoPE, and sampled either
unconditionally or continuing the first latent frames of held-out clips (frame prediction).

  vqlab generate --config configs/generator_quickstart.py:raster --workdir runs/gen \\
    --config.tokenizer_workdir=runs/quickstart --config.tokens_dir=runs/quickstart/tokens

Same machinery as the tokenizer trainer (vqlab.train.loop): grain batches of tokens ->
one sharded `jax.jit` step (batch over data x fsdp, FSDP parameters) -> orbax
checkpoints with auto-resume (model, optimizer, EMA, RNG, iterator) -> metrics.jsonl +
TensorBoard (loss, bits per token, accuracy, gradient norm, steps/s, sampling tokens/s)
-> sample grids decoded by the tokenizer (images/samples_*.png; clips also as a GIF),
or for audio, prompts
continued and decoded to wav with their spectrograms (audio/samples_*) -> summary.json.
Labels are dropped to the null class at `train.label_dropout` for classifier-free
guidance.
"""

from __future__ import annotations

import dataclasses
import functools
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

from vqlab import parallel
from vqlab.data import splits
from vqlab.data.pipeline import FlatTokens, iterate, token_dataset
from vqlab.data.tokens import TokenSource
from vqlab.eval import inception
from vqlab.eval.image_metrics import frechet_distance, gaussian_stats, inception_score
from vqlab.models import sampling
from vqlab.models.generators import (HEADS, DelayPatternGenerator, MaskedGenerator,
                                     NextScaleGenerator, NextTokenGenerator, delay_pattern,
                                     drop_labels)
from vqlab.models.token_heads import CodeStack
from vqlab.nn import precision
from vqlab.nn.transformer import TransformerShape
from vqlab.quantizers.lfq import BinaryQuantizer
from vqlab.quantizers.residual import index_sizes, stacked_indices
from vqlab.train import evaluators, loop, runs
from vqlab.train.common import (accumulated_value_and_grad, ema_update, make_optimizer,
                                save_audio, save_gif, save_image_grid, to_pixels, to_unit)

PARADIGMS = ("raster", "var", "maskgit", "delay")
SHAPE_FIELDS = [f.name for f in dataclasses.fields(TransformerShape)]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  paradigm: str
  num_classes: int
  label_dropout: float
  ema_decay: float
  grad_accum_steps: int = 1
  bit_flip: float = 0.0  # Infinity's bitwise self-correction: input bits flipped


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  paradigm: str
  cfg_scale: float
  temperature: float
  top_k: int
  top_p: float
  steps: int
  token_shape: tuple[int, ...]  # one image's (or latent frame's) tokens: (h, w) or (K,)
  schedule: str = "cosine"  # masked decoding's mask schedule
  frames: int = 0  # video: latent frames of a clip (0: images)
  num_frames: int = 0  # video: the clip's frames, decoded
  audio: bool = False  # codec frames (B, F, levels), decoded to waveforms


def check_config(config: ml_collections.ConfigDict) -> None:
  if config.paradigm not in PARADIGMS:
    raise ValueError(f"paradigm: expected one of {PARADIGMS}, got {config.paradigm!r}")
  for name in ("tokenizer_workdir", "tokens_dir"):
    if not config[name]:
      raise ValueError(f"{name}: expected a path (see configs/generator_quickstart.py), got ''")
  if config.sample.schedule not in sampling.MASK_SCHEDULES:
    raise ValueError(f"sample.schedule: expected one of {sampling.MASK_SCHEDULES}, got "
                     f"{config.sample.schedule!r}")
  fields = {f.name for f in dataclasses.fields(SampleSpec)} - {"paradigm", "token_shape",
                                                               "frames", "num_frames", "audio"}
  for setting in config.eval.sample_settings:
    if not isinstance(setting, dict) or not setting or set(setting) - fields:
      raise ValueError(f"eval.sample_settings: expected dicts of sample fields {sorted(fields)}, "
                       f"got {setting!r}")
  if config.model.num_classes < 1:
    raise ValueError(f"model.num_classes: expected >= 1, got {config.model.num_classes}")
  loop.check_train_config(config)
  if config.model.head not in HEADS:
    raise ValueError(f"model.head: expected one of {HEADS}, got {config.model.head!r}")
  # bits per slot beyond raster: MaskBit (maskgit), Infinity's next-scale model (var)
  masked_bits = config.paradigm == "maskgit" and config.model.head == "bitwise"
  scale_bits = config.paradigm == "var" and config.model.head == "bitwise"
  if config.model.head != "softmax" and config.paradigm != "raster" and not (
      masked_bits or scale_bits):
    raise ValueError(f"model.head: the {config.model.head!r} head is built for 'raster' "
                     f"(next token; 'bitwise' also for 'maskgit' (MaskBit) and 'var' "
                     f"(Infinity)); {config.paradigm!r} predicts one softmax per slot")
  if masked_bits and config.train.bit_flip:
    raise ValueError(f"train.bit_flip: Infinity's self-correction flips teacher-forcing "
                     f"inputs of 'raster' and 'var'; MaskBit ('maskgit') has none, got "
                     f"{config.train.bit_flip}")
  if not 0.0 <= config.train.bit_flip < 0.5 or (config.train.bit_flip
                                                 and config.model.head != "bitwise"):
    raise ValueError(f"train.bit_flip: expected a probability in [0, 0.5) with "
                     f"model.head='bitwise' (0 otherwise), got {config.train.bit_flip} with "
                     f"{config.model.head!r}")
  if config.model.sub_token_bits and config.model.head != "depth":
    raise ValueError(f"model.sub_token_bits: sub-tokens are predicted by the 'depth' head, "
                     f"got model.head={config.model.head!r}")
  TransformerShape(**{k: config.model[k] for k in SHAPE_FIELDS}).check()


def code_stack(config: ml_collections.ConfigDict, quantizer) -> CodeStack:
  """What one position's token is for `config.model.head` and the tokenizer's quantizer
  (token_heads.CodeStack), or a ValueError naming what does not fit."""
  name = type(quantizer).__name__
  # runs saved before the heads existed have no head fields: the softmax they trained
  head, lead = config.model.get("head", "softmax"), config.model.get("sub_token_bits", ())
  sizes = index_sizes(quantizer)
  if stacked_indices(quantizer):  # residual / grouped: indices (..., D)
    if len(sizes) == 1 and head == "softmax":  # one level: one softmax
      return CodeStack(sizes, stacked=True)
    if head != "depth":
      raise ValueError(f"model.head: the tokenizer's {name} gives {len(sizes)} indices per "
                       f"position; expected 'depth' (RQ-Transformer's depth transformer, "
                       f"configs/generator_quickstart.py:raster,rq), got {head!r}")
    return CodeStack(sizes, stacked=True)
  vocab = sizes[0]
  if head == "bitwise":
    if not isinstance(quantizer, BinaryQuantizer):
      raise ValueError(f"model.head: 'bitwise' predicts the bits of an LFQ / BSQ index; the "
                       f"tokenizer's {name} has {vocab} codes that are not bits")
    return CodeStack((2,) * quantizer.bits)
  if head == "depth":
    bits = vocab.bit_length() - 1
    lead = tuple(int(b) for b in lead)
    if not lead or vocab != 2**bits or min(lead) < 1 or sum(lead) >= bits:
      raise ValueError(f"model.sub_token_bits: the 'depth' head on one index per position "
                       f"splits a 2^b codebook into sub-tokens (Open-MAGVIT2: 2^18 as (6,) "
                       f"-> 2^6 x 2^12); expected bit counts summing below {bits} for the "
                       f"{name}'s {vocab} codes, got {lead}")
    return CodeStack(tuple(2**b for b in lead) + (2**(bits - sum(lead)),))
  return CodeStack((vocab,))


def token_shape(meta: dict) -> tuple[int, ...]:
  """One image's token layout from an export's meta: (h, w), or (K,) for a 1D tokenizer."""
  if "token_shape" in meta:
    return tuple(int(n) for n in meta["token_shape"])
  return (int(meta["latent_size"]),) * 2  # exports before token_shape


def build_model(config: ml_collections.ConfigDict, tok, meta: dict):
  """The generator for `config.paradigm` over the tokenizer's codes; `meta` describes the
  exported tokens (tokens.json). 1D tokens (TiTok) are a sequence: 1D RoPE for "raster"
  (`positions` "rope2d", the default, means "rope1d" there), learned positions for
  "maskgit"."""
  m = config.model
  shape = TransformerShape(**{k: m[k] for k in SHAPE_FIELDS})
  rngs = nnx.Rngs(config.seed)
  vocab = int(tok.quantizer.codebook_size)
  audio = meta.get("modality") == "audio"
  one_d = not audio and len(token_shape(meta)) == 1
  positions = "rope1d" if one_d and m.positions == "rope2d" else m.positions
  if meta.get("modality") == "video" and config.paradigm != "raster":
    raise ValueError(f"paradigm: video tokens are modelled by 'raster' (next token, 3D RoPE), "
                     f"got {config.paradigm!r}")
  if audio and config.paradigm not in ("delay", "raster"):
    raise ValueError(f"paradigm: audio-codec tokens are modelled by 'delay' (MusicGen) or "
                     f"'raster' with the depth head (RQ-Transformer), got {config.paradigm!r}")
  if config.paradigm == "delay":
    if audio:
      return DelayPatternGenerator(shape, vocab, m.num_classes, int(meta["frames"]),
                                   int(meta["levels"]), rngs=rngs)
    sizes = index_sizes(tok.quantizer)
    if not stacked_indices(tok.quantizer) or len(set(sizes)) != 1:
      raise ValueError(f"paradigm: 'delay' models the levels of an audio codec or of a "
                       f"residual / grouped image tokenizer (equal codebooks); the "
                       f"tokenizer's {type(tok.quantizer).__name__} gives {sizes}: use "
                       f"{PARADIGMS[:3]}")
    # an image's stacked codes in raster order, level k delayed by k steps (1D RoPE)
    return DelayPatternGenerator(shape, sizes[0], m.num_classes, math.prod(token_shape(meta)),
                                 len(sizes), rngs=rngs)
  if config.paradigm == "var":
    if not hasattr(tok.quantizer, "patch_nums"):
      raise ValueError("paradigm: 'var' needs a tokenizer with the multi-scale quantizer "
                       "(configs/vqgan_quickstart.py:msvq), got "
                       f"{type(tok.quantizer).__name__}")
    bitwise = m.get("head", "softmax") == "bitwise"
    if bitwise and not tok.quantizer.binary:
      raise ValueError("model.head: 'bitwise' next-scale (Infinity) predicts the bits of a "
                       "binary multi-scale quantizer (configs/vqgan_quickstart.py:msbsq); the "
                       f"tokenizer's has a codebook of {vocab} codes")
    return NextScaleGenerator(shape, vocab, m.num_classes, tok.quantizer.patch_nums,
                              tok.quantizer.dim, bitwise=bitwise, rngs=rngs)
  if hasattr(tok.quantizer, "patch_nums"):
    raise ValueError(f"paradigm: the multi-scale quantizer's tokens are modelled by 'var', "
                     f"got {config.paradigm!r}")
  if config.paradigm == "raster":
    stack = code_stack(config, tok.quantizer)
    depth_shape = dataclasses.replace(shape, depth=m.get("depth_layers", 2), remat="none")
    grid, frames = ((1, int(meta["frames"])) if audio else (1, token_shape(meta)[0]) if one_d
                    else (token_shape(meta)[0], int(meta.get("latent_frames", 1))))
    return NextTokenGenerator(shape, vocab, m.num_classes, grid, frames=frames,
                              positions=positions, head=m.get("head", "softmax"), stack=stack,
                              depth_shape=depth_shape, rngs=rngs)
  if m.get("head", "softmax") == "bitwise":  # MaskBit: groups of bits as slots
    if not isinstance(tok.quantizer, BinaryQuantizer):
      raise ValueError(f"model.head: 'bitwise' (MaskBit) models the bits of an LFQ / BSQ "
                       f"index; the tokenizer's {type(tok.quantizer).__name__} has {vocab} "
                       "codes that are not bits")
    return MaskedGenerator(shape, vocab, m.num_classes, token_shape(meta),
                           bit_groups=m.get("bit_groups", 2), rngs=rngs)
  if stacked_indices(tok.quantizer):
    raise ValueError(f"paradigm: 'maskgit' models one index per latent position; the "
                     f"tokenizer's {type(tok.quantizer).__name__} gives "
                     f"{len(index_sizes(tok.quantizer))} on a trailing axis: use 'raster' "
                     "(model.head='depth' for more than one)")
  return MaskedGenerator(shape, vocab, m.num_classes, token_shape(meta), rngs=rngs)


def init_state(config: ml_collections.ConfigDict, tok=None, meta: dict | None = None):
  """(graphdef, state) for the tokenizer `tok` and tokens described by `meta` (default:
  those of `config.tokenizer_workdir` and `config.tokens_dir`)."""
  tok = runs.load_token_model(config.tokenizer_workdir) if tok is None else tok
  meta = TokenSource(config.tokens_dir).meta if meta is None else meta
  model = precision.set_compute_dtype(build_model(config, tok, meta), config.train.compute_dtype)
  optimizer = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=nnx.Param)
  graphdef, nnx_state = nnx.split((model, optimizer))
  ema = (jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if config.train.ema_decay
         else {})
  state = {"nnx": nnx_state, "ema": ema, "rng": jax.random.key(config.seed + 7)}
  # unique buffers for donation (the key is a fresh array already)
  return graphdef, {**jax.tree.map(lambda x: jnp.array(x, copy=True),
                                   {k: v for k, v in state.items() if k != "rng"}),
                    "rng": state["rng"]}


def _batch_share(nll, hit, weights, total):
  """(loss, accuracy) summed over the weighted targets and divided by `total`, the weight
  of the whole batch: a micro-batch's share of the batch mean."""
  return (jnp.sum(nll * weights) / total,
          jnp.sum(hit.astype(jnp.float32) * weights) / total)


def _cross_entropy(logits, targets, weights, total):
  """`_batch_share` of the softmax cross-entropy and argmax hits."""
  return _batch_share(optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                      jnp.argmax(logits, -1) == targets, weights, total)


def train_step(state, batch, quantizer_state, *, graphdef, quantizer_graphdef, spec: StepSpec):
  model, optimizer = nnx.merge(graphdef, state["nnx"])
  rng, k_labels, k_mask = jax.random.split(state["rng"], 3)
  raster = spec.paradigm == "raster"
  tokens, labels = batch["tokens"], batch["label"]
  labels = drop_labels(labels, k_labels, spec.label_dropout, spec.num_classes)
  # Everything random or batch-wide is drawn for the whole batch first, so that any
  # number of micro-batches gives the large-batch loss and gradients.
  inputs = {"tokens": tokens, "labels": labels}
  if raster and model.stack.stacked:  # (B, N * D) -> (B, N, D)
    inputs["tokens"] = tokens = tokens.reshape(tokens.shape[0], model.seq_len, -1)
  if spec.bit_flip and raster:
    # Infinity's bitwise self-correction: flip teacher-forcing input bits, keep the
    # targets (raster order has no later residual to re-quantize, unlike next-scale)
    codes = model.stack.split(tokens)
    flips = jax.random.bernoulli(k_mask, spec.bit_flip, codes.shape)
    inputs["codes"] = jnp.where(flips, 1 - codes, codes)
  if spec.paradigm == "var":  # VAR's inputs: the tokenizer's frozen quantizer
    quantizer = nnx.merge(quantizer_graphdef, quantizer_state)
    if spec.bit_flip:  # next-scale self-correction: flipped history, re-quantized targets
      inputs["features"], inputs["tokens"] = quantizer.self_correction(tokens, k_mask,
                                                                       spec.bit_flip)
    else:
      inputs["features"] = quantizer.teacher_forcing_input(tokens)
  if spec.paradigm == "maskgit":  # slots: tokens, or MaskBit's groups of bits
    inputs["tokens"] = tokens = model.to_slots(tokens)
    inputs["weights"] = sampling.random_mask(k_mask, *tokens.shape).astype(jnp.float32)
  elif spec.paradigm == "delay":  # targets where the delay pattern holds a code
    codes = tokens.reshape(tokens.shape[0], model.frames, model.levels)
    inputs["weights"] = (delay_pattern(codes, model.pad_id) != model.pad_id).astype(jnp.float32)
  else:
    inputs["weights"] = jnp.ones(tokens.shape[:2], jnp.float32)
  total = jnp.maximum(jnp.sum(inputs["weights"]), 1.0)

  def loss_fn(model, x):
    if raster:  # any head: log p(token) of the whole stack
      logp, hit = model.log_prob(x["tokens"], x["labels"], x.get("codes"))
      return _batch_share(-logp, hit, x["weights"], total)
    if spec.paradigm == "var":  # a softmax or Infinity's bits per slot
      logp, hit = model.log_prob(x["labels"], x["features"], x["tokens"])
      return _batch_share(-logp, hit, x["weights"], total)
    if spec.paradigm == "delay":
      codes = x["tokens"].reshape(x["tokens"].shape[0], model.frames, model.levels)
      logits, pattern = model(codes, x["labels"])
      return _cross_entropy(logits, pattern, x["weights"], total)
    masked = jnp.where(x["weights"] > 0, model.mask_id, x["tokens"])
    return _cross_entropy(model(masked, x["labels"]), x["tokens"], x["weights"], total)

  (loss, accuracy), grads = accumulated_value_and_grad(loss_fn, model, inputs,
                                                       spec.grad_accum_steps)
  optimizer.update(model, grads)
  ema = ema_update(state["ema"], nnx.state(model, nnx.Param), spec.ema_decay)
  metrics = {"loss": loss, "bits_per_token": loss / math.log(2), "accuracy": accuracy,
             "grad_norm": optax.global_norm(grads)}
  return {"nnx": nnx.state((model, optimizer)), "ema": ema, "rng": rng}, metrics


def make_sampler(graphdef, tok_graphdef, spec: SampleSpec):
  """jit: (state, tokenizer state, labels, key, prompt) -> (tokens, images or clips in
  [-1, 1], or waveforms (B, T, 1)); `prompt`: (B, P, levels) codes for "delay", the first
  (B, P) tokens of video clips for "raster" (frame prediction), else None."""

  @jax.jit
  def run(state, tok_state, labels, key, prompt=None):
    model = runs.eval_model(graphdef, state)
    tok = nnx.merge(tok_graphdef, tok_state)
    kw = dict(cfg_scale=spec.cfg_scale, temperature=spec.temperature, top_k=spec.top_k,
              top_p=spec.top_p)
    if spec.paradigm == "raster":
      tokens = sampling.sample_next_token(model, labels, key, prompt=prompt, **kw)
    elif spec.paradigm == "var":
      tokens = sampling.sample_next_scale(model, tok.quantizer, labels, key, **kw)
    elif spec.paradigm == "delay":
      tokens = sampling.sample_delay(model, labels, key, prompt, **kw)
    else:
      tokens = model.from_slots(sampling.sample_masked(model, labels, key, steps=spec.steps,
                                                       schedule=spec.schedule, **kw))
    if spec.audio:  # codes (B, frames, levels) -> waveforms
      return tokens, tok.decode(tokens)
    stack = tokens.shape[2:]  # (D,) for stacked codes
    if spec.frames:  # video: (B, latent frames, h, w[, D]) -> clips
      grid = tokens.reshape(-1, spec.frames, *spec.token_shape, *stack)
      return tokens, tok.decode(grid, spec.num_frames)
    grid = tokens if spec.paradigm == "var" else tokens.reshape(-1, *spec.token_shape, *stack)
    return tokens, tok.decode(grid)

  return run


_features = jax.jit(inception.inception_features)


def sample_metrics(sampler, state, tok_state, tok_config, num_classes: int,
                   inception_params, examples: int, batch_size: int, seed: int) -> dict:
  """gFID of `examples` class-balanced samples against as many held-out images of the
  tokenizer's dataset (its eval split, fixed crops), and their Inception Score."""
  real = []
  ds = splits.image_split(tok_config, tok_config.data.eval_split, train=False,
                          batch_size=batch_size, num_examples=examples, drop_remainder=False)
  for b in iterate(ds, threads=0):
    real.append(np.asarray(_features(inception_params, to_unit(jnp.asarray(b["image"])))))
    if sum(map(len, real)) >= examples:
      break
  fake, logits = [], []
  sample_fn = lambda labels, key: sampler(state, tok_state, labels, key)[1]
  for _, images in evaluators.class_balanced_samples(sample_fn, num_classes, examples,
                                                     batch_size, seed + 1_000_003):
    f = _features(inception_params, jnp.clip(images, -1.0, 1.0))
    fake.append(np.asarray(f))
    logits.append(np.asarray(inception.logits(inception_params, f)))
  real, fake = np.concatenate(real)[:examples], np.concatenate(fake)[:examples]
  is_mean, is_std = inception_score(np.concatenate(logits)[:examples], min(10, examples))
  return {"gfid": frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)),
          "inception_score": is_mean, "inception_score_std": is_std,
          "gfid_examples": int(min(len(real), len(fake)))}


class GeneratorJob(loop.Job):
  postfix = ("loss", "accuracy")

  def check(self):
    check_config(self.config)
    self.outputs = "images/"  # audio/ for codec tokens (known once they are loaded)

  def load(self):
    """Inception weights, the tokens and their tokenizer, checked against each other."""
    c = self.config
    self.inception_params = inception.load(c.eval.inception) if c.eval.inception else None
    self.source = source = TokenSource(c.tokens_dir)
    self.tok, step, ident = runs.load_token_model_of(c.tokenizer_workdir)
    tok = self.tok
    runs.check_tokens_match(source.meta, tok, step, ident, c.tokenizer_workdir)
    top_label = max(int(source[i].get("label", 0)) for i in range(min(len(source), 256)))
    if top_label >= c.model.num_classes:
      raise ValueError(f"model.num_classes: the tokens have label {top_label}, expected "
                       f"num_classes > {top_label}, got {c.model.num_classes}")
    self.q_graphdef, self.q_state = nnx.split(tok.quantizer)
    self.tok_dataset = runs.load_config(c.tokenizer_workdir).get("data", {}).get("name", "")
    self.audio = source.meta.get("modality") == "audio"
    if self.audio:
      self.outputs = "audio/"
      if c.eval.inception:
        raise ValueError("eval.inception: gFID / IS are image metrics; expected '' for "
                         "audio-codec tokens")

  def init_state(self):
    return init_state(self.config, self.tok, self.source.meta)

  def train_data(self, batch_size):
    return token_dataset(self.source, batch_size=batch_size, seed=self.config.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())

  def compile(self, graphdef, shardings):
    c = self.config
    spec = StepSpec(c.paradigm, c.model.num_classes, c.train.label_dropout, c.train.ema_decay,
                    c.train.grad_accum_steps, c.train.bit_flip)
    fn = functools.partial(train_step, graphdef=graphdef, quantizer_graphdef=self.q_graphdef,
                           spec=spec)
    return {None: loop.jit_step(fn, c, shardings, self.mesh, num_args=1)}

  def step_args(self):
    return (self.q_state,)

  def units(self, batch):
    return {"tokens": batch["tokens"].size}

  def abstract_batch(self):
    example = FlatTokens().map(self.source[0])  # one example as the input pipeline gives it
    data = parallel.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((self.config.train.batch_size, *np.shape(v)),
                                    np.asarray(v).dtype, sharding=data)
            for k, v in example.items()}

  def periodic(self, graphdef):
    c, s, tok = self.config, self.config.sample, self.tok
    tok_graphdef, self.tok_state = nnx.split(tok)
    meta = self.source.meta
    video = meta.get("modality") == "video"
    self.sample_spec = SampleSpec(c.paradigm, s.cfg_scale, s.temperature, s.top_k, s.top_p,
                                  s.steps, () if self.audio else token_shape(meta), s.schedule,
                                  int(meta.get("latent_frames", 0)), int(meta.get("num_frames", 0)),
                                  self.audio)
    self.graphdef, self.tok_graphdef = graphdef, tok_graphdef
    self.sampler = make_sampler(graphdef, tok_graphdef, self.sample_spec)
    per_class = max(1, s.num // c.model.num_classes)
    # one row per class when the classes fill whole rows (a digits grid: row k shows k's)
    by_row = c.model.num_classes > 1 and s.num % c.model.num_classes == 0
    labels = (jnp.arange(s.num, dtype=jnp.int32) // per_class if by_row
              else jnp.arange(s.num, dtype=jnp.int32) % c.model.num_classes)
    prompt = originals = None
    if self.audio:  # continue the first frames of held-out utterances
      prompts = TokenSource(s.prompts_dir or c.tokens_dir)
      if len(prompts) < s.num:
        raise ValueError(f"sample.num: expected at most the {len(prompts)} prompt records, "
                         f"got {s.num}")
      originals = np.stack([prompts[i]["indices"] for i in range(s.num)]).astype(np.int32)
      frames = int(self.source.meta["frames"])
      if (originals.shape[1:] != (frames, int(self.source.meta["levels"]))
          or not 0 < s.prompt_frames <= frames):
        raise ValueError(f"sample.prompts_dir / prompt_frames: expected records of {frames} "
                         f"frames and 0 < prompt_frames <= {frames}, got records "
                         f"{originals.shape[1:]} and {s.prompt_frames}")
      prompt = jnp.asarray(originals[:, :s.prompt_frames])
    if video and s.prompt_frames:  # frame prediction: continue held-out clips' first frames
      prompts = TokenSource(s.prompts_dir or c.tokens_dir)
      frames = self.sample_spec.frames
      if len(prompts) < s.num or not 0 < s.prompt_frames < frames:
        raise ValueError(f"sample.num / prompt_frames: expected at most the {len(prompts)} "
                         f"prompt records and 0 <= prompt_frames < {frames} latent frames, got "
                         f"{s.num} and {s.prompt_frames}")
      originals = np.stack([prompts[i]["indices"] for i in range(s.num)]).astype(np.int32)
      prompt = jnp.asarray(originals[:, :s.prompt_frames].reshape(  # (B, P[, D])
          s.num, -1, *originals.shape[4:]))
    self.throughput = {}

    def samples(state, step):
      start = time.perf_counter()
      tokens, images = self.sampler(state, self.tok_state, labels,
                                    jax.random.key(c.seed + step), prompt)
      jax.block_until_ready(images)
      seconds = time.perf_counter() - start
      if "compiled" in self.throughput:  # the first call compiles: not a throughput
        self.throughput["tokens_per_second"] = tokens.size / seconds
        self.writer.write(step, {"sample/tokens_per_second": tokens.size / seconds})
      self.throughput["compiled"] = True
      if video:
        if self.main_process:
          self.save_clips(images, originals, step)
      elif self.main_process and prompt is not None:
        save_audio(os.path.join(self.workdir, "audio", f"samples_{step:07d}"),
                   [("original", np.asarray(tok.decode(jnp.asarray(originals)))[..., 0]),
                    ("continued", np.asarray(images)[..., 0])], tok.sample_rate,
                   self.writer, step)
      elif prompt is None:
        pixels = to_pixels(images)
        rows = ([(f"class {k}", pixels[k * per_class:(k + 1) * per_class])
                 for k in range(c.model.num_classes)] if by_row
                else [(f"step {step}", pixels)])
        save_image_grid(self.writer, os.path.join(self.workdir, "images",
                                                  f"samples_{step:07d}.png"),
                        step, "samples", rows)

    self.samples = samples
    return [(s.every, samples)]

  def save_clips(self, images, originals, step: int) -> None:
    """Sampled clips as a frame grid (each under its held-out clip when continued) and a
    GIF of them side by side."""
    clips = to_pixels(images)
    rows = [(f"sample {i}", clip) for i, clip in enumerate(clips)]
    if originals is not None:
      held_out = to_pixels(self.tok.decode(jnp.asarray(originals), self.sample_spec.num_frames))
      rows = [row for i in range(len(clips)) for row in (
          (f"held-out {i}", held_out[i]), (f"continued {i}", clips[i]))]
    path = os.path.join(self.workdir, "images", f"samples_{step:07d}")
    save_image_grid(self.writer, path + ".png", step, "samples", rows)
    save_gif(path + ".gif", clips)

  def evaluate(self, graphdef, state):
    c = self.config
    while "tokens_per_second" not in self.throughput:  # the first call compiles: time a
      self.samples(state, c.train.steps)              # warm one (twice on a finished run)
    summary = {"paradigm": c.paradigm, **{k: float(v) for k, v in self.last_metrics.items()},
               "sample_tokens_per_second": self.throughput.get("tokens_per_second",
                                                               float("nan"))}
    if self.inception_params is not None:
      summary.update(sample_metrics(
          self.sampler, state, self.tok_state, runs.load_config(c.tokenizer_workdir),
          c.model.num_classes, self.inception_params, c.eval.examples, c.eval.batch_size,
          c.seed))
      self.writer.write(c.train.steps, {k: summary[k] for k in ("gfid", "inception_score")})
    if c.eval.digits_examples and self.tok_dataset == "vqlab_digits":
      summary.update(self.digits_metrics(state, self.sampler))
      self.writer.write(c.train.steps, {f"digits/{k}": summary[k] for k in (
          "digits_fid", "precision", "recall", "class_accuracy") if k in summary})
      # the same model sampled with other settings (guidance scales, mask schedules, ...):
      # each metric again as "<metric>@<field>=<value>,..."
      for setting in c.eval.sample_settings:
        spec = dataclasses.replace(self.sample_spec, **setting)
        tag = ",".join(f"{k}={v}" for k, v in setting.items())
        measured = self.digits_metrics(state, make_sampler(self.graphdef, self.tok_graphdef,
                                                           spec))
        summary.update({f"{k}@{tag}": v for k, v in measured.items()})
    return summary

  def digits_metrics(self, state, sampler) -> dict:
    """Digits FID, class accuracy, precision / recall (vqlab/eval/digits.py) and seconds
    per sample (timed after a compiling call) of `c.eval.digits_examples` samples."""
    c = self.config
    fn = lambda y, key: sampler(state, self.tok_state, y, key)[1]
    labels = jnp.arange(c.eval.batch_size, dtype=jnp.int32) % c.model.num_classes
    jax.block_until_ready(fn(labels, jax.random.key(0)))  # compile
    start = time.perf_counter()
    jax.block_until_ready(fn(labels, jax.random.key(1)))
    seconds = (time.perf_counter() - start) / c.eval.batch_size
    return {**evaluators.digits_sample_metrics(fn, c.model.num_classes, c.eval.digits_examples,
                                               c.eval.batch_size, c.seed),
            "sample_seconds": seconds}

  def describe(self, summary):
    fid = (f", gFID {summary['gfid']:.2f}, IS {summary['inception_score']:.2f}"
           if "gfid" in summary else "")
    if "digits_fid" in summary:
      fid += (f", digits FID {summary['digits_fid']:.2f}, class accuracy "
              f"{summary.get('class_accuracy', float('nan')):.1%}, precision "
              f"{summary['precision']:.2f}, recall {summary['recall']:.2f}")
    return (f"{summary['paradigm']}: loss {summary.get('loss', float('nan')):.4f} "
            f"({summary.get('bits_per_token', float('nan')):.3f} bits/token), sampling "
            f"{summary['sample_tokens_per_second']:.0f} tokens/s{fid}")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; with `config.dry_run` only compile and report."""
  return loop.train_job(GeneratorJob(config, workdir))
