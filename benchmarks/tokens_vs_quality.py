"""Reconstruction against the number of tokens, from finished tokenizer runs: one row per
run (tokens per image, held-out PSNR / SSIM / code usage from its summary.json, the
training batches' PSNR at the end from its metrics.jsonl), and for
the 1D runs (TiTok) PSNR from only the first k tokens, as a table and a plot.

  python benchmarks/tokens_vs_quality.py --out docs/titok_prefixes.png \\
      2d=runs/quickstart k32=runs/titok k64=runs/titok_k64 k128=runs/titok_k128 \\
      ordered=runs/titok_ordered --grid ordered=docs/titok_ordered_prefixes.png

Each argument is `label=workdir` of a run trained to the end (its summary.json holds the
last evaluation; `vqlab eval --workdir` writes the same numbers). Prints markdown tables;
the README quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from vqlab.data.pipeline import iterate
from vqlab.eval import ablation
from vqlab.train import evaluators, runs
from vqlab.train.common import labeled_grid, read_jsonl, to_pixels, to_unit


def tokens_per_image(workdir: str) -> int:
  return math.prod(runs.load_tokenizer(workdir).token_shape)


def last_training_psnr(workdir: str, rows: int = 4) -> float:
  """The mean training-batch PSNR of the last `rows` logged steps: against the held-out
  PSNR, how much of the quality is memorised (the built-in photos are 8 images)."""
  logged = [r["psnr"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "loss" in r and "psnr" in r]
  return sum(logged[-rows:]) / len(logged[-rows:])


def prefix_grid(workdir: str, path: str, examples: int = 8) -> None:
  """Held-out crops (top row) and their decodes from the first k tokens, k = 1, 2, 4, ...
  K, one row each, of a 1D tokenizer run."""
  config, model = runs.load_config(workdir), runs.load_tokenizer(workdir)
  if len(model.token_shape) != 1:
    raise SystemExit(f"{workdir}: --grid needs a 1D tokenizer (tokens {model.token_shape})")
  ds = runs.datasets(config, config.data.eval_split, train=False, batch_size=examples,
                     num_examples=examples)
  x = to_unit(next(iterate(ds, threads=0))["image"])
  indices = model.encode(x).indices
  rows = [("held-out", to_pixels(x))]
  for k in evaluators.prefix_lengths(model.token_shape[0]):
    rows.append((f"first {k}", to_pixels(model.decode(indices[:, :k]))))
  labeled_grid(rows).save(path)
  print(f"wrote {path}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("runs", nargs="+", help="label=workdir")
  p.add_argument("--out", default="", help="plot of PSNR against the tokens kept (.png)")
  p.add_argument("--grid", default="", help="LABEL=PATH.png: that run's prefix decodes")
  args = p.parse_args(argv)
  table = ["| run | tokens | held-out PSNR | SSIM | code usage | training-batch PSNR |",
           "|---|---:|---:|---:|---:|---:|"]
  prefix_rows = []
  for item in args.runs:
    label, _, workdir = item.partition("=")
    if not workdir:
      raise SystemExit(f"{item!r}: expected label=workdir")
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
      raise SystemExit(f"{workdir}: no summary.json (the run has not finished)")
    s = json.load(open(path))
    table.append(f"| {label} | {tokens_per_image(workdir)} | {s['psnr']:.2f} dB | "
                 f"{s['ssim']:.3f} | {s['usage']:.1%} | {last_training_psnr(workdir):.2f} dB |")
    for k, v in s.get("psnr_at_tokens", {}).items():
      prefix_rows.append({"axes": {"run": label, "tokens kept": int(k)},
                          "psnr": {"mean": v, "std": float("nan")}})
  print("\n".join(table))
  if prefix_rows:
    labels = list(dict.fromkeys(r["axes"]["run"] for r in prefix_rows))
    ks = sorted({r["axes"]["tokens kept"] for r in prefix_rows})
    value = {(r["axes"]["run"], r["axes"]["tokens kept"]): r["psnr"]["mean"]
             for r in prefix_rows}
    print("\nPSNR (dB) decoding only the first k tokens:\n")
    print("| run | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for label in labels:
      print(f"| {label} | " + " | ".join(
          f"{value[label, k]:.2f}" if (label, k) in value else "" for k in ks) + " |")
    if args.out:
      ablation.plot(prefix_rows, "tokens kept", "psnr", "run", args.out, log2_x=True,
                    title="1D tokens: decoding a prefix", ylabel="held-out PSNR (dB)")
      print(f"\nwrote {args.out}")
  if args.grid:
    label, _, path = args.grid.partition("=")
    workdirs = dict(item.partition("=")[::2] for item in args.runs)
    if label not in workdirs or not path:
      raise SystemExit(f"--grid {args.grid!r}: expected LABEL=PATH.png with a LABEL of the runs")
    prefix_grid(workdirs[label], path)


if __name__ == "__main__":
  main()
