"""Generators on one tokenizer (VAR, Tian et al. 2024, arXiv 2404.02905, Table 1 / Fig. 1;
MaskGIT, Chang et al. 2022, arXiv 2202.04200; LlamaGen-style raster next-token, Sun et al.
2024, arXiv 2406.06525): raster next-token, next-scale (VAR) and masked (MaskGIT)
class-conditional generators of the same width and depth (128 x 4 blocks; VAR's AdaLN
adds parameters) on the digits chain's tokenizers (configs/ablations/_digits_chain.py),
three seeds. Samples are scored by the digits classifier (vqlab/eval/digits.py): FID in
its feature space, class accuracy, precision / recall, and seconds per sample.

  vqlab sweep --config configs/ablations/generators.py --workdir runs/ablations/generators
"""

from configs.ablations import _digits_chain as chain
from configs.common import parse_arg, sweep_config

METRICS = ("digits_fid", "class_accuracy", "precision", "recall", "sample_seconds")
LABELS = {"digits_fid": "digits FID", "class_accuracy": "class acc.",
          "sample_seconds": "s / sample"}


def get_config(arg=None):
  runlocal = "runlocal" in parse_arg(arg)
  seeds = (0,) if runlocal else (0, 1, 2)
  runs = [chain.generator(p, runlocal, {"paradigm": p}) for p in ("raster", "var", "maskgit")]
  return sweep_config(
      "Raster vs next-scale vs masked generators on one digits tokenizer", runs[0]["base"],
      runs, METRICS, seeds=seeds, prepare=chain.prepare(runlocal),
      prepare_dir=chain.PREPARE_DIR, claims="generators.claims.toml", labels=LABELS)
