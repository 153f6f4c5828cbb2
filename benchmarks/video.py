"""Video tokenizer speed: encode / decode frames per second and memory of the causal 3D
tokenizer at the quickstart's shape (Moving MNIST, 9 x 32 x 32 x 1) and MAGVIT-v2's
UCF-101 shape (17 x 128 x 128 x 3), on whatever device jax has.

  python benchmarks/video.py [--repeats 3] [--only quickstart|ucf101]

Per shape: one jitted encode (clip -> indices) and decode (indices -> clip) of a batch,
frames per second (batch x frames / median wall time), the model FLOPs of each traced
call (vqlab.train.utilisation.step_flops) and their rate against a float32 matmul timed
in the same run, and the compiled call's temporary memory (XLA's memory analysis; the
argument and output buffers are extra). Prints a markdown table; the README quotes it.
"""

from __future__ import annotations

import argparse

import jax
from flax import nnx

from configs import video_quickstart, video_ucf101
from timing import matmul_flops_per_second, median_time
from vqlab.train import tokenizer, utilisation

SHAPES = {"quickstart": (video_quickstart, 8), "ucf101": (video_ucf101, 1)}


def rows(name: str, repeats: int, matmul: float):
  module, batch = SHAPES[name]
  c = module.get_config()
  model = tokenizer.build_model(c, 0)
  model.eval()
  graphdef, state = nnx.split(model)
  size, frames = c.data.image_size, c.data.num_frames
  x = jax.random.uniform(jax.random.key(0), (batch, frames, size, size, model.channels),
                         minval=-1, maxval=1)
  encode = jax.jit(lambda s, v: nnx.merge(graphdef, s).encode(v).indices)
  decode = jax.jit(lambda s, i: nnx.merge(graphdef, s).decode(i, frames))
  indices = encode(state, x)
  for what, fn, arg in (("encode", encode, x), ("decode", decode, indices)):
    seconds = median_time(lambda: jax.block_until_ready(fn(state, arg)), repeats)
    flops = utilisation.step_flops(fn, state, arg)
    memory = fn.lower(state, arg).compile().memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20
    yield (f"| {name} | {what} | {batch} x {frames} x {size}^2 | "
           f"{tuple(indices.shape[1:])} | {batch * frames / seconds:.1f} | "
           f"{flops / 1e9:.1f} | {flops / seconds / matmul:.2f} | {temp:.0f} |")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--only", choices=sorted(SHAPES), default=None)
  args = parser.parse_args()
  matmul = matmul_flops_per_second(args.repeats)
  print(f"device: {jax.devices()[0].device_kind}; float32 matmul {matmul / 1e9:.0f} GFLOP/s")
  print("| shape | call | batch x frames x side | tokens a clip | frames/s | GFLOP | "
        "of matmul rate | temp MiB |")
  print("|---|---|---|---|---|---|---|---|")
  for name in [args.only] if args.only else SHAPES:
    for row in rows(name, args.repeats, matmul):
      print(row, flush=True)


if __name__ == "__main__":
  main()
