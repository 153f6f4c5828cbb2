"""Codebook collapse at large codebooks: the study's digits autoencoder at 2^14 codes
(`:with_65536` adds 2^16), three seeds, with
- vq: a learned codebook and straight-through gradients (the baseline that collapses);
- simvq: codes = a frozen random basis times one learned linear map (SimVQ, Zhu et al.
  2024, arXiv 2411.02038);
- ema_restart: EMA codebook, k-means init and dead-code restarts (VQGAN-LC's
  initialisation spirit, Zhu et al. 2024, arXiv 2406.11837; SoundStream / Jukebox restarts);
- factorized: 8-d l2-normalised codes looked up by cosine (ViT-VQGAN, Yu et al. 2021,
  arXiv 2110.04627);
- ibq: index backpropagation (IBQ, Shi et al. 2024, arXiv 2412.02692).

  vqlab sweep --config configs/ablations/collapse.py --workdir runs/ablations/collapse
"""

from configs.common import parse_arg, sweep_config, variant

METHODS = {
    "vq": {},
    "simvq": {"codebook": "projected"},
    "ema_restart": {"codebook": "ema", "kmeans_init": True, "dead_code_threshold": 0.5},
    "factorized": {"metric": "cosine", "code_dim": 8},
    "ibq": {"estimator": "ibq"},
}
METRICS = ("mse", "usage", "perplexity")


def get_config(arg=None):
  variants = parse_arg(arg, known=("with_65536",))
  sizes, methods, base, seeds = [2**14], list(METHODS), "configs/quantizer_study.py", (0, 1, 2)
  if "with_65536" in variants:  # 2^16 codes too: ~5 min a run on 2 CPU cores
    sizes.append(2**16)
  if "runlocal" in variants:
    sizes, methods, base, seeds = [2**14], ["vq", "simvq"], base + ":runlocal", (0, 1)
  runs = [variant({"method": m, "codebook_size": k},
                  {"q.vq_ste.args.codebook_size": k,
                   **{f"q.vq_ste.args.{a}": v for a, v in METHODS[m].items()}})
          for k in sizes for m in methods]
  return sweep_config(
      "Codebook collapse at large codebooks (digits autoencoder)", base, runs, METRICS,
      seeds=seeds, overrides={"quantizers": "vq_ste"}, claims="collapse.claims.toml",
      plots=[dict(x="codebook_size", metric="usage", line="method", log2_x=True)]
      if len(sizes) > 1 else [],
      labels={"mse": "eval MSE", "usage": "code usage"})
