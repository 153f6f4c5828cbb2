"""Wall-clock timing shared by the benchmarks (run as scripts: `python benchmarks/x.py`)."""

import statistics
import time


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
