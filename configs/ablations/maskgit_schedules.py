"""MaskGIT mask schedules and decoding steps (Chang et al. 2022, arXiv 2202.04200, Sec.
3.2 and Fig. 8): one masked generator per seed on the digits chain (the generator
ablation's MaskGIT, configs/ablations/_digits_chain.py), sampled with the cosine, linear
and square schedules at 4, 8 and 16 steps; three seeds.

  vqlab sweep --config configs/ablations/maskgit_schedules.py --workdir runs/ablations/maskgit
"""

import itertools

from configs.ablations import _digits_chain as chain
from configs.ablations.generators import LABELS
from configs.common import parse_arg, sweep_config

METRICS = ("digits_fid", "class_accuracy", "precision", "recall", "sample_seconds")


def get_config(arg=None):
  runlocal = "runlocal" in parse_arg(arg)
  seeds, schedules, steps = (0, 1, 2), ("cosine", "linear", "square"), (4, 8, 16)
  if runlocal:
    seeds, schedules, steps = (0,), ("cosine", "linear"), (2,)
  settings = [{"schedule": s, "steps": n} for s, n in itertools.product(schedules, steps)]
  over = {"eval.sample_settings": settings}
  run = chain.generator("maskgit", runlocal, {"model": "maskgit"}, over, name="maskgit")
  metrics = {m: m + "@schedule={schedule},steps={steps}" for m in METRICS}
  return sweep_config(
      "MaskGIT: mask schedule x decoding steps (digits)", run["base"], [run], METRICS,
      seeds=seeds, prepare=chain.prepare(runlocal), prepare_dir=chain.PREPARE_DIR,
      expand=[dict(where={"model": "maskgit"},
                   axes={"schedule": list(schedules), "steps": list(steps)}, metrics=metrics)],
      plots=[dict(x="steps", metric="digits_fid", line="schedule", log2_x=True)],
      claims="maskgit_schedules.claims.toml", labels=LABELS)
