"""Step time, throughput and model FLOPs utilisation (MFU) for the training logs.

MFU = (model FLOPs of one step: the matmuls and convolutions of its traced computation,
forward and backward) / (step time x the devices' peak FLOP/s). The peak comes from a table of known accelerators (the
vendor's dense rate for the compute dtype), or, for CPUs and unknown devices, from a
square matmul of the compute dtype measured once per process on that device: on a CPU
the MFU is then "share of what XLA's own matmul reaches here", the yardstick the
benchmarks quote too. MFU's definition: PaLM, arXiv 2204.02311 app. B.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from vqlab.nn.precision import check_compute_dtype

# Dense peak FLOP/s per device (jax.Device), by a substring of `device_kind`, for
# bfloat16 and float32 inputs at JAX's default matmul precision: on NVIDIA Ampere and
# later float32 matmuls run as TF32, on TPUs as one bfloat16 pass, so their float32
# peak is that rate. Vendors' datasheets.
PEAK_FLOPS = (
    ("H200", {"bfloat16": 989e12, "float32": 494e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float32": 494e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    ("TPU v6 lite", {"bfloat16": 918e12, "float32": 918e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
)
TIMING_PREFIX = "perf/"  # logged timing varies run to run: comparisons drop these keys


@functools.cache
def measured_matmul_flops(platform: str, dtype: str, n: int = 1024) -> float:
  """FLOP/s of an (n, n) @ (n, n) matmul in `dtype` on the default device: median of
  repeats after a warm-up (cached per process)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(7):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / sorted(times)[len(times) // 2]


def peak_flops(device: jax.Device, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of one device for `dtype`, where it came from: "datasheet" or
  "measured matmul")."""
  check_compute_dtype(dtype, "compute dtype")
  for name, rates in PEAK_FLOPS:
    if name in device.device_kind:
      return rates[dtype], "datasheet"
  return measured_matmul_flops(device.platform, dtype), "measured matmul"


def _dot_flops(eqn) -> float:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  lhs_free = math.prod(n for d, n in enumerate(lhs) if d not in lc and d not in lb)
  rhs_free = math.prod(n for d, n in enumerate(rhs) if d not in rc and d not in rb)
  return 2.0 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn) -> float:
  """2 x output elements x the kernel's elements per output feature (its spatial
  extent x input features per group), over the input dilation: a transposed (strided
  up-sampling) convolution, and the input gradient of a strided one, run on an input
  with zeros between its samples, and products with those zeros are not the model's.
  The kernel's gradient is a convolution with the cotangent: the forward count."""
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  zeros_between = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2.0 * math.prod(out) * math.prod(rhs) / out_features / zeros_between


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a (closed) jaxpr, into every sub-computation: a
  scan's body times its length, a cond's costliest branch, a while loop's body once
  (its trip count is not known before running); Pallas kernels are not counted."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "pallas_call":
      continue
    elif name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    else:
      times = eqn.params.get("length", 1) if name == "scan" else 1
      for sub in jex_core.jaxprs_in_params(eqn.params):
        total += times * jaxpr_flops(sub)
  return total


def step_flops(jitted: Callable, *args) -> float:
  """Model FLOPs of one call of `jitted(*args)`: the matmuls and convolutions of its
  jaxpr (forward and backward), as PaLM's MFU counts them. Traced, not compiled, so
  the count is the same on every backend and dtype (XLA's compiled cost analysis is
  not: on an H200 it gave 9.7 and 31.7 TFLOP for one generator step in float32 and
  bf16; GPUs give none before compiling). Kernel taps over a convolution's padding
  count, as in most MFU counts; XLA's CPU analysis leaves them out (the 32x32 VQGAN
  quickstart step: 18.4 vs 15.2 GFLOP; codec 172 vs 165; generator 25.4 vs 25.6)."""
  return jaxpr_flops(jitted.trace(*args).jaxpr)


class Throughput:
  """The steps of one logging window and their wall time; `scalars` turns them into the
  logged numbers: steps/s and the `perf/` ones (step time, examples/s, each unit/s such
  as tokens or audio seconds, achieved FLOP/s and MFU over all devices).

  Time the training loop spends on other work (images, evaluation, checkpoint writes) is
  `exclude`d; `restart` drops the window so far (after a step that compiled)."""

  def __init__(self, peak_per_device: float = float("nan"), num_devices: int = 1):
    self.peak = peak_per_device * num_devices
    self.restart()

  def restart(self) -> None:
    self.steps, self.flops, self.examples, self.units = 0, 0.0, 0, {}
    self.start, self.excluded = time.perf_counter(), 0.0

  def exclude(self, seconds: float) -> None:
    self.excluded += seconds

  def add(self, flops: float = float("nan"), examples: int = 0,
          units: dict[str, float] | None = None) -> None:
    self.steps += 1
    self.flops += flops
    self.examples += examples
    for k, v in (units or {}).items():
      self.units[k] = self.units.get(k, 0.0) + v

  def scalars(self) -> dict[str, float]:
    """The window's numbers ({} if it timed no step); starts the next window."""
    seconds = time.perf_counter() - self.start - self.excluded
    steps = self.steps
    out = self._scalars(seconds) if steps and seconds > 0 else {}
    self.restart()
    return out

  def _scalars(self, seconds: float) -> dict[str, float]:
    p = TIMING_PREFIX
    out = {"steps_per_second": self.steps / seconds,
           f"{p}step_seconds": seconds / self.steps,
           f"{p}examples_per_second": self.examples / seconds,
           **{f"{p}{k}_per_second": v / seconds for k, v in self.units.items()}}
    if self.flops == self.flops and self.peak == self.peak:  # not NaN
      out[f"{p}flops_per_second"] = self.flops / seconds
      out[f"{p}mfu"] = self.flops / seconds / self.peak
    return out


def without_timing(row: dict[str, Any]) -> dict[str, Any]:
  """A metrics row without what depends on the machine's speed (resume comparisons)."""
  return {k: v for k, v in row.items()
          if k != "steps_per_second" and not k.startswith(TIMING_PREFIX)}
