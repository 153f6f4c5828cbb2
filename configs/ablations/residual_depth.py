"""Residual depth and quantizer dropout (SoundStream, Zeghidour et al. 2021, arXiv
2107.03312, Fig. 5 / Sec. 3.3) on the digits autoencoder of configs/quantizer_study.py:
one 8-level residual VQ (64 codes a level) trained with quantizer dropout and decoded with
1, 2, 4 and 8 levels, against RVQs trained at each of those fixed depths; three seeds.
(The audio codec's bitrate ladder is the audio issue's; `vqlab eval` on a codec run
already reports every level.)

  vqlab sweep --config configs/ablations/residual_depth.py --workdir runs/ablations/residual_depth
"""

from configs.common import parse_arg, sweep_config, variant

METRICS = ("mse",)  # usage is joint over levels up to 2^20 codes, per level beyond: not comparable across depths


def get_config(arg=None):
  variants = parse_arg(arg)
  depths, base, seeds = [1, 2, 4, 8], "configs/quantizer_study.py", (0, 1, 2)
  if "runlocal" in variants:
    depths, base, seeds = [1, 2], base + ":runlocal", (0, 1)
  rvq = {"quantizers": "rvq", "q.rvq.args.codebook_size": 64}
  runs = [variant({"method": "fixed", "levels": n}, {**rvq, "q.rvq.args.num_levels": n})
          for n in depths]
  runs.append(variant({"method": "dropout"}, {**rvq, "q.rvq.args.num_levels": max(depths),
                                              "q.rvq.args.quantizer_dropout": True},
                      name="dropout"))
  return sweep_config(
      "Residual depth: one quantizer-dropout RVQ vs one RVQ per depth (digits autoencoder, "
      "64 codes a level)", base, runs, METRICS, seeds=seeds, claims="residual_depth.claims.toml",
      # the dropout model decoded with n levels is its row at levels = n
      expand=[dict(where={"method": "dropout"}, axes={"levels": depths},
                   metrics={"mse": "mse_levels{levels}"})],
      plots=[dict(x="levels", metric="mse", line="method", log2_x=True)],
      labels={"mse": "eval MSE"})
