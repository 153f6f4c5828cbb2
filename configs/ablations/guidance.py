"""Classifier-free guidance scale (LlamaGen, Sun et al. 2024, arXiv 2406.06525, Fig. /
Table on CFG; VAR, Tian et al. 2024, arXiv 2404.02905): one raster next-token generator
per seed on the digits chain (trained with 10% label dropout), sampled at guidance scales
1 (none), 1.5, 2, 3 and 5; three seeds.

  vqlab sweep --config configs/ablations/guidance.py --workdir runs/ablations/guidance
"""

from configs.ablations import _digits_chain as chain
from configs.ablations.generators import LABELS
from configs.common import parse_arg, sweep_config

METRICS = ("digits_fid", "class_accuracy", "precision", "recall")


def get_config(arg=None):
  runlocal = "runlocal" in parse_arg(arg)
  seeds, scales = (0, 1, 2), (1.0, 1.5, 2.0, 3.0, 5.0)
  if runlocal:
    seeds, scales = (0,), (1.0, 3.0)
  over = {"eval.sample_settings": [{"cfg_scale": s} for s in scales]}
  run = chain.generator("raster", runlocal, {"model": "raster"}, over, name="raster")
  return sweep_config(
      "Classifier-free guidance scale, raster generator (digits)", run["base"], [run],
      METRICS, seeds=seeds, prepare=chain.prepare(runlocal), prepare_dir=chain.PREPARE_DIR,
      expand=[dict(where={"model": "raster"}, axes={"cfg_scale": list(scales)},
                   metrics={m: m + "@cfg_scale={cfg_scale}" for m in METRICS})],
      plots=[dict(x="cfg_scale", metric="digits_fid"),
             dict(x="cfg_scale", metric="class_accuracy")],
      claims="guidance.claims.toml", labels=LABELS)
