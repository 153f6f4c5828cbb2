"""Multi-process start-up: `initialize()` runs `jax.distributed.initialize` when the
environment asks for it, before any computation. The `vqlab` command calls it first.

- VQLAB_COORDINATOR=host:port, VQLAB_NUM_PROCESSES=N, VQLAB_PROCESS_ID=i: explicit
  (launch/local.py sets them; any cluster can).
- VQLAB_DISTRIBUTED=1: JAX's own detection (TPU pod workers, SLURM `srun`, ...).
- neither: one process, nothing to do.
On CPU, collectives between processes go through gloo.
"""

from __future__ import annotations

import os

import jax

ENV = ("VQLAB_COORDINATOR", "VQLAB_NUM_PROCESSES", "VQLAB_PROCESS_ID")


def initialize() -> bool:
  """Join the multi-process job described by the environment; False when single."""
  explicit = [os.environ.get(k) for k in ENV]
  if any(explicit) and not all(explicit):
    raise ValueError(f"environment: set all of {ENV} or none, got "
                     f"{dict(zip(ENV, explicit))}")
  if not all(explicit) and os.environ.get("VQLAB_DISTRIBUTED", "") not in ("1", "true"):
    return False
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(explicit):
    jax.distributed.initialize(explicit[0], num_processes=int(explicit[1]),
                               process_id=int(explicit[2]))
  else:
    jax.distributed.initialize()
  return True
