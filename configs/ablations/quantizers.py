"""The quantizer study over seeds: the eight quantizers of configs/quantizer_study.py
(2^10 codes each, the same conv autoencoder on the built-in digits), three seeds each
(the seed sets init, the train/eval split and the data order).

  vqlab sweep --config configs/ablations/quantizers.py --workdir runs/ablations/quantizers
  vqlab sweep --config configs/ablations/quantizers.py:runlocal --workdir /tmp/q  # seconds
"""

from configs.common import grid, parse_arg, sweep_config
from configs.quantizer_study import quantizer_specs

METRICS = ("mse", "psnr", "usage", "perplexity", "quantization_error", "train_seconds")


def get_config(arg=None):
  variants = parse_arg(arg)
  names = list(quantizer_specs())
  base = "configs/quantizer_study.py"
  seeds = (0, 1, 2)
  if "runlocal" in variants:
    names, base, seeds = ["vq_ste", "fsq"], base + ":runlocal", (0, 1)
  return sweep_config(
      "Quantizers at 2^10 codes on the digits autoencoder", base,
      grid(("quantizer", {n: {"quantizers": n} for n in names})), METRICS, seeds=seeds,
      labels={"mse": "eval MSE", "psnr": "PSNR dB", "usage": "code usage",
              "quantization_error": "quant. error", "train_seconds": "train s"})
