"""Pieces the config files share: quantizer specs and the tokenizer trainer's fields."""

from collections.abc import Sequence
from typing import Any

import ml_collections

from vqlab import parallel
from vqlab.quantizers import factory


def quantizer_spec(kind: str, **args) -> ml_collections.ConfigDict:
  """`kind` + the arguments of every quantizer kind (`kind`'s defaults, then `args`), so
  that `--config.model.quantizer.kind=fsq` switches kind (the new kind taking its own
  defaults for what the config left at the old one's) and any argument can be set.
  Trainers read it with `factory.spec_args`."""
  unknown = sorted(set(args) - factory.accepted_args(kind))
  if unknown:
    raise ValueError(f"{kind}: unknown arguments {unknown}; expected some of "
                     f"{sorted(factory.accepted_args(kind))}")
  return ml_collections.ConfigDict(
      dict(kind=kind, defaults_of=kind, args={**factory.spec_defaults(kind), **args}),
      type_safe=False)


def parse_arg(arg: str | None, known: Sequence[str] = (), *,
              one_of: Sequence[str] = ()) -> set[str]:
  """The variants of `configs/x.py:variant,runlocal` (comma-separated), checked: each must be
  `runlocal`, one of `known`, or one of `one_of` (of which exactly one is then required).
  An unknown or misspelled variant is an error naming it and listing the known ones (a
  typo must not silently train the default)."""
  names = [a.strip() for a in (arg or "").split(",") if a.strip()]
  allowed = ["runlocal", *known, *one_of]
  unknown = [n for n in names if n not in allowed]
  if unknown:
    raise ValueError(f"config arg: unknown variant {unknown[0]!r} in {arg!r}; expected some "
                     f"of {allowed}")
  if one_of and len([n for n in names if n in one_of]) != 1:
    raise ValueError(f"config arg: expected exactly one of {list(one_of)} (e.g. "
                     f":{one_of[0]} or :{one_of[0]},runlocal), got {arg!r}")
  return set(names)


def tokenizer_config(arch: str, shape: dict, quantizer: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """Every field the tokenizer trainer reads, with taming-transformers' VQGAN defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dry_run = False  # compile the step for the mesh, print memory and FLOPs, train nothing
  c.profile_steps = ()  # (first, last): a jax.profiler trace of those steps (TensorBoard)
  c.model = ml_collections.ConfigDict(dict(arch=arch, shape=shape))
  c.model.quantizer = quantizer
  c.data = ml_collections.ConfigDict(dict(
      name="vqlab_photos", data_dir="~/tensorflow_datasets", train_split="train",
      eval_split="test", image_size=256,
      num_frames=0,  # > 0: clips of this many frames (a video arch, e.g. causal3d)
      min_crop=0, max_crop=0,  # 0: crops of image_size; else random sides, resized
      flip=True,
      in_memory=False,  # decode every record once and keep it (small datasets only)
      threads=16, prefetch=512,  # grain reader threads (per worker), records read ahead
      workers=0))  # > 0: worker processes decode and crop (grain mp_prefetch)
  c.train = ml_collections.ConfigDict(dict(
      steps=100_000, batch_size=32, lr=1e-4, disc_lr=1e-4, b1=0.5, b2=0.9,
      weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip=0.0,
      ema_decay=0.0,  # 0: no EMA of the generator
      compute_dtype="float32",  # or "bfloat16": float32 parameters, bf16 matmuls / convs
      grad_accum_steps=1,  # micro-batches per step (a divisor of batch_size): the large
      # batch's step (VQGAN's adaptive weight included) at one micro-batch's activations
      # a step whose loss or new state is not finite: "stop" the run, or "skip" the update
      # (stopping after max_skips in a row)
      nonfinite="stop", max_skips=20))
  c.loss = ml_collections.ConfigDict(dict(
      recon="l1", recon_weight=1.0, quantizer_weight=1.0,
      perceptual_weight=1.0, lpips_weights="",  # a converted .npz, or "random" (smoke tests)
      gan_loss="hinge", disc_weight=0.8, adaptive_weight=True, disc_start=50_000,
      lecam_weight=0.0, lecam_decay=0.999,
      proxy_weight=0.0))  # TiTok stage 1: cross-entropy on a teacher's codes
  c.disc = ml_collections.ConfigDict(dict(width=64, n_layers=3, norm="batch"))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, min_fsdp_size=2**12,
      # parameters' logical axes -> mesh axes (vqlab/parallel.py); unnamed arrays: FSDP
      rules=parallel.DEFAULT_RULES))
  c.log = ml_collections.ConfigDict(dict(
      every=50, image_every=1000, checkpoint_every=2000, keep_checkpoints=3,
      eval_examples=1000))
  return c


def shrink_for_runlocal(c: ml_collections.ConfigDict, shape: dict) -> None:
  """A few steps of a CPU-sized model on the built-in photos, every loss term on."""
  c.model.shape = shape
  c.data.update(name="vqlab_photos", train_split="train", eval_split="test", image_size=32,
                min_crop=32, max_crop=96, in_memory=True,
                threads=2, prefetch=64)
  c.train.update(steps=2, batch_size=8, warmup_steps=min(c.train.warmup_steps, 1))
  c.loss.update(disc_start=1, lpips_weights="random" if c.loss.perceptual_weight else "")
  c.disc.update(width=16, n_layers=2)
  c.log.update(every=1, image_every=2, checkpoint_every=2, eval_examples=16)


def generator_config(paradigm: str) -> ml_collections.ConfigDict:
  """Every field the generator trainer reads (LlamaGen / VAR / MaskGIT-style defaults)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dry_run = False  # compile the step for the mesh, print memory and FLOPs, train nothing
  c.profile_steps = ()  # (first, last): a jax.profiler trace of those steps (TensorBoard)
  c.paradigm = paradigm  # "raster" (next token), "var" (next scale), "maskgit" (masked)
  c.tokenizer_workdir = ""  # the tokenizer run: its decoder draws samples, VAR uses its quantizer
  c.tokens_dir = ""  # tokens exported from it: vqlab tokens --workdir ... --out ...
  c.model = ml_collections.ConfigDict(dict(
      width=512, depth=12, heads=8, mlp_ratio=4.0, norm="rms", mlp="swiglu", qk_norm="none",
      adaln=False, qkv_bias=False, dropout=0.0, positions="rope2d", num_classes=1000,
      remat="none",  # "block" / "full": recompute each block's activations in backward
      # the output head: "softmax" (one index per position), "bitwise" (an LFQ / BSQ
      # index as its bits: Infinity for raster, MaskBit for maskgit), "depth" (a small
      # transformer over each position's sub-codes: a residual / grouped tokenizer's
      # levels (RQ-Transformer), or one index split into sub-tokens of sub_token_bits
      # bits, the rest last (Open-MAGVIT2: (6,)))
      head="softmax", depth_layers=2, sub_token_bits=(),
      bit_groups=2))  # maskgit + "bitwise" (MaskBit): a token's bits in this many groups
  if paradigm == "var":  # VAR's block: AdaLN, LayerNorm, GELU MLP, l2 QK-norm, q/v biases
    c.model.update(norm="layer", mlp="gelu", qk_norm="l2", adaln=True, qkv_bias=True,
                   positions="learned")
  if paradigm == "maskgit":
    c.model.update(norm="layer", mlp="gelu", positions="learned")
  if paradigm == "delay":  # MusicGen-style: 1D RoPE over steps (`positions` is not read)
    c.model.update(positions="rope1d")
  c.train = ml_collections.ConfigDict(dict(
      steps=100_000, batch_size=256, lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.05,
      warmup_steps=0, schedule="constant", grad_clip=1.0, label_dropout=0.1, ema_decay=0.0,
      compute_dtype="float32",  # or "bfloat16": float32 parameters, bf16 matmuls
      bit_flip=0.0,  # bitwise head: the fraction of input bits flipped (Infinity's
      # bitwise self-correction)
      grad_accum_steps=1,  # micro-batches per step (a divisor of batch_size): their
      # gradients summed give the large batch's, at one micro-batch's activation memory
      # a step whose loss or new state is not finite: "stop" the run, or "skip" the update
      # (stopping after max_skips in a row)
      nonfinite="stop", max_skips=20))
  c.sample = ml_collections.ConfigDict(dict(
      every=5000, num=16, cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, steps=8,
      schedule="cosine",  # masked decoding: "cosine" (MaskGIT), "linear", "square"
      # "delay" (audio): continue the first prompt_frames of records of prompts_dir
      # (default tokens_dir), e.g. tokens of a held-out split; video tokens: continue
      # their first prompt_frames latent frames (0: sample whole clips)
      prompts_dir="", prompt_frames=25))
  c.data = ml_collections.ConfigDict(dict(threads=2, prefetch=64, workers=0))
  # gFID / Inception Score at the end, when converted Inception weights are given
  # (vqlab convert inception); against the tokenizer dataset's eval split
  # digits tokenizers (vqlab_digits): FID in a digits classifier's feature space, class
  # accuracy, precision / recall of this many class-balanced samples (0: off), and again
  # for each of `sample_settings` (dicts of sample fields, e.g. {"cfg_scale": 3.0})
  c.eval = ml_collections.ConfigDict(dict(inception="", examples=10_000, batch_size=50,
                                          digits_examples=1000, sample_settings=()))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, min_fsdp_size=2**12,
      # parameters' logical axes -> mesh axes (vqlab/parallel.py); unnamed arrays: FSDP
      rules=parallel.DEFAULT_RULES))
  c.log = ml_collections.ConfigDict(dict(every=50, checkpoint_every=2000, keep_checkpoints=3))
  return c


def shrink_generator_for_runlocal(c: ml_collections.ConfigDict) -> None:
  c.model.update(width=32, depth=2, heads=4, mlp_ratio=2.0)
  c.train.update(steps=2, batch_size=8, warmup_steps=min(c.train.warmup_steps, 1))
  c.sample.update(every=2, num=4, steps=2)
  c.eval.digits_examples = 0  # no digits-classifier metrics in smoke runs
  c.log.update(every=1, checkpoint_every=2)


def variant(axes: dict[str, Any], overrides: dict[str, Any], name: str | None = None,
            base: str = "") -> dict:
  """One variant of a sweep: its values on the swept axes and the base-config fields it
  sets (`dotted.path: value`); named by its axis values joined with '-' unless named; its
  own `base` config file when it is not the sweep's."""
  return {"name": name or "-".join(str(v) for v in axes.values()), "axes": dict(axes),
          "overrides": dict(overrides), "base": base}


def grid(*axes: tuple[str, dict[Any, dict[str, Any]]]) -> list[dict]:
  """Every combination of the axes, each (axis name, {value: overrides}); overrides of
  later axes win."""
  out = [variant({}, {})]
  for name, values in axes:
    out = [variant({**v["axes"], name: value}, {**v["overrides"], **over})
           for v in out for value, over in values.items()]
  return out


def sweep_config(title: str, base: str, variants: list[dict], metrics: Sequence[str], *,
                 seeds: Sequence[int] = (0, 1, 2), overrides: dict[str, Any] | None = None,
                 plots: Sequence[dict] = (), claims: str = "", expand: Sequence[dict] = (),
                 prepare: Sequence[dict] = (), prepare_dir: str = "",
                 labels: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """What `vqlab sweep` reads (vqlab/train/sweep.py); `overrides` go into every variant
  (under its own)."""
  variants = [{**v, "overrides": {**(overrides or {}), **v["overrides"]}} for v in variants]
  return ml_collections.ConfigDict(dict(
      title=title, base=base, variants=variants, metrics=list(metrics), seeds=tuple(seeds),
      plots=list(plots), claims=claims, expand=list(expand), prepare=list(prepare),
      prepare_dir=prepare_dir, labels=dict(labels or {})),
      type_safe=False)
