"""Generator heads for tokens one softmax cannot hold, on the digits chain
(configs/ablations/_digits_chain.py; the same raster transformer, 128 wide, 4 blocks, 600
steps, as the generator ablation): RQ-Transformer's depth head on a 4-level residual VQ
(Lee et al. 2022, arXiv 2203.01941) and, the cheaper alternative, MusicGen's delay pattern
over its levels (Copet et al. 2023, arXiv 2306.05284; 1D RoPE over raster steps); on one LFQ tokenizer of 2^16 codes (MAGVIT-v2,
arXiv 2310.05737): a full softmax over the 2^16 codes, Infinity's bitwise head with and
without its bitwise self-correction (Han et al. 2024, arXiv 2412.04431, sec. 3.2; 10% of
the input bits flipped) and Open-MAGVIT2's asymmetric sub-tokens (Luo et al. 2024, arXiv
2409.04410; 2^6 then 2^10); and MaskBit's masked bit modelling (Weber et al. 2024, arXiv
2409.16211; two groups of 8 bits, MaskGIT's decoding as the generator ablation's). Three
seeds; a measurement of what each head's samples score, not a test of a paper's claim (no
claims file).

  vqlab sweep --config configs/ablations/generator_heads.py --workdir runs/ablations/generator_heads
"""

from configs.ablations import _digits_chain as chain
from configs.ablations.generators import LABELS, METRICS
from configs.common import parse_arg, sweep_config

HEADS = (  # (tokens, head, paradigm, tokenizer, config variants, overrides)
    ("rvq-4x1024", "depth", "raster", "rvq", "rq", {}),
    ("rvq-4x1024", "delay", "delay", "rvq", "", {}),
    ("lfq-65536", "softmax", "raster", "lfq", "", {}),
    ("lfq-65536", "bitwise", "raster", "lfq", "bitwise", {}),
    ("lfq-65536", "bitwise-flip", "raster", "lfq", "bitwise", {"train.bit_flip": 0.1}),
    ("lfq-65536", "factorized", "raster", "lfq", "factorized", {}),
    ("lfq-65536", "maskbit", "maskgit", "lfq", "bitwise", {}),
)


def get_config(arg=None):
  runlocal = "runlocal" in parse_arg(arg)
  runs = [chain.generator(paradigm, runlocal, {"tokens": tokens, "head": head}, over,
                          tokenizer=tok, heads=heads)
          for tokens, head, paradigm, tok, heads, over in HEADS
          if not runlocal or head == "bitwise"]  # the smoke run: one tokenizer, one head
  return sweep_config(
      "Generator heads: depth (RQ), full softmax, bitwise, factorized, MaskBit (digits)",
      runs[0]["base"], runs, METRICS, seeds=(0,) if runlocal else (0, 1, 2),
      prepare=chain.prepare(runlocal, tokenizers=("lfq",) if runlocal else ("rvq", "lfq")),
      prepare_dir=chain.PREPARE_DIR, labels=LABELS)
