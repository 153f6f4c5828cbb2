"""Aggregation of an ablation's runs: means, intervals, tables, plots and claim verdicts,
on records whose numbers are known."""

import math

import numpy as np
import pytest
from PIL import Image

from vqlab.eval import ablation


def _records(values_by_variant, axis="method", metric="usage"):
  out = []
  for name, (axes, values) in values_by_variant.items():
    for seed, v in enumerate(values):
      out.append({"variant": name, "axes": axes, "seed": seed, "metrics": {metric: v}})
  return out


def test_summarize_gives_the_t_interval_of_the_mean():
  s = ablation.summarize([1.0, 2.0, 3.0])
  assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
  assert s["ci95"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)  # t(0.975, 2) = 4.303
  x = np.random.default_rng(0).normal(size=40)
  s = ablation.summarize(x)
  assert s["ci95"] == pytest.approx(1.960 * np.std(x, ddof=1) / math.sqrt(40))
  one = ablation.summarize([5.0])
  assert one["mean"] == 5.0 and math.isnan(one["std"]) and math.isnan(one["ci95"])
  assert ablation.t_quantile(1) == 12.706 and ablation.t_quantile(10) == 2.228


def test_aggregate_tables_drop_non_finite_values_and_keep_variant_order():
  records = _records({"vq-64": ({"method": "vq", "k": 64}, [0.1, 0.3]),
                      "fsq-64": ({"method": "fsq", "k": 64}, [0.9, 0.8, float("nan")])})
  rows = ablation.aggregate(records, ["usage"])
  assert [r["variant"] for r in rows] == ["vq-64", "fsq-64"]
  assert rows[0]["usage"]["mean"] == pytest.approx(0.2)
  assert rows[1]["usage"]["n"] == 2 and rows[1]["seeds"] == [0, 1, 2]
  table = ablation.markdown_table(rows, ["method", "k"], ["usage"], {"usage": "code usage"})
  assert "| method | k | seeds | code usage |" in table
  assert "| vq | 64 | 2 | 0.2 ± 0.14 |" in table
  csv = ablation.csv_table(rows, ["method", "k"], ["usage"]).splitlines()
  assert csv[0] == "method,k,seeds,usage_mean,usage_std,usage_ci95"
  assert csv[1].startswith("vq,64,2,0.2")


def _rows(spec):
  return ablation.aggregate(_records(spec), ["usage"])


def test_greater_claims_are_reproduced_refuted_or_inconclusive_by_interval_overlap():
  rows = _rows({"a": ({"method": "a"}, [0.90, 0.91, 0.92]),
                "b": ({"method": "b"}, [0.10, 0.11, 0.12]),
                "c": ({"method": "c"}, [0.05, 0.50, 0.95])})
  claim = lambda a, b: {"id": "x", "test": "greater", "metric": "usage",
                        "a": {"method": a}, "b": {"method": b}}
  assert ablation.check_claim(claim("a", "b"), rows)["verdict"] == ablation.REPRODUCED
  assert ablation.check_claim(claim("b", "a"), rows)["verdict"] == ablation.NOT_REPRODUCED
  assert ablation.check_claim(claim("a", "c"), rows)["verdict"] == ablation.INCONCLUSIVE
  less = {**claim("b", "a"), "test": "less"}
  assert ablation.check_claim(less, rows)["verdict"] == ablation.REPRODUCED
  missing = ablation.check_claim(claim("a", "zzz"), rows)
  assert missing["verdict"] == ablation.INCONCLUSIVE and "not measured" in missing["measured"][0]


def test_one_seed_is_never_conclusive():
  rows = _rows({"a": ({"method": "a"}, [0.9]), "b": ({"method": "b"}, [0.1])})
  c = {"test": "greater", "metric": "usage", "a": {"method": "a"}, "b": {"method": "b"}}
  assert ablation.check_claim(c, rows)["verdict"] == ablation.INCONCLUSIVE


def test_for_each_claims_combine_every_comparison():
  spec = {f"{m}-{k}": ({"method": m, "k": k}, vals)
          for m, k, vals in [("fsq", 64, [0.9, 0.92, 0.91]), ("vq", 64, [0.1, 0.12, 0.11]),
                             ("fsq", 256, [0.9, 0.91, 0.9]), ("vq", 256, [0.95, 0.96, 0.96])]}
  rows = _rows(spec)
  c = {"test": "greater", "metric": "usage", "a": {"method": "fsq"}, "b": {"method": "vq"},
       "for_each": "k"}
  result = ablation.check_claim(c, rows)
  assert result["verdict"] == ablation.NOT_REPRODUCED and len(result["measured"]) == 2
  only_64 = ablation.check_claim({**c, "values": [64]}, rows)
  assert only_64["verdict"] == ablation.REPRODUCED


def test_trend_compares_the_ends_of_the_axis_and_counts_monotone_steps():
  spec = {f"vq-{k}": ({"method": "vq", "k": k}, vals)
          for k, vals in [(64, [0.8, 0.82]), (256, [0.5, 0.52]), (1024, [0.1, 0.11])]}
  rows = _rows(spec)
  down = {"test": "trend", "metric": "usage", "within": {"method": "vq"}, "axis": "k",
          "direction": "decreasing"}
  result = ablation.check_claim(down, rows)
  assert result["verdict"] == ablation.REPRODUCED
  assert "2 of 2 steps decreasing" in result["measured"][0]
  up = {**down, "direction": "increasing"}
  assert ablation.check_claim(up, rows)["verdict"] == ablation.NOT_REPRODUCED


def test_bounds_use_the_interval():
  rows = _rows({"a": ({"method": "a"}, [0.95, 0.97]), "b": ({"method": "b"}, [0.3, 0.9])})
  at_least = {"test": "at_least", "metric": "usage", "value": 0.9, "within": {"method": "a"}}
  assert ablation.check_claim(at_least, rows)["verdict"] == ablation.INCONCLUSIVE  # t(1) is wide
  rows = _rows({"a": ({"method": "a"}, [0.95, 0.96, 0.97, 0.96])})
  assert ablation.check_claim(at_least, rows)["verdict"] == ablation.REPRODUCED
  at_most = {**at_least, "test": "at_most", "value": 0.5}
  assert ablation.check_claim(at_most, rows)["verdict"] == ablation.NOT_REPRODUCED


def test_a_claim_with_an_unknown_test_is_an_error():
  with pytest.raises(ValueError, match="test expected one of"):
    ablation.check_claim({"id": "x", "test": "bigger", "metric": "usage"}, [])


def test_plot_writes_a_png_with_one_line_per_method(tmp_path):
  spec = {f"{m}-{k}": ({"method": m, "k": k}, [0.5 + 0.1 * i, 0.55 + 0.1 * i])
          for i, k in enumerate([64, 256]) for m in ("vq", "fsq")}
  path = tmp_path / "usage.png"
  ablation.plot(_rows(spec), "k", "usage", "method", str(path), log2_x=True)
  assert Image.open(path).size[0] > 100


def test_expand_turns_one_run_measured_at_several_settings_into_rows():
  records = [{"variant": "dropout", "axes": {"method": "dropout"}, "seed": s,
              "metrics": {"mse_levels1": 0.5 + s, "mse_levels2": 0.25 + s, "mse": 9.0}}
             for s in (0, 1)]
  records.append({"variant": "fixed-1", "axes": {"method": "fixed", "levels": 1}, "seed": 0,
                  "metrics": {"mse": 0.4}})
  rule = {"where": {"method": "dropout"}, "axes": {"levels": [1, 2, 4]},
          "metrics": {"mse": "mse_levels{levels}"}}
  out = ablation.expand(records, [rule])
  names = [r["variant"] for r in out]
  assert names == ["dropout@levels1", "dropout@levels2", "dropout@levels1", "dropout@levels2",
                   "fixed-1"]  # levels 4 was not measured: no row
  rows = ablation.aggregate(out, ["mse"])
  assert rows[0]["axes"] == {"method": "dropout", "levels": 1}
  assert rows[0]["mse"]["mean"] == 1.0 and rows[1]["mse"]["mean"] == 0.75
  two = ablation.expand(records[:1], [{"where": {"method": "dropout"},
                                       "axes": {"a": [1, 2], "b": ["x"]},
                                       "metrics": {"m": "mse_levels{a}"}}])
  assert [r["axes"] for r in two] == [{"method": "dropout", "a": 1, "b": "x"},
                                      {"method": "dropout", "a": 2, "b": "x"}]


def test_ratio_claims_bound_the_ratio_of_the_intervals():
  rows = _rows({"d": ({"method": "d"}, [1.00, 1.02, 1.01]),
                "f": ({"method": "f"}, [0.95, 0.96, 0.95]),
                "w": ({"method": "w"}, [2.0, 2.1, 2.05])})
  c = lambda a, b, v: {"test": "ratio_at_most", "metric": "usage", "a": {"method": a},
                       "b": {"method": b}, "value": v}
  assert ablation.check_claim(c("d", "f", 1.2), rows)["verdict"] == ablation.REPRODUCED
  assert ablation.check_claim(c("w", "f", 1.2), rows)["verdict"] == ablation.NOT_REPRODUCED
  assert ablation.check_claim(c("d", "f", 1.06), rows)["verdict"] == ablation.INCONCLUSIVE


def test_claims_report_gives_source_quote_measurement_and_verdict():
  rows = _rows({"a": ({"method": "a"}, [0.90, 0.91, 0.92]),
                "b": ({"method": "b"}, [0.10, 0.11, 0.12])})
  claim = {"id": "a-above-b", "paper": "P", "arxiv": "0000.00000", "where": "Fig. 1",
           "states": "a uses more codes.", "quote": "A beats B.", "test": "greater",
           "metric": "usage", "a": {"method": "a"}, "b": {"method": "b"},
           "note": "shown only when not reproduced"}
  report = ablation.claims_report([claim], rows).splitlines()
  assert report[0] == ("**a-above-b: reproduced.** P (arXiv 0000.00000, Fig. 1): "
                       "a uses more codes.")
  assert report[1] == "- the paper: \u201cA beats B.\u201d"
  assert report[2].startswith("- ") and "0.91" in report[2]
  assert not any("note" in line for line in report)
  refuted = ablation.claims_report([{**claim, "a": claim["b"], "b": claim["a"]}], rows)
  assert "not reproduced" in refuted and "- note: shown only when not reproduced" in refuted
