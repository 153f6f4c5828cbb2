"""Gradient estimators at one codebook (Fifty et al. 2024, "Restructuring Vector
Quantization with the Rotation Trick", arXiv 2410.06424, Tables 1-2; IBQ, Shi et al.
2024, arXiv 2412.02692; Gumbel-softmax, Jang et al. 2016, arXiv 1611.01144): the study's
learned 2^10-code VQ on the digits autoencoder, trained with straight-through, the
rotation trick, index backpropagation and Gumbel-softmax gradients, three seeds.

  vqlab sweep --config configs/ablations/estimators.py --workdir runs/ablations/estimators
"""

from configs.common import grid, parse_arg, sweep_config

METRICS = ("mse", "usage", "perplexity", "quantization_error")


def get_config(arg=None):
  variants = parse_arg(arg)
  estimators, base, seeds = ["ste", "rotation", "ibq", "gumbel"], "configs/quantizer_study.py", (0, 1, 2)
  if "runlocal" in variants:
    estimators, base, seeds = ["ste", "rotation"], base + ":runlocal", (0, 1)
  return sweep_config(
      "Gradient estimators: learned VQ, 2^10 codes (digits autoencoder)", base,
      grid(("estimator", {e: {"q.vq_ste.args.estimator": e} for e in estimators})),
      METRICS, seeds=seeds, overrides={"quantizers": "vq_ste"},
      claims="estimators.claims.toml",
      labels={"mse": "eval MSE", "usage": "code usage", "quantization_error": "quant. error"})
