"""Run a vqlab job as N processes on this machine: multi-process testing on CPU, or one
process per GPU. Every process runs the same command with VQLAB_COORDINATOR /
VQLAB_NUM_PROCESSES / VQLAB_PROCESS_ID set (vqlab.distributed joins them).

  python launch/local.py --processes 2 --cpu-devices 4 -- \\
      vqlab generate --config configs/generator_quickstart.py:raster --workdir runs/g2

SIGTERM / Ctrl-C are passed on to every process (each saves and exits 0); when one
process fails the others are stopped, and the launcher exits with the first failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--processes", type=int, required=True)
  parser.add_argument("--cpu-devices", type=int, default=0,
                      help="run on CPU with this many devices per process (0: default backend)")
  parser.add_argument("--gpus-per-process", type=int, default=0,
                      help="give process i GPUs [i*k, (i+1)*k) via CUDA_VISIBLE_DEVICES")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the job's command")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if args.processes < 1 or not command:
    parser.error("expected --processes >= 1 and a command after --")
  address = f"localhost:{free_port()}"
  procs = []
  for i in range(args.processes):
    env = dict(os.environ, VQLAB_COORDINATOR=address, VQLAB_NUM_PROCESSES=str(args.processes),
               VQLAB_PROCESS_ID=str(i))
    if args.cpu_devices:
      env.update(JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={args.cpu_devices}")
    if args.gpus_per_process:
      k = args.gpus_per_process
      env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * k, (i + 1) * k))
    procs.append(subprocess.Popen(command, env=env))

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  while True:
    codes = [p.poll() for p in procs]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
      forward(signal.SIGTERM, None)
      for p in procs:
        p.wait()
      return failed[0]
    if all(c == 0 for c in codes):
      return 0
    time.sleep(0.2)


if __name__ == "__main__":
  sys.exit(main())
