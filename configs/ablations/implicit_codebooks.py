"""Implicit codebooks at scale: LFQ (MAGVIT-v2, Yu et al. 2023, arXiv 2310.05737, Fig. 1)
and BSQ (Zhao et al. 2024, arXiv 2406.07548) at 2^10, 2^14 and 2^18 codes on the study's
digits autoencoder, each with its entropy loss (the study's weights: LFQ 0.1, BSQ zeta 1)
and without it (weight 0), three seeds.

  vqlab sweep --config configs/ablations/implicit_codebooks.py --workdir runs/ablations/implicit
"""

from configs.common import parse_arg, sweep_config, variant

METRICS = ("mse", "usage", "perplexity")
ENTROPY_OFF = {"lfq": {"entropy_weight": 0.0}, "bsq": {"zeta": 0.0}}


def get_config(arg=None):
  variants = parse_arg(arg)
  bits, methods, base, seeds = [10, 14, 18], ("lfq", "bsq"), "configs/quantizer_study.py", (0, 1, 2)
  if "runlocal" in variants:
    bits, methods, base, seeds = [10], ("lfq",), base + ":runlocal", (0, 1)
  runs = []
  for b in bits:
    for m in methods:
      for entropy in ("on", "off"):
        off = ENTROPY_OFF[m] if entropy == "off" else {}
        runs.append(variant({"method": m, "entropy": entropy, "bits": b},
                            {"quantizers": m, f"q.{m}.args.bits": b,
                             **{f"q.{m}.args.{a}": v for a, v in off.items()}}))
  return sweep_config(
      "Implicit codebooks: LFQ / BSQ from 2^10 to 2^18 codes, with and without the entropy "
      "loss (digits autoencoder)", base, runs, METRICS, seeds=seeds,
      claims="implicit_codebooks.claims.toml",
      plots=[dict(x="bits", metric="mse", line="method", where={"entropy": "on"}),
             dict(x="bits", metric="usage", line="entropy", where={"method": "lfq"})],
      labels={"mse": "eval MSE", "usage": "code usage"})
