"""`vqlab sweep`: run an ablation, i.e. one base job over variants and seeds, and
aggregate whatever has finished into tables, plots and verdicts on the paper's claims.

  vqlab sweep --config configs/ablations/codebook_size.py --workdir runs/codebook_size
  vqlab sweep --config configs/ablations/codebook_size.py --workdir runs/cs --list
  vqlab sweep ... --commands       # one `vqlab train ...` line per run (a cluster's array)
  vqlab sweep ... --prepare        # only the prepare steps (a tokenizer, its tokens, ...)
  vqlab sweep ... --index 7        # only run 7 of the list (a job-array task); no aggregate
  vqlab sweep ... --aggregate      # only aggregate the runs that have finished

A sweep config (configs/ablations/*.py) names the `base` job (any vqlab config file, with
its `:arg`), `variants` ({name, axes: {axis: value}, overrides: {dotted.field: value}};
`configs.common.grid` builds a grid, `sweep_config` the whole), `seeds` (each
sets the base config's `seed`), the `metrics` to tabulate, `plots`, `expand` (one run
measured at several settings, e.g. decoded at 1 .. 8 levels: `ablation.expand`) and
`claims` (a TOML file beside the config; vqlab/eval/ablation.py says what a claim tests),
and `prepare`: steps every run needs first ({name, verb, args: {flag: value}}, e.g. a
tokenizer and its tokens, in WORKDIR/prepare/; `{prepare}` in an override or argument is
that directory; `prepare_dir` moves it). A variant may name its own `base`.

Each run is a job of its own in WORKDIR/<variant>/seed<k>/ (it resumes after a stop; a
rerun skips it once `sweep_result.json` is there with the same overrides). A run that
fails is recorded in its `sweep_error.json` and the others go on; a rerun retries it.
The aggregate writes WORKDIR/results.md, results.csv, records.json, claims.md,
<metric>_vs_<axis>.png and report.md (all of it, for docs/ablations.md).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
import traceback
from typing import Any

import ml_collections

from vqlab.eval import ablation

RESULT, ERROR = "sweep_result.json", "sweep_error.json"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of `path/to/config.py[:arg]` (what `--config` of any verb takes)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"base: expected a config file, got {path!r}")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  for d in (os.getcwd(), root):  # so that `from configs.common import ...` resolves
    if d not in sys.path:
      sys.path.insert(0, d)
  module_spec = importlib.util.spec_from_file_location(f"_vqlab_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                    ) -> ml_collections.ConfigDict:
  """A copy of `config` with each `dotted.field` set; a field the config lacks is an error
  (a misspelt axis must not silently sweep nothing)."""
  config = copy.deepcopy(config)
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for i, name in enumerate(parents):
      if name not in node:
        raise ValueError(f"overrides: {path!r} has no field {'.'.join(parents[:i + 1])!r} "
                         f"in the base config")
      node = node[name]
    if leaf not in node:
      raise ValueError(f"overrides: {path!r} is not a field of the base config; "
                       f"{'.'.join(parents) or 'the top level'} has {sorted(node)}")
    with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
      node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def check_sweep(sweep: ml_collections.ConfigDict) -> None:
  for field in ("base", "variants", "seeds", "metrics"):
    if field not in sweep or not sweep[field]:
      raise ValueError(f"sweep config: expected a non-empty {field!r}")
  names = [v["name"] for v in sweep.variants]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"variants: names must be unique, {dup} repeat")
  for v in sweep.variants:
    if not v["name"] or "/" in v["name"]:
      raise ValueError(f"variants: expected a name without '/', got {v['name']!r}")


def prepare_dir(sweep: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the prepare steps write: WORKDIR/<sweep.prepare_dir> (default "prepare"; e.g.
  "../digits_chain" shares one tokenizer between sweeps), absolute."""
  return os.path.abspath(os.path.join(workdir, sweep.get("prepare_dir") or "prepare"))


def _placed(value: Any, sweep, workdir: str) -> Any:
  """`{prepare}` in a string: the sweep's `prepare_dir`."""
  if isinstance(value, str):
    return value.replace("{prepare}", prepare_dir(sweep, workdir))
  return value


def prepare_steps(sweep: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """The sweep's `prepare` steps (what every run needs first, e.g. a tokenizer and its
  exported tokens), each {"name", "argv": the `vqlab` command}, `{prepare}` placed."""
  out = []
  for step in sweep.get("prepare", []):
    args = {k: _placed(v, sweep, workdir) for k, v in dict(step["args"]).items()}
    out.append({"name": step["name"], "argv": [step["verb"]] + [
        f"--{k}={_flag_value(v)}" for k, v in args.items()]})
  return out


def run_prepare(sweep: ml_collections.ConfigDict, workdir: str) -> None:
  """Run each prepare step once (a `vqlab` subprocess; a step resumes like any job and
  is skipped when its marker records the same command). A failed step stops the sweep:
  nothing after it could run."""
  for step in prepare_steps(sweep, workdir):
    marker = os.path.join(prepare_dir(sweep, workdir), step["name"] + ".done")
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + ".lock", "w") as lock:  # sweeps sharing a prepare_dir: one runs it
      fcntl.flock(lock, fcntl.LOCK_EX)
      if _read(marker) == {"argv": step["argv"]}:
        print(f"sweep: prepare {step['name']}: done earlier")
        continue
      print(f"sweep: prepare {step['name']}: vqlab {' '.join(step['argv'])}")
      done = subprocess.run([sys.executable, "-m", "vqlab.cli", *step["argv"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      if done.returncode:
        raise RuntimeError(f"prepare {step['name']!r} failed (vqlab "
                           f"{' '.join(step['argv'])}):\n"
                           + "\n".join(done.stdout.strip().splitlines()[-15:]))
      with open(marker, "w") as f:
        json.dump({"argv": step["argv"]}, f)


def planned_runs(sweep: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Every (variant, seed) run: its name, axes, seed, workdir and full overrides."""
  check_sweep(sweep)
  out = []
  for v in sweep.variants:
    for seed in sweep.seeds:
      overrides = {**{k: _placed(x, sweep, workdir) for k, x in dict(v["overrides"]).items()},
                   "seed": int(seed)}
      out.append({"variant": v["name"], "axes": dict(v["axes"]), "seed": int(seed),
                  "base": v.get("base") or sweep.base,
                  "workdir": os.path.join(workdir, v["name"], f"seed{seed}"),
                  "overrides": overrides})
  return out


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def command(sweep: ml_collections.ConfigDict, run: dict) -> str:
  """The `vqlab train` command line of one run."""
  parts = ["vqlab", "train", f"--config={run['base']}", f"--workdir={run['workdir']}"]
  parts += [f"--config.{k}={_flag_value(v)}" for k, v in run["overrides"].items()]
  return " ".join(shlex.quote(p) for p in parts)


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished(run: dict) -> dict | None:
  """The run's recorded result when it finished with these overrides."""
  result = _read(os.path.join(run["workdir"], RESULT))
  if result is None or result.get("overrides") != json.loads(json.dumps(run["overrides"])):
    return None
  return result


def scalar_metrics(result: Any) -> dict[str, float]:
  """The numbers of a job's returned summary (a study's one-quantizer list: its entry)."""
  if isinstance(result, list) and len(result) == 1:
    result = result[0]
  if not isinstance(result, dict):
    raise ValueError(f"the base job returned {type(result).__name__}, expected a summary dict")
  return {k: float(v) for k, v in result.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_one(sweep: ml_collections.ConfigDict, run: dict, train_fn=None) -> dict[str, Any]:
  """Train one run (resuming or skipping); its record, or {"error": ...} when it failed."""
  done = finished(run)
  if done is not None:
    print(f"sweep: {run['variant']} seed {run['seed']}: finished earlier")
    return done
  if train_fn is None:
    from vqlab.train import runs
    train_fn = runs.train
  os.makedirs(run["workdir"], exist_ok=True)
  start = time.perf_counter()
  try:
    config = apply_overrides(load_config_file(run["base"]), run["overrides"])
    metrics = scalar_metrics(train_fn(config, run["workdir"]))
  except Exception as e:  # one variant's failure is recorded; the sweep goes on (SIGTERM's
    # loop.Preempted is a SystemExit: it stops the sweep, and the rerun resumes this run)
    error = {"variant": run["variant"], "seed": run["seed"], "overrides": run["overrides"],
             "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    with open(os.path.join(run["workdir"], ERROR), "w") as f:
      json.dump(error, f, indent=2)
    print(f"sweep: {run['variant']} seed {run['seed']} FAILED: {error['error']}")
    return error
  record = {"variant": run["variant"], "axes": run["axes"], "seed": run["seed"],
            "overrides": run["overrides"], "metrics": metrics,
            "seconds": time.perf_counter() - start}
  import jax
  if jax.process_index() != 0:  # a multi-host run: its first process writes the record
    return record
  tmp = os.path.join(run["workdir"], RESULT + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(run["workdir"], RESULT))  # whole or absent
  if os.path.exists(os.path.join(run["workdir"], ERROR)):
    os.remove(os.path.join(run["workdir"], ERROR))
  return record


def load_claims(sweep: ml_collections.ConfigDict, config_dir: str) -> list[dict]:
  if not sweep.get("claims"):
    return []
  path = sweep.claims if os.path.isabs(sweep.claims) else os.path.join(config_dir, sweep.claims)
  with open(path, "rb") as f:
    claims = tomllib.load(f).get("claim", [])
  for c in claims:
    if c.get("test") not in ablation.TESTS:
      raise ValueError(f"{path}: claim {c.get('id')!r}: test expected one of "
                       f"{ablation.TESTS}, got {c.get('test')!r}")
  return claims


def aggregate(sweep: ml_collections.ConfigDict, workdir: str, claims: list[dict]
              ) -> dict[str, Any]:
  """Tables, plots, claim verdicts and report.md of the finished runs in `workdir`."""
  plan = planned_runs(sweep, workdir)
  records = [r for r in (finished(run) for run in plan) if r is not None]
  failed = [e for e in (_read(os.path.join(run["workdir"], ERROR)) for run in plan) if e]
  metrics = list(sweep.metrics)
  rows = ablation.aggregate(ablation.expand(records, sweep.get("expand", [])), metrics)
  axes = list(dict.fromkeys([a for v in sweep.variants for a in v["axes"]]
                            + [a for u in sweep.get("expand", []) for a in u["axes"]]))
  labels = dict(sweep.get("labels", {}))
  table = ablation.markdown_table(rows, axes, metrics, labels)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.csv"), "w") as f:
    f.write(ablation.csv_table(rows, axes, metrics))
  with open(os.path.join(workdir, "records.json"), "w") as f:
    json.dump(records, f, indent=2)
  figures = []
  for p in sweep.get("plots", []):
    name = f"{p['metric']}_vs_{p['x']}.png"
    chosen = ablation.select(rows, p.get("where"))
    if chosen:
      ablation.plot(chosen, p["x"], p["metric"], p.get("line"), os.path.join(workdir, name),
                    log2_x=p.get("log2_x", False), title=sweep.get("title", ""),
                    ylabel=labels.get(p["metric"]))
      figures.append(name)
  verdicts = ablation.claims_report(claims, rows) if records else ""
  with open(os.path.join(workdir, "claims.md"), "w") as f:
    f.write(verdicts)
  seconds = sum(r.get("seconds", 0.0) for r in records)
  report = [f"### {sweep.get('title', sweep.base)}", "",
            f"{len(records)} of {len(plan)} runs finished ({len(failed)} failed), "
            f"seeds {tuple(sweep.seeds)}, {seconds / 60:.1f} min of training in all.", "",
            table, ""]
  report += [f"![{f}]({f})" for f in figures] + [""]
  if failed:
    report += ["Failed runs:", ""] + [f"- {e['variant']} seed {e['seed']}: {e['error']}"
                                      for e in failed] + [""]
  if verdicts:
    report += ["Claims:", "", verdicts]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(report))
  print("\n" + table + ("\n\n" + verdicts if verdicts else ""))
  print(f"sweep: wrote {workdir}/report.md, results.md, results.csv, claims.md"
        + "".join(f", {f}" for f in figures))
  return {"records": records, "failed": failed, "rows": rows}


def sweep_main(sweep: ml_collections.ConfigDict, config_path: str, workdir: str, *,
               list_only=False, commands=False, index: int | None = None,
               prepare_only=False, aggregate_only=False, train_fn=None) -> dict[str, Any] | None:
  plan = planned_runs(sweep, workdir)
  claims = load_claims(sweep, os.path.dirname(os.path.abspath(config_path)))
  if list_only or commands:
    for step in prepare_steps(sweep, workdir):
      print(" ".join(shlex.quote(p) for p in ["vqlab", *step["argv"]]) if commands else
            f"prep  {step['name']:32s} vqlab {' '.join(step['argv'])}")
    for i, run in enumerate(plan):
      print(command(sweep, run) if commands else
            f"{i:4d}  {run['variant']:32s} seed {run['seed']}  {run['workdir']}  "
            f"{'done' if finished(run) else ''}")
    return None
  if prepare_only:
    run_prepare(sweep, workdir)
    return None
  if index is not None:
    if not 0 <= index < len(plan):
      raise ValueError(f"index: expected 0 <= index < {len(plan)} (the runs of --list), "
                       f"got {index}")
    run_one(sweep, plan[index], train_fn)
    return None
  if not aggregate_only:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep_config.json"), "w") as f:
      f.write(sweep.to_json(indent=2))
    run_prepare(sweep, workdir)
    for i, run in enumerate(plan):
      print(f"sweep: run {i + 1}/{len(plan)}: {run['variant']} seed {run['seed']}")
      run_one(sweep, run, train_fn)
  return aggregate(sweep, workdir, claims)


def main(argv: list[str]) -> None:
  from absl import flags
  from ml_collections import config_flags

  from vqlab.train.common import run_app

  config_flags.DEFINE_config_file("config", None, "configs/ablations/<name>.py[:runlocal]",
                                  lock_config=False)
  flags.DEFINE_string("workdir", None, "One run per variant and seed under it; the "
                      "tables, plots and claims go here.")
  flags.DEFINE_bool("list", False, "Print the runs (and which finished); train nothing.")
  flags.DEFINE_bool("commands", False, "Print one `vqlab train` command per run.")
  flags.DEFINE_integer("index", None, "Run only this run of --list (a job-array task).")
  flags.DEFINE_bool("prepare", False, "Only run the prepare steps (before a job array).")
  flags.DEFINE_bool("aggregate", False, "Only aggregate the runs that have finished.")
  flags.mark_flags_as_required(["config", "workdir"])
  run_app(argv, lambda f: sweep_main(
      f.config, f["config"].config_filename, f.workdir, list_only=f.list,
      commands=f.commands, index=f.index, prepare_only=f.prepare,
      aggregate_only=f.aggregate))
