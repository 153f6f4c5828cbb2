"""Throughput and MFU in the logs, and training in bfloat16 (train.compute_dtype)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quantizer_study as study_config
from vqlab.train import quantizer_study, utilisation


class FakeDevice:
  def __init__(self, kind, platform="gpu"):
    self.device_kind, self.platform = kind, platform


def test_throughput_numbers_follow_from_the_window(monkeypatch):
  clock = iter([100.0, 112.0])  # restart at 100 s, scalars at 112 s
  monkeypatch.setattr(utilisation.time, "perf_counter", lambda: next(clock))
  t = utilisation.Throughput(peak_per_device=1e12, num_devices=4)
  for _ in range(5):
    t.add(flops=2e12, examples=32, units={"tokens": 32 * 256})
  t.exclude(2.0)  # 2 s of image writing inside the window
  monkeypatch.setattr(utilisation.time, "perf_counter", lambda: 112.0)
  s = t.scalars()
  assert s["steps_per_second"] == pytest.approx(0.5)  # 5 steps in 12 - 2 s
  assert s["perf/step_seconds"] == pytest.approx(2.0)
  assert s["perf/examples_per_second"] == pytest.approx(16.0)
  assert s["perf/tokens_per_second"] == pytest.approx(16.0 * 256)
  assert s["perf/mfu"] == pytest.approx(1e12 / 4e12)  # 1 TFLOP/s achieved of 4
  assert t.scalars() == {}  # the next window has timed no step
  row = {"step": 3, "loss": 1.0, **s}
  assert utilisation.without_timing(row) == {"step": 3, "loss": 1.0}


def test_step_flops_counts_a_matmul_exactly():
  a, b = jnp.ones((64, 48)), jnp.ones((48, 32))
  assert utilisation.step_flops(jax.jit(jnp.matmul), a, b) == 2 * 64 * 48 * 32


def test_step_flops_of_a_training_step_are_the_analytic_ones():
  """An MLP (B x i -> h -> o) and a conv layer, value and gradient w.r.t. the weights:
  forward 2B(ih + ho); backward dW2, dh, dW1 (no gradient for the input) = 2B(2ho + ih).
  The conv (NHWC, k x k, stride 1, SAME) costs 2 N H W k^2 Ci Co forward and the same
  again for its kernel's gradient. A scan of 3 steps counts its body 3 times."""
  b, i, h, o = 16, 24, 40, 8

  def mlp(w, x):
    return jnp.sum(jnp.tanh(x @ w["w1"]) @ w["w2"])
  w = {"w1": jnp.ones((i, h)), "w2": jnp.ones((h, o))}
  step = jax.jit(jax.value_and_grad(mlp))
  assert utilisation.step_flops(step, w, jnp.ones((b, i))) == \
      2 * b * (i * h + h * o) + 2 * b * (2 * h * o + i * h)

  def conv(k, x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y ** 2)
  n, hw, ks, ci, co = 2, 8, 3, 4, 6
  forward = 2 * n * hw * hw * ks * ks * ci * co
  got = utilisation.step_flops(jax.jit(jax.grad(conv)), jnp.ones((ks, ks, ci, co)),
                               jnp.ones((n, hw, hw, ci)))
  assert got == 2 * forward
  strided = lambda k, x: jnp.sum(jax.lax.conv_general_dilated(
      x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
  x = jnp.ones((n, hw, hw, ci))  # gradients for the input and the kernel: each = forward
  got = utilisation.step_flops(jax.jit(jax.grad(strided, argnums=(0, 1))),
                               jnp.ones((ks, ks, ci, co)), x)
  assert got == 3 * forward / 4

  def scanned(x):
    return jax.lax.scan(lambda c, _: (c @ jnp.ones((i, i)), None), x, None, length=3)[0]
  assert utilisation.step_flops(jax.jit(scanned), jnp.ones((b, i))) == 3 * 2 * b * i * i


def test_peak_flops_from_the_table_or_a_measured_matmul():
  assert utilisation.peak_flops(FakeDevice("NVIDIA H100 80GB HBM3"), "bfloat16") == \
      (989e12, "datasheet")
  assert utilisation.peak_flops(FakeDevice("NVIDIA H100 PCIe"), "float32")[0] == 378e12
  assert utilisation.peak_flops(FakeDevice("TPU v5 lite", "tpu"), "bfloat16")[0] == 197e12
  rate, source = utilisation.peak_flops(jax.devices()[0], "float32")  # this CPU
  assert source == "measured matmul" and 1e8 < rate < 1e14
  with pytest.raises(ValueError, match="compute dtype: expected one of"):
    utilisation.peak_flops(jax.devices()[0], "float16")


def test_bad_compute_dtype_fails_before_training(tmp_path):
  config = study_config.get_config("runlocal")
  config.train.compute_dtype = "fp16"
  with pytest.raises(ValueError, match="train.compute_dtype: expected one of"):
    quantizer_study.run(config, str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_a_bf16_run_learns_like_the_float32_run_and_logs_its_utilisation(tmp_path):
  """150 steps of the digits autoencoder with FSQ in each dtype, the same seed: the bf16
  run's held-out error within 15% of the float32 run's (measured: a few %), both well
  below the constant guess. Every timed log row carries MFU in (0, 1] against this
  CPU's measured matmul, and examples/s = batch x steps/s."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = study_config.get_config()
    config.train.steps, config.quantizers, config.data.eval_size = 150, "fsq", 256
    config.train.compute_dtype = dtype
    results[dtype] = quantizer_study.run(config, str(tmp_path / dtype))[0]
  mse32, mse16 = results["float32"]["mse"], results["bfloat16"]["mse"]
  assert abs(mse16 - mse32) < 0.15 * mse32, (mse16, mse32)
  rows = [json.loads(line) for line in
          (tmp_path / "bfloat16" / "fsq" / "metrics.jsonl").read_text().splitlines()]
  timed = [r for r in rows if "perf/mfu" in r]
  assert len(timed) >= len(rows) - 1  # all but a window holding only the compiling step
  for r in timed:
    assert 0 < r["perf/mfu"] <= 1
    assert r["perf/examples_per_second"] == pytest.approx(32 * r["steps_per_second"])
    assert np.isfinite(r["perf/flops_per_second"])


def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  config = study_config.get_config("runlocal")
  config.quantizers, config.profile_steps = "fsq", (2, 3)
  quantizer_study.run(config, str(tmp_path))
  traces = list((tmp_path / "fsq" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 1000
  config.profile_steps = (3, 2)
  with pytest.raises(ValueError, match="profile_steps: expected"):
    quantizer_study.run(config, str(tmp_path / "bad"))
