"""The quantizer study: one small conv autoencoder on the built-in MNIST digits per
quantizer, at a matched codebook size of 2^10 codes, each trained the same way.

  vqlab study --config configs/quantizer_study.py --workdir runs/study
  vqlab study --config configs/quantizer_study.py:runlocal --workdir /tmp/s   # seconds
  --config.steps=1000 --config.quantizers=fsq,lfq --config.q.lfq.args.entropy_weight=0.2
"""

import ml_collections

from configs.common import quantizer_spec as spec, runlocal


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
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.steps = 300
  config.batch_size = 32
  config.lr = 2e-3
  config.latent_dim = 16
  config.width = 32
  config.eval_size = 500
  config.log_every = 50
  config.quantizers = "vq_ste,vq_rotation,vq_ema_restart,simvq,fsq,lfq,bsq,rvq"
  config.q = quantizer_specs()
  if runlocal(arg):
    config.steps = 3
    config.batch_size = 8
    config.eval_size = 32
    config.width = 16
    config.log_every = 1
  return config
