"""The quantizer study: one small conv autoencoder on the built-in MNIST digits per
quantizer, at a matched codebook size of 2^10 codes, each trained the same way.

  vqlab study --config configs/quantizer_study.py --workdir runs/study
  vqlab study --config configs/quantizer_study.py:runlocal --workdir /tmp/s   # seconds
  --config.train.steps=1000 --config.quantizers=fsq,lfq --config.q.lfq.args.entropy_weight=0.2
"""

import ml_collections

from configs.common import parse_arg, quantizer_spec as spec
from vqlab import parallel


def quantizer_specs() -> ml_collections.ConfigDict:
  """One spec per quantizer of the study; 2^10 codes each."""
  return ml_collections.ConfigDict(dict(
      vq_ste=spec("vq", codebook_size=1024),
      vq_rotation=spec("vq", codebook_size=1024, estimator="rotation"),
      vq_ema_restart=spec("vq", codebook_size=1024, codebook="ema", kmeans_init=True,
                          dead_code_threshold=0.5),
      simvq=spec("vq", codebook_size=1024, codebook="projected"),
      fsq=spec("fsq", levels=[8, 5, 5, 5]),  # 1,000 codes, the FSQ paper's 2^10 setting
      lfq=spec("lfq", bits=10),
      bsq=spec("bsq", bits=10),
      rvq=spec("rvq", codebook_size=32, num_levels=2),  # 32^2 = 2^10
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, the train/eval split and the order of the training digits
  c.dry_run = False  # compile each quantizer's step, print memory and FLOPs, train nothing
  c.profile_steps = ()  # (first, last): a jax.profiler trace of those steps (TensorBoard)
  c.quantizers = "vq_ste,vq_rotation,vq_ema_restart,simvq,fsq,lfq,bsq,rvq"  # names in q
  c.q = quantizer_specs()  # name -> quantizer spec (kind + every argument of every kind)
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=16,  # channels of the 8x8 latent grid the quantizer sees
      width=32))  # conv channels of the autoencoder
  c.train = ml_collections.ConfigDict(dict(
      steps=300, batch_size=32, lr=2e-3,  # plain Adam
      compute_dtype="float32",  # or "bfloat16" (the quantizers stay float32)
      # a step whose loss or new state is not finite: "stop" the run, or "skip" the update
      # (stopping after max_skips in a row)
      nonfinite="stop", max_skips=20))
  c.data = ml_collections.ConfigDict(dict(
      eval_size=500,  # held-out digits (of the 5,000)
      threads=0, prefetch=0, workers=0))  # in memory: no reader threads needed
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, min_fsdp_size=2**12, rules=parallel.DEFAULT_RULES))
  c.log = ml_collections.ConfigDict(dict(every=50, checkpoint_every=100, keep_checkpoints=2))
  if "runlocal" in variants:
    c.train.update(steps=3, batch_size=8)
    c.data.eval_size = 32
    c.model.width = 16
    c.log.update(every=1, checkpoint_every=2)
  return c
