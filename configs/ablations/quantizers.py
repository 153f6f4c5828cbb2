"""The quantizer study over seeds: the eight quantizers of configs/quantizer_study.py
(2^10 codes each, the same conv autoencoder on the built-in digits), three seeds each
(the seed sets init, the train/eval split and the data order).

  vqlab sweep --config configs/ablations/quantizers.py --workdir runs/ablations/quantizers
  vqlab sweep --config configs/ablations/quantizers.py:runlocal --workdir /tmp/q  # seconds
"""

from configs.common import grid, parse_arg, sweep_config
from configs.quantizer_study import quantizer_specs

# quantization_error is left out: (q - z)^2 is in each family's own latent scale (FSQ's z
# is unbounded before its tanh), so it does not compare across quantizers
METRICS = ("mse", "psnr", "usage", "perplexity", "train_seconds")
NAMES = ("vq_ste", "vq_rotation", "vq_ema_restart", "simvq", "fsq", "lfq", "bsq", "rvq")


def get_config(arg=None):
  variants = parse_arg(arg)
  names = list(NAMES)
  assert set(names) == set(quantizer_specs()), "NAMES: the study's quantizers"
  base = "configs/quantizer_study.py"
  seeds = (0, 1, 2)
  if "runlocal" in variants:
    names, base, seeds = ["vq_ste", "fsq"], base + ":runlocal", (0, 1)
  return sweep_config(
      "Quantizers at 2^10 codes on the digits autoencoder", base,
      grid(("quantizer", {n: {"quantizers": n} for n in names})), METRICS, seeds=seeds,
      labels={"mse": "eval MSE", "psnr": "PSNR dB", "usage": "code usage",
              "train_seconds": "train s"})
