"""Input-pipeline throughput against the train step's demand, on ImageNet-shaped JPEGs.

  python benchmarks/data.py                      # this machine's cores
  python benchmarks/data.py --workers 0,1,2,4 --batches 40

The records are `vqlab_jpeg_photos` (built-in: JPEG views of the bundled photographs at
ImageNet's sizes, prepared in --data_dir on first use). The pipeline is the trainer's own
(`vqlab.data.pipeline.image_dataset` + `iterate`) with `configs/vqgan_imagenet_f16.py`'s
data settings: decode, a random square crop of 256..512 px resized to 256, flip, batch.

Printed: images/s of the decode alone and of decode + crop + batch, in-process (reader
threads, one GIL) and with grain worker processes, each per core used; then the step's
demand: images/s one device consumes at a stated MFU, from the traced FLOPs of the
ImageNet tokenizers' train steps (vqlab/train/utilisation.py) and datasheet peaks, and
the host cores per device the measured pipeline needs to keep up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from configs import titok_imagenet, vit_vqgan_imagenet, vqgan_imagenet_f16
from vqlab.data import builtin
from vqlab.data.pipeline import image_dataset, iterate
from vqlab.train import utilisation


def images_per_second(it, batch: int, batches: int, warmup: int = 2) -> float:
  """Images/s over `batches` batches after `warmup` (worker start-up, first decodes)."""
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t)


def decode_rate(source, n: int) -> float:
  """Records/s of reading + decoding alone, one thread."""
  t = time.perf_counter()
  for i in range(n):
    source[i % len(source)]["image"]
  return n / (time.perf_counter() - t)


def flops_per_example(config) -> float:
  """Traced FLOPs (forward + backward, generator and discriminator steps) of one training
  example of `config`'s tokenizer, without compiling: the same count the trainer logs."""
  import jax
  from vqlab import parallel
  from vqlab.train import tokenizer
  import train_steps  # benchmarks/: the trainers' own compiled step on random batches

  config.loss.lpips_weights = "random"  # LPIPS's compute without its converted weights
  config.train.batch_size = 1
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  step, state, batch, args = train_steps.tokenizer_step(tokenizer.ImageTokenizerJob, config,
                                                        mesh)
  return utilisation.step_flops(step, state, batch, *args)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "vqlab-bench-tfds"))
  parser.add_argument("--workers", default="", help="comma-separated counts; default 1, 2 and the cores")
  parser.add_argument("--threads", type=int, default=0, help="in-process threads; 0: cores")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--no-demand", action="store_true", help="skip the FLOP counts")
  args = parser.parse_args()
  cores = len(os.sched_getaffinity(0))
  threads = args.threads or cores
  workers = ([int(w) for w in args.workers.split(",")] if args.workers
             else sorted({1, 2, cores} - {0}))
  source = builtin.load("vqlab_jpeg_photos", args.data_dir, "train")
  pixels = np.mean([np.prod(source[i]["image"].shape[:2]) for i in range(0, len(source), 10)])
  d = vqgan_imagenet_f16.get_config().data
  ds = image_dataset(source, batch_size=args.batch, image_size=d.image_size, seed=0,
                     min_crop=d.min_crop, max_crop=d.max_crop, flip=d.flip)
  print(f"# Input pipeline: {cores} cores; {len(source)} JPEG records of "
        f"{pixels / 1e3:.0f} kpx on average (ImageNet's: ~110 kpx); crops "
        f"{d.min_crop}..{d.max_crop} px -> {d.image_size}, flip, batch {args.batch}\n")
  print("| pipeline | images/s | cores used | images/s per core |")
  print("|---|---:|---:|---:|")
  rate = decode_rate(source, 200)
  print(f"| read + JPEG decode only, 1 thread | {rate:.0f} | 1 | {rate:.0f} |", flush=True)
  rows = [("in-process, 1 thread", 1, 0, 1), (f"in-process, {threads} threads", threads, 0,
                                                min(threads, cores))]
  rows += [(f"{w} worker process{'es' if w > 1 else ''} x 1 thread", 1, w, min(w, cores))
           for w in workers]
  per_core = {}
  for name, t, w, used in rows:
    it = iterate(ds, threads=t, prefetch=2 * args.batch, workers=w)
    try:
      r = images_per_second(it, args.batch, args.batches, warmup=2 + w)
    finally:
      it.close()
    per_core[name] = r / used
    print(f"| {name} | {r:.1f} | {used} | {r / used:.1f} |", flush=True)
  # a host scales by worker processes: their per-core rate is what each core adds
  scaling = [v for k, v in per_core.items() if "worker" in k] or list(per_core.values())
  best = max(scaling)
  if args.no_demand:
    return
  print(f"\n# Step demand at {100 * args.mfu:.0f}% MFU (traced FLOPs per example, datasheet "
        f"bf16 peaks) and host cores per device to feed it at {best:.1f} images/s per core "
        "(the best worker-process rate above)\n")
  configs = {"VQGAN f16 (taming)": vqgan_imagenet_f16.get_config(),
             "ViT-VQGAN": vit_vqgan_imagenet.get_config(),
             "TiTok-L-32 (one stage)": titok_imagenet.get_config("single")}
  devices = ("H100", "A100", "TPU v5 lite", "TPU v5")
  print("| tokenizer, 256 px | GFLOP / example | "
        + " | ".join(f"{k}: images/s, cores" for k in devices) + " |")
  print("|---|---:|" + "---:|" * len(devices))
  for name, config in configs.items():
    flops = flops_per_example(config)
    cells = []
    for kind in devices:
      peak = dict(utilisation.PEAK_FLOPS)[kind]["bfloat16"]
      demand = args.mfu * peak / flops
      cells.append(f"{demand:,.0f}, {demand / best:.1f}")
    print(f"| {name} | {flops / 1e9:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
