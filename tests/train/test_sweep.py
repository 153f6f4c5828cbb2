"""`vqlab sweep` on real (runlocal) quantizer-study jobs: finished runs are skipped, a
failed run is recorded and the others go on, the printed commands train the same runs,
every ablation config is complete, and their runlocal variants run end to end with a
verdict per claim."""

import glob
import json
import os
import shlex
import subprocess
import sys

import pytest

from configs.common import sweep_config, variant
from vqlab.train import runs, sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(REPO, "configs", "quantizer_study.py") + ":runlocal"
ABLATIONS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "ablations", "*.py"))
                   if not os.path.basename(p).startswith("_"))  # __init__, shared helpers
_name = lambda p: os.path.basename(p)[:-3]  # an ablation's name


def _sweep(seeds=(0,)):
  return sweep_config("test", STUDY, [
      variant({"quantizer": "vq"}, {"quantizers": "vq_ste"}),
      variant({"quantizer": "broken"}, {"quantizers": "vq_ste",
                                        "q.vq_ste.args.codebook_size": 0}),
  ], ["mse", "usage"], seeds=seeds)


class Counting:
  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append(workdir)
    return runs.train(config, workdir)


def test_a_failed_run_is_recorded_the_others_go_on_and_finished_runs_are_skipped(tmp_path):
  s, work = _sweep(), str(tmp_path / "sw")
  train = Counting()
  out = sweep.sweep_main(s, STUDY, work, train_fn=train)
  assert len(train.calls) == 2
  assert [r["variant"] for r in out["records"]] == ["vq"]
  error = json.load(open(os.path.join(work, "broken", "seed0", sweep.ERROR)))
  assert "codebook_size" in error["error"] and error["overrides"]["q.vq_ste.args.codebook_size"] == 0
  report = open(os.path.join(work, "report.md")).read()
  assert "1 of 2 runs finished (1 failed)" in report and "broken seed 0: ValueError" in report
  result = json.load(open(os.path.join(work, "vq", "seed0", sweep.RESULT)))
  summary = json.load(open(os.path.join(work, "vq", "seed0", "vq_ste", "summary.json")))
  assert result["metrics"]["mse"] == summary["mse"] and result["seed"] == 0

  train = Counting()
  sweep.sweep_main(s, STUDY, work, train_fn=train)  # the rerun retries only the failure
  assert train.calls == [os.path.join(work, "broken", "seed0")]
  # a changed override is not "finished": that run trains again (its job resumes/refuses)
  changed = sweep_config("test", STUDY, [variant({"quantizer": "vq"}, {"quantizers": "vq_ste",
                                                 "train.lr": 1e-3})], ["mse"], seeds=(0,))
  assert sweep.finished(sweep.planned_runs(changed, work)[0]) is None


def test_the_printed_command_trains_the_same_run(tmp_path, capsys):
  s, work = _sweep(), str(tmp_path / "sw")
  sweep.sweep_main(s, STUDY, work, index=0)  # --index: one run, no aggregate
  assert not os.path.exists(os.path.join(work, "report.md"))
  in_process = json.load(open(os.path.join(work, "vq", "seed0", sweep.RESULT)))["metrics"]
  capsys.readouterr()
  sweep.sweep_main(s, STUDY, work, commands=True)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("vqlab train --config=")
  args = shlex.split(lines[0].replace(os.path.join(work, "vq", "seed0"), str(tmp_path / "cli")))
  subprocess.run([sys.executable, "-m", "vqlab.cli", *args[1:]], cwd=REPO, check=True,
                 capture_output=True)
  cli = json.load(open(tmp_path / "cli" / "vq_ste" / "summary.json"))
  assert cli["mse"] == pytest.approx(in_process["mse"], rel=1e-5)
  assert cli["usage"] == pytest.approx(in_process["usage"], abs=1e-6)
  with pytest.raises(ValueError, match="index: expected 0 <= index < 2"):
    sweep.sweep_main(s, STUDY, work, index=2)


def test_overrides_of_fields_the_base_lacks_are_errors():
  base = sweep.load_config_file(STUDY)
  with pytest.raises(ValueError, match=r"'train.stepz' is not a field"):
    sweep.apply_overrides(base, {"train.stepz": 3})
  with pytest.raises(ValueError, match=r"no field 'trian'"):
    sweep.apply_overrides(base, {"trian.steps": 3})
  c = sweep.apply_overrides(base, {"train.steps": 5, "q.fsq.args.levels": [8, 8]})
  assert c.train.steps == 5 and tuple(c.q.fsq.args.levels) == (8, 8) and base.train.steps == 3
  with pytest.raises(ValueError, match="names must be unique"):
    sweep.planned_runs(sweep_config("t", STUDY, [variant({"a": 1}, {}), variant({"a": 1}, {})],
                                    ["mse"]), "/tmp/x")


@pytest.mark.parametrize("path", ABLATIONS, ids=_name)
def test_every_ablation_config_is_complete(path, monkeypatch):
  """Full and runlocal: seeds, more full runs than runlocal ones, every run's overrides fit
  its base config, a paper and a statement for every claim (where it has claims)."""
  monkeypatch.chdir(REPO)  # base configs are named relative to the repository
  s = sweep.load_config_file(path + ":runlocal")
  full = sweep.load_config_file(path)
  assert len(full.seeds) >= 3 and len(sweep.planned_runs(full, "/x")) > len(
      sweep.planned_runs(s, "/x"))
  for config in (full, s):
    for run in sweep.planned_runs(config, "/x"):
      sweep.apply_overrides(sweep.load_config_file(run["base"]), run["overrides"])
  claims = sweep.load_claims(s, os.path.dirname(path))
  for c in claims:
    assert c.get("arxiv") and c.get("paper") and (c.get("states") or c.get("quote"))


# The generator ablations train a digits tokenizer chain first (their `prepare`), then
# the generator trainer under other overrides (paradigms, heads, guidance scales, mask
# schedules: each tested in test_generator and tests/models), and the codec ablations train
# two or three runlocal codecs each (the codec's runlocal run is tested in test_codec), minutes:
# their runlocal sweeps are run by hand (-m manual); CI checks their configs above.
GENERATOR_ABLATIONS = ("generators", "generator_heads", "guidance", "maskgit_schedules")
SPEECH_ABLATIONS = ("codec_dropout", "codec_rooms")
# the longest runlocal sweeps run in CI's slow step (the default run's budget); the
# quantizer-study sweeps stay in the default run
SLOW_ABLATIONS = ("titok_tokens", "codebook_size", "residual_depth")
RUN = [pytest.param(p, id=_name(p), marks=[pytest.mark.manual]
                    if _name(p) in GENERATOR_ABLATIONS + SPEECH_ABLATIONS
                    else [pytest.mark.slow] if _name(p) in SLOW_ABLATIONS else [])
       for p in ABLATIONS]


@pytest.mark.parametrize("path", RUN)
def test_each_ablation_runs_its_runlocal_variant_with_a_verdict_per_claim(path, session_dir,
                                                                         monkeypatch, request):
  monkeypatch.chdir(REPO)
  name = _name(path)
  s = sweep.load_config_file(path + ":runlocal")
  if name in SPEECH_ABLATIONS:  # the built-in speech as the test cache holds it
    data_dir = request.getfixturevalue("speech_data_dir")
    s.variants = [{**v, "overrides": {**v["overrides"], "data.data_dir": data_dir}}
                  for v in s.variants]
  # one session directory for all: sweeps with a shared prepare_dir train its chain once
  tmp_path = session_dir / "ablations" / name
  out = sweep.sweep_main(s, path, str(tmp_path))
  assert not out["failed"] and len(out["records"]) == len(sweep.planned_runs(s, str(tmp_path)))
  verdicts = open(tmp_path / "claims.md").read()
  for c in sweep.load_claims(s, os.path.dirname(path)):
    assert f"**{c['id']}: " in verdicts
  rows = open(tmp_path / "results.csv").read().strip().splitlines()
  assert len(rows) == 1 + len(out["rows"]) >= 1 + len(s.variants)  # expanded runs: more
  for p in s.get("plots", []):
    assert os.path.exists(tmp_path / f"{p['metric']}_vs_{p['x']}.png")


def test_prepare_steps_run_once_and_a_failed_one_stops_the_sweep(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  prep = [dict(name="study", verb="train", args={
      "config": "configs/quantizer_study.py:runlocal", "workdir": "{prepare}/study",
      "config.quantizers": "vq_ste"})]
  s = sweep_config("t", STUDY, [variant({"q": "vq"}, {"quantizers": "vq_ste"})], ["mse"],
                   seeds=(0,), prepare=prep, prepare_dir="../shared")
  work = str(tmp_path / "sw")
  sweep.sweep_main(s, STUDY, work, prepare_only=True)
  marker = tmp_path / "shared" / "study.done"
  summary = tmp_path / "shared" / "study" / "vq_ste" / "summary.json"
  assert marker.exists() and summary.exists()
  stamp = summary.stat().st_mtime_ns
  sweep.sweep_main(s, STUDY, work, prepare_only=True)  # done: not run again
  assert summary.stat().st_mtime_ns == stamp
  bad = sweep_config("t", STUDY, s.variants, ["mse"], seeds=(0,), prepare=[dict(
      name="broken", verb="train", args={"config": "configs/nope.py", "workdir": "{prepare}/b"})])
  with pytest.raises(RuntimeError, match="prepare 'broken' failed"):
    sweep.sweep_main(bad, STUDY, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "b" / "q")  # no run started without its prerequisites
