"""Codebook size, VQ vs FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple", arXiv 2309.15505, Fig. 3-4): 2^6 .. 2^14 codes, the digits autoencoder of
configs/quantizer_study.py, three seeds. VQ is the study's learned codebook with the
straight-through estimator and commitment loss (beta 0.25); FSQ's levels are the paper's
recommended ones for each size (its Table 3; [8, 8] for 2^6).

  vqlab sweep --config configs/ablations/codebook_size.py --workdir runs/ablations/codebook_size
"""

from configs.common import parse_arg, sweep_config, variant

# codebook size -> FSQ levels (FSQ paper, Table 3)
FSQ_LEVELS = {2**6: (8, 8), 2**8: (8, 6, 5), 2**10: (8, 5, 5, 5), 2**12: (7, 5, 5, 5, 5),
              2**14: (8, 8, 8, 6, 5)}
METRICS = ("mse", "usage", "perplexity", "codebook_size")


def get_config(arg=None):
  variants = parse_arg(arg)
  sizes, base, seeds = list(FSQ_LEVELS), "configs/quantizer_study.py", (0, 1, 2)
  if "runlocal" in variants:
    sizes, base, seeds = [2**6], base + ":runlocal", (0, 1)
  runs = []
  for k in sizes:
    runs.append(variant({"method": "vq", "codebook_size": k},
                        {"quantizers": "vq_ste", "q.vq_ste.args.codebook_size": k}))
    runs.append(variant({"method": "fsq", "codebook_size": k},
                        {"quantizers": "fsq", "q.fsq.args.levels": FSQ_LEVELS[k]}))
  return sweep_config(
      "Codebook size: VQ vs FSQ (digits autoencoder)", base, runs, METRICS, seeds=seeds,
      claims="codebook_size.claims.toml",
      plots=[dict(x="codebook_size", metric="usage", line="method", log2_x=True),
             dict(x="codebook_size", metric="mse", line="method", log2_x=True)],
      labels={"mse": "eval MSE", "usage": "code usage", "codebook_size": "codes"})
