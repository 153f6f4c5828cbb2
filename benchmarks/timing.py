"""Wall-clock timing shared by the benchmarks (run as scripts: `python benchmarks/x.py`)."""

import statistics
import time

import jax


def median_time(fn, repeats: int) -> float:
  """Median wall time of fn(); fast cases get more repeats (>= 0.5 s of timing in all)."""
  fn()  # compile / warm up
  t = time.perf_counter()
  fn()
  repeats = max(repeats, min(200, int(0.5 / max(time.perf_counter() - t, 1e-6))))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_flops_per_second(repeats: int, n: int = 2048) -> float:
  """float32 (n, n) @ (n, n) FLOP/s: the yardstick utilisation is quoted against."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / median_time(lambda: f(a).block_until_ready(), repeats)
