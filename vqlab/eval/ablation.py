"""Aggregate an ablation's runs: mean, standard deviation and 95% interval over seeds per
variant, tables (markdown, CSV), plots (a metric against a swept axis, one line per
method, error bars), and verdicts on the claims the ablation tests.

Records are plain dicts, one per finished run: {"variant": name, "axes": {axis: value},
"seed": k, "metrics": {name: number}}. Nothing here knows about files of runs or jobs.

A claim (a dict, from the ablation's claims file) states an ordering the paper reports:

  {"test": "greater", "metric": "usage", "a": {"method": "fsq"}, "b": {"method": "vq"},
   "for_each": "codebook_size"}                  # a > b (at every value of the axis)
  {"test": "trend", "metric": "usage", "within": {"method": "vq"}, "axis": "codebook_size",
   "direction": "decreasing"}                   # last value < first value of the axis
  {"test": "at_least", "metric": "usage", "within": {"method": "fsq"}, "value": 0.5}
  {"test": "ratio_at_most", "metric": "mse", "a": {"method": "dropout"},
   "b": {"method": "fixed"}, "for_each": "levels", "value": 1.2}   # a / b <= 1.2

Each comparison is of 95% intervals of the mean over seeds: reproduced when they do not
overlap and the order is the claimed one, not reproduced when they do not overlap and the
order is the opposite, inconclusive when they overlap (or fewer than 2 seeds). A claim
over several comparisons (`for_each`) is reproduced when all are, not reproduced when any
is, else inconclusive. `lower_is_better` metrics are not flipped: a claim names the
direction of the number itself ("greater" mse means worse).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); the normal's beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
TESTS = ("greater", "less", "trend", "at_least", "at_most", "ratio_at_most")


def t_quantile(df: int) -> float:
  """The 97.5% quantile of Student's t with `df` degrees of freedom."""
  if df < 1:
    raise ValueError(f"df: expected >= 1, got {df}")
  return _T975[df - 1] if df <= len(_T975) else 1.960


def summarize(values: Sequence[float]) -> dict[str, float]:
  """n, mean, sample standard deviation and the half-width of the 95% t-interval of the
  mean (NaN for one value: one seed says nothing about the spread)."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  n = len(x)
  if n == 0:
    return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan, "values": []}
  std = float(np.std(x, ddof=1)) if n > 1 else math.nan
  ci = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
  return {"n": n, "mean": float(np.mean(x)), "std": std, "ci95": ci,
          "values": [float(v) for v in x]}


def aggregate(records: Sequence[dict], metrics: Sequence[str]) -> list[dict[str, Any]]:
  """One row per variant (in the order first seen): its axes, seeds, and `summarize` of
  each metric over its seeds."""
  rows: dict[str, dict] = {}
  for r in records:
    row = rows.setdefault(r["variant"], {"variant": r["variant"], "axes": dict(r["axes"]),
                                         "seeds": [], "values": {m: [] for m in metrics}})
    row["seeds"].append(r["seed"])
    for m in metrics:
      v = r["metrics"].get(m)
      row["values"][m].append(None if v is None or not math.isfinite(v) else float(v))
  out = []
  for row in rows.values():
    out.append({"variant": row["variant"], "axes": row["axes"], "seeds": sorted(row["seeds"]),
                **{m: summarize(vals) for m, vals in row["values"].items()}})
  return out


def expand(records: Sequence[dict], rules: Sequence[dict]) -> list[dict]:
  """Records of one run measured at several settings (one quantizer-dropout model decoded
  with 1 .. 8 residual levels; one generator sampled at several guidance scales) as one
  record per setting. A rule {"where": axes, "axes": {"levels": [1, 2, 4]}, "metrics":
  {"mse": "mse_levels{levels}"}} replaces each record `where` matches by one per
  combination of the rule's axes, with those axes set and each metric read from the
  summary name its template gives."""
  out = []
  for r in records:
    rule = next((u for u in rules if all(_same(r["axes"].get(k), v)
                                         for k, v in u["where"].items())), None)
    if rule is None:
      out.append(r)
      continue
    names = list(rule["axes"])
    for values in itertools.product(*(rule["axes"][n] for n in names)):
      setting = dict(zip(names, values))
      metrics = {m: r["metrics"].get(src.format(**setting)) for m, src in rule["metrics"].items()}
      if all(v is None for v in metrics.values()):
        continue  # not measured at this setting
      out.append({**r, "variant": r["variant"] + "@" + ",".join(f"{k}{v}" for k, v in
                                                                setting.items()),
                  "axes": {**r["axes"], **setting}, "metrics": metrics})
  return out


def _fmt(s: dict, digits: int) -> str:
  if s["n"] == 0:
    return "-"
  if s["n"] == 1 or not math.isfinite(s["std"]):
    return f"{s['mean']:.{digits}g}"
  return f"{s['mean']:.{digits}g} ± {s['std']:.2g}"


def markdown_table(rows: Sequence[dict], axes: Sequence[str], metrics: Sequence[str],
                   labels: dict[str, str] | None = None, digits: int = 4) -> str:
  """Mean ± standard deviation over seeds (n seeds in its column)."""
  labels = labels or {}
  head = [*axes, "seeds", *(labels.get(m, m) for m in metrics)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(axes) + "---:|" * (1 + len(metrics))]
  for r in rows:
    cells = [str(r["axes"].get(a, "")) for a in axes] + [str(len(r["seeds"]))]
    cells += [_fmt(r[m], digits) for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def csv_table(rows: Sequence[dict], axes: Sequence[str], metrics: Sequence[str]) -> str:
  out = io.StringIO()
  w = csv.writer(out)
  w.writerow([*axes, "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95"))])
  for r in rows:
    w.writerow([r["axes"].get(a, "") for a in axes] + [len(r["seeds"])]
               + [r[m][s] for m in metrics for s in ("mean", "std", "ci95")])
  return out.getvalue()


def select(rows: Sequence[dict], where: dict | None) -> list[dict]:
  """The rows whose axes have every value of `where` (a list: any of its values)."""
  where = where or {}
  match = lambda a, v: any(_same(a, x) for x in v) if isinstance(v, (list, tuple)) else _same(a, v)
  return [r for r in rows if all(match(r["axes"].get(k), v) for k, v in where.items())]


def _same(a, b) -> bool:
  return str(a) == str(b)


def interval(s: dict) -> tuple[float, float]:
  if s["n"] < 2 or not math.isfinite(s["ci95"]):
    return (-math.inf, math.inf)  # one seed: no interval, nothing can be concluded
  return (s["mean"] - s["ci95"], s["mean"] + s["ci95"])


def compare(a: dict, b: dict) -> str:
  """Verdict on "a's mean > b's mean" from their 95% intervals."""
  (alo, ahi), (blo, bhi) = interval(a), interval(b)
  if alo > bhi:
    return REPRODUCED
  if ahi < blo:
    return NOT_REPRODUCED
  return INCONCLUSIVE


def ratio_at_most(a: dict, b: dict, bound: float) -> tuple[str, float, float]:
  """Verdict on "a / b <= bound" (positive metrics), with the ratio's range from the two
  intervals."""
  (alo, ahi), (blo, bhi) = interval(a), interval(b)
  lo = alo / bhi if bhi > 0 and math.isfinite(bhi) else -math.inf
  hi = ahi / blo if blo > 0 and math.isfinite(ahi) else math.inf
  verdict = REPRODUCED if hi <= bound else NOT_REPRODUCED if lo > bound else INCONCLUSIVE
  return verdict, lo, hi


def combine(verdicts: Sequence[str]) -> str:
  if not verdicts:
    return INCONCLUSIVE
  if NOT_REPRODUCED in verdicts:
    return NOT_REPRODUCED
  return REPRODUCED if all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def _one(rows, where, what) -> dict | None:
  """The one row `where` picks; None when it has not run (yet)."""
  found = select(rows, where)
  if len(found) > 1:
    raise ValueError(f"claim: {what} {where} should pick one variant, picks "
                     f"{[r['variant'] for r in found]}")
  return found[0] if found else None


def _show(row: dict, metric: str) -> str:
  s = row[metric]
  ci = f" ± {s['ci95']:.3g}" if math.isfinite(s["ci95"]) else ""
  return f"{row['variant']} {s['mean']:.4g}{ci}"


def check_claim(claim: dict, rows: Sequence[dict]) -> dict[str, Any]:
  """{"verdict", "measured": one line per comparison} of a claim on aggregated rows."""
  test, metric = claim.get("test"), claim.get("metric")
  if test not in TESTS:
    raise ValueError(f"claim {claim.get('id')!r}: test expected one of {TESTS}, got {test!r}")
  verdicts, lines = [], []
  if test in ("greater", "less", "ratio_at_most"):
    groups = [{}]
    if claim.get("for_each"):
      axis = claim["for_each"]
      values = claim.get("values") or list(dict.fromkeys(
          r["axes"][axis] for r in select(rows, claim["a"]) if axis in r["axes"]))
      groups = [{axis: v} for v in values]
    for g in groups:
      a = _one(rows, {**claim["a"], **g}, "a")
      b = _one(rows, {**claim["b"], **g}, "b")
      if a is None or b is None:
        verdicts.append(INCONCLUSIVE)
        lines.append(f"{claim['a'] if a is None else claim['b']} {g or ''} not measured "
                     "(not run or not finished): inconclusive")
        continue
      if test == "ratio_at_most":
        v, lo, hi = ratio_at_most(a[metric], b[metric], float(claim["value"]))
        lines.append(f"{_show(a, metric)} / {_show(b, metric)} = "
                     f"{a[metric]['mean'] / b[metric]['mean']:.3g} (interval {lo:.3g} .. "
                     f"{hi:.3g}) <= {claim['value']}: {v}")
      else:
        v = (compare(a[metric], b[metric]) if test == "greater"
             else compare(b[metric], a[metric]))
        lines.append(f"{_show(a, metric)} {'>' if test == 'greater' else '<'} "
                     f"{_show(b, metric)}: {v}")
      verdicts.append(v)
  elif test == "trend":
    axis = claim["axis"]
    along = [r for r in select(rows, claim.get("within")) if axis in r["axes"]]
    if len(along) < 2:
      return {"verdict": INCONCLUSIVE, "measured": [
          f"{len(along)} variant(s) along {axis!r} measured, a trend needs 2: inconclusive"]}
    first, last = along[0], along[-1]
    v = (compare(last[metric], first[metric]) if claim["direction"] == "increasing"
         else compare(first[metric], last[metric]))
    means = [r[metric]["mean"] for r in along]
    steps = np.sign(np.diff(means)) * (1 if claim["direction"] == "increasing" else -1)
    verdicts.append(v)
    lines.append(f"{axis} {first['axes'][axis]} -> {last['axes'][axis]}: "
                 + " -> ".join(f"{m:.4g}" for m in means)
                 + f" ({int(np.sum(steps > 0))} of {len(steps)} steps {claim['direction']}); "
                 f"last vs first: {v}")
  else:
    bound = float(claim["value"])
    if not select(rows, claim.get("within")):
      lines.append(f"{claim.get('within')} not measured: inconclusive")
    for r in select(rows, claim.get("within")):
      lo, hi = interval(r[metric])
      if test == "at_least":
        v = REPRODUCED if lo >= bound else NOT_REPRODUCED if hi < bound else INCONCLUSIVE
      else:
        v = REPRODUCED if hi <= bound else NOT_REPRODUCED if lo > bound else INCONCLUSIVE
      verdicts.append(v)
      lines.append(f"{_show(r, metric)} {'>=' if test == 'at_least' else '<='} {bound:g}: {v}")
  return {"verdict": combine(verdicts), "measured": lines}


def claims_report(claims: Sequence[dict], rows: Sequence[dict]) -> str:
  """Markdown: each claim as the paper states it, what was measured, the verdict."""
  out = []
  for c in claims:
    result = check_claim(c, rows)
    src = f"{c.get('paper', '')} (arXiv {c.get('arxiv', '?')}, {c.get('where', '')})"
    out.append(f"**{c.get('id', '?')}: {result['verdict']}.** {src}: {c.get('states', '')}")
    if c.get("quote"):
      out.append(f"- the paper: \u201c{c['quote']}\u201d")
    out += [f"- {line}" for line in result["measured"]]
    if result["verdict"] != REPRODUCED and c.get("note"):
      out.append(f"- note: {c['note']}")
    out.append("")
  return "\n".join(out)


def plot(rows: Sequence[dict], x: str, metric: str, line: str | None, path: str, *,
         log2_x: bool = False, title: str = "", ylabel: str | None = None) -> None:
  """`metric` against axis `x`, one line per value of axis `line`: the mean over seeds with
  ±1 standard deviation bars and each seed's value as a faint dot (95% intervals of three
  seeds are too wide to read; the verdicts use them)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.2, 3.2), dpi=120)
  lines = list(dict.fromkeys(r["axes"].get(line) for r in rows)) if line else [None]
  for name in lines:
    pts = [r for r in rows if line is None or _same(r["axes"].get(line), name)]
    xs = [float(r["axes"][x]) for r in pts]
    ys = [r[metric]["mean"] for r in pts]
    err = [r[metric]["std"] if math.isfinite(r[metric]["std"]) else 0.0 for r in pts]
    bar = ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=3,
                      label=None if name is None else str(name))
    seeds = [(xv, v) for xv, r in zip(xs, pts) for v in r[metric].get("values", [])]
    if seeds:
      ax.scatter(*zip(*seeds), s=6, alpha=0.35, color=bar[0].get_color())
  if log2_x:
    ax.set_xscale("log", base=2)
  ax.set_xlabel(x)
  seeded = any(len(r[metric].get("values", [])) > 1 for r in rows)
  ax.set_ylabel((ylabel or metric) + (" (mean ± std, seeds)" if seeded else ""))
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  if line:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
