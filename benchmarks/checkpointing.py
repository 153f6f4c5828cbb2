"""Does checkpointing stall training? Mean step time of a jitted train-like step over a
state of `--params` float32 parameters + Adam moments, with no saves, with async saves
(vqlab's default: the step goes on while orbax writes) and with blocking saves, every
`--every` steps, all measured in one run.

  python benchmarks/checkpointing.py [--params 25_000_000] [--steps 40] [--every 10]
"""

import argparse
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp

from vqlab.checkpoint import Checkpointer


def make_state(n: int):
  key = jax.random.key(0)
  w = jax.random.normal(key, (n // 1024, 1024))
  return {"params": w, "mu": jnp.zeros_like(w), "nu": jnp.zeros_like(w)}


@jax.jit
def step(state):
  """An Adam-like update with a matmul on a slice: memory-bound, like a real step."""
  w = state["params"]
  g = jnp.tanh(w[:512] @ w[:512].T).sum() * 1e-6 + w * 1e-3
  mu = 0.9 * state["mu"] + 0.1 * g
  nu = 0.999 * state["nu"] + 0.001 * g * g
  return {"params": w - 1e-3 * mu / (jnp.sqrt(nu) + 1e-8), "mu": mu, "nu": nu}


def run(state, steps: int, every: int, mode: str) -> float:
  directory = tempfile.mkdtemp(prefix="vqlab_bench_ckpt_")
  ckpt = None if mode == "none" else Checkpointer(directory, max_to_keep=2,
                                                  async_save=mode == "async")
  state = jax.block_until_ready(step(state))  # compiled
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state = step(state)
    if ckpt is not None and i % every == 0:
      ckpt.save(i, state)
  jax.block_until_ready(state)
  seconds = (time.perf_counter() - start) / steps
  if ckpt is not None:
    ckpt.close()  # the last async save finishes outside the timed loop, as in training
  shutil.rmtree(directory, ignore_errors=True)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--params", type=int, default=25_000_000)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--every", type=int, default=10)
  args = parser.parse_args()
  state = make_state(args.params)
  mib = 3 * args.params * 4 / 2**20
  print(f"# Checkpointing, {args.params:,} parameters + 2 Adam moments ({mib:,.0f} MiB), "
        f"a save every {args.every} steps, {args.steps} steps, {jax.devices()[0].platform}\n")
  print("| saves | mean step s | vs no saves |")
  print("|---|---:|---:|")
  base = None
  for mode in ("none", "async", "blocking"):
    t = run(state, args.steps, args.every, mode)
    base = base or t
    print(f"| {mode} | {t:.4f} | {t / base:.2f}x |")


if __name__ == "__main__":
  main()
