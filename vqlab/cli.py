"""The `vqlab` command: `vqlab <job> --config configs/<job>.py --workdir DIR [--config.x=...]`."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "train": ("vqlab.train.tokenizer", "train an image tokenizer (VQGAN / ViT-VQGAN) from a "
              "config; resumes from its workdir"),
    "eval": ("vqlab.train.tokenizer_eval", "reconstruct a split with a trained tokenizer: "
             "PSNR, SSIM, code usage, perplexity"),
    "tokens": ("vqlab.train.export_tokens", "export a dataset's tokens to array_record files"),
    "generate": ("vqlab.train.generator", "train a token generator (next-token, next-scale "
                 "or masked) on exported tokens; samples decoded by the tokenizer"),
    "codec": ("vqlab.train.codec", "train a SoundStream / EnCodec-style audio codec "
              "(SEANet + residual VQ) on speech; resumes from its workdir"),
    "study": ("vqlab.train.quantizer_study", "train a conv autoencoder per quantizer on "
              "the built-in digits and compare them"),
}


def usage() -> str:
  lines = ["usage: vqlab <job> --config CONFIG [--workdir DIR] [--config.field=value ...]", "",
           "jobs:"]
  lines += [f"  {name:8s} {help_}" for name, (_, help_) in JOBS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  job = argv[1]
  if job not in JOBS:
    print(f"vqlab: unknown job {job!r}; expected one of {sorted(JOBS)}\n\n{usage()}",
          file=sys.stderr)
    sys.exit(2)
  from vqlab import distributed
  distributed.initialize()  # multi-process jobs join here, before any computation
  importlib.import_module(JOBS[job][0]).main([f"vqlab {job}"] + argv[2:])


if __name__ == "__main__":
  main()
