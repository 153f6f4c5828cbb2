"""A codec's bitrate ladder from finished runs: quality at every number of residual levels
(mel distance, STOI, PESQ, SI-SDR, WER where measured), as a markdown table per run and
one plot of each metric against kbps; with `--curve`, quality against training steps at
each number of levels (the `ladder/...` scalars a run logs every `log.ladder_every`
steps, and its final evaluation).

  python benchmarks/codec_ladder.py --out docs/codec_ladder.png \\
      --curve docs/codec_curve.png istft=runs/codec seanet=runs/codec_seanet

Each argument is `label=workdir` of a codec run trained to the end (its summary.json holds
the last evaluation; `vqlab eval --workdir` writes the same numbers).
"""

from __future__ import annotations

import argparse
import json
import os

METRICS = (("mel_distance", "mel distance", "{:.3f}"), ("stoi", "STOI", "{:.3f}"),
           ("pesq", "PESQ (wb)", "{:.2f}"), ("si_sdr", "SI-SDR (dB)", "{:.1f}"),
           ("wer", "WER", "{:.0%}"))


def ladder(summary: dict) -> tuple[list[int], list[float], dict[str, list[float]]]:
  """(levels, kbps, {metric: value per number of levels}) for the metrics it has."""
  levels = list(range(1, int(summary["levels"]) + 1))
  kbps = [summary["bitrate@n"][str(n)] / 1000 for n in levels]
  values = {key: [summary[f"{key}@{n}"] for n in levels] for key, _, _ in METRICS
            if all(f"{key}@{n}" in summary for n in levels)}
  return levels, kbps, values


def table(label: str, summary: dict) -> str:
  levels, kbps, values = ladder(summary)
  names = [(key, name, fmt) for key, name, fmt in METRICS if key in values]
  lines = [f"**{label}** (step {summary['step']}; unquantized latent: mel distance "
           f"{summary['mel_distance@unquantized']:.3f}, effective rank "
           f"{summary['latent_rank']:.1f} of {summary['latent_width']})", "",
           "| levels | kbps | " + " | ".join(name for _, name, _ in names) + " |",
           "|---:|---:|" + "---:|" * len(names)]
  for i, n in enumerate(levels):
    cells = [fmt.format(values[key][i]) for key, _, fmt in names]
    lines.append(f"| {n} | {kbps[i]:.1f} | " + " | ".join(cells) + " |")
  if "wer_original" in summary:
    lines.append(f"\nWER of the originals (the recogniser's floor): {summary['wer_original']:.0%}")
  return "\n".join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = [m for m in METRICS if any(m[0] in ladder(s)[2] for s in runs.values())]
  fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0))
  for ax, (key, name, _) in zip(axes, keys):
    for label, summary in runs.items():
      _, kbps, values = ladder(summary)
      if key in values:
        ax.plot(kbps, values[key], marker="o", label=label)
    ax.set_xlabel("kbps")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def curve(workdir: str, summary: dict | None) -> dict[int, dict[str, float]]:
  """{step: {"<metric>@<levels>": value}} from the run's `ladder/` log lines and its
  final evaluation (the last point; none while the run trains)."""
  points: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      values = {k[len("ladder/"):]: v for k, v in record.items() if k.startswith("ladder/")}
      if values:
        points[int(record["step"])] = values
  if summary:
    points[int(summary["step"])] = {k: v for k, v in summary.items()
                                    if "@" in k and isinstance(v, (int, float))}
  return dict(sorted(points.items()))


def levels_of(points: dict[int, dict[str, float]]) -> int:
  return max(int(k.split("@")[1]) for p in points.values() for k in p
             if k.startswith("mel_distance@") and k.split("@")[1].isdigit())


def curve_table(label: str, points: dict[int, dict[str, float]], levels: int) -> str:
  ends = (1, levels)
  names = [(key, name, fmt) for key, name, fmt in METRICS[:4]
           if all(f"{key}@{n}" in p for p in points.values() for n in ends)]
  lines = [f"**{label}**: quality against steps at {ends[0]} / {ends[1]} levels", "",
           "| step | " + " | ".join(f"{name}, {n}" for _, name, _ in names for n in ends) + " |",
           "|---:|" + "---:|" * (2 * len(names))]
  for step, p in points.items():
    lines.append(f"| {step} | " + " | ".join(fmt.format(p[f"{key}@{n}"]) for key, _, fmt in names
                                             for n in ends) + " |")
  return "\n".join(lines)


def plot_curves(curves: dict[str, tuple[dict[int, dict[str, float]], int]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = [m for m in METRICS[:4]
          if any(f"{m[0]}@1" in p for pts, _ in curves.values() for p in pts.values())]
  fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
  for ax, (key, name, _) in zip(axes[0], keys):
    for (label, (points, levels)), style in zip(curves.items(), ("-", "--", ":", "-.")):
      shown = sorted({1, 2, levels // 2, levels})
      for i, n in enumerate(shown):
        steps = [s for s, p in points.items() if f"{key}@{n}" in p]
        ax.plot(steps, [points[s][f"{key}@{n}"] for s in steps], style, marker=".",
                color=plt.cm.viridis(i / max(len(shown) - 1, 1)),
                label=f"{label}: {n} level{'s' if n > 1 else ''}")
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="label=workdir")
  parser.add_argument("--out", help="PNG path of the plot (none: tables only)")
  parser.add_argument("--curve", help="PNG path of quality against steps (runs that logged "
                      "`ladder/` scalars: log.ladder_every)")
  args = parser.parse_args()
  runs, workdirs = {}, {}
  for arg in args.runs:
    label, sep, workdir = arg.partition("=")
    if not sep:
      parser.error(f"expected label=workdir, got {arg!r}")
    workdirs[label] = workdir
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        runs[label] = json.load(f)
    elif not args.curve:  # a run still training has a curve, not yet a ladder
      parser.error(f"{workdir}: no summary.json (not finished); --curve plots its curve")
  for label, summary in runs.items():
    print(table(label, summary) + "\n")
  if args.out and runs:
    plot(runs, args.out)
    print(f"wrote {args.out}")
  if args.curve:
    curves = {}
    for label, workdir in workdirs.items():
      points = curve(workdir, runs.get(label))
      if len(points) > 1:
        curves[label] = (points, levels_of(points))
        print("\n" + curve_table(label, points, curves[label][1]))
    if not curves:
      parser.error("--curve: no run logged `ladder/` scalars (set log.ladder_every)")
    plot_curves(curves, args.curve)
    print(f"wrote {args.curve}")


if __name__ == "__main__":
  main()
