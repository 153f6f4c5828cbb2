"""Train-step time and model FLOPs utilisation of every trainer, float32 vs bfloat16.

  python benchmarks/train_steps.py                 # CPU-sized: the quickstart configs
  python benchmarks/train_steps.py --preset gpu    # ImageNet-sized configs, for an accelerator

Each job's compiled step (the trainer's own: the skeleton's `Job.compile`, the variant it
runs at its last step, e.g. with the discriminator on) on random batches of the config's
shapes: median step time over `--steps` timed steps after the compiling one, examples/s,
FLOPs per step (XLA's cost analysis of the lowered step) and MFU against the device's
peak for the compute dtype (vqlab/train/utilisation.py: a datasheet table, or a matmul
measured here on CPUs). Prints a markdown table; the README quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import audio_codec as codec_config
from configs import generator_quickstart, vit_vqgan_imagenet, vqgan_imagenet_f16, vqgan_quickstart
from vqlab import parallel
from vqlab.train import codec, generator, tokenizer, utilisation

JOBS = ("vqgan", "vit_vqgan", "codec", "generator")


def configs(preset: str) -> dict:
  """{job: config}: `cpu` = the quickstart configs as they train; `gpu` = the
  ImageNet / DAC / LlamaGen-sized ones (batches cut to fit one device's step)."""
  if preset == "cpu":
    vit = vit_vqgan_imagenet.get_config("runlocal")
    vit.train.batch_size = 32
    out = {"vqgan": vqgan_quickstart.get_config(), "vit_vqgan": vit,
           "codec": codec_config.get_config(),
           "generator": generator_quickstart.get_config("raster")}
    out["generator_latent"] = 8
    return out
  vq = vqgan_imagenet_f16.get_config()
  vq.train.batch_size = 32
  vit = vit_vqgan_imagenet.get_config()
  vit.train.batch_size = 64
  for c in (vq, vit):  # LPIPS's compute without its converted weights
    c.loss.lpips_weights = "random"
  dac = codec_config.get_config("dac")
  dac.train.batch_size = 64
  dac.data.crop_seconds = 1.0
  dac.loss.disc_start = 0
  gen = generator_quickstart.get_config("raster")
  gen.model.update(width=1024, depth=16, heads=16)
  gen.train.batch_size = 128
  return {"vqgan": vq, "vit_vqgan": vit, "codec": dac, "generator": gen,
          "generator_latent": 16}


def random_batch(abstract: dict, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in abstract.items():
    if np.issubdtype(s.dtype, np.integer):
      high = 256 if s.dtype == np.uint8 else 2
      out[k] = jnp.asarray(rng.integers(0, high, s.shape).astype(s.dtype))
    else:
      out[k] = jnp.asarray(0.1 * rng.normal(size=s.shape).astype(s.dtype))
  return out


def tokenizer_step(job_cls, config, mesh):
  """(step, state, batch, args) of a tokenizer / codec job, as `train_job` builds them."""
  job = job_cls(config, workdir="")
  job.mesh = mesh
  job.load()
  graphdef, state = job.init_state()
  shardings = parallel.config_shardings(state, mesh, config.mesh)
  state = parallel.put(state, shardings)
  step = job.compile(graphdef, shardings)[job.variant(config.train.steps - 1)]
  return step, state, random_batch(job.abstract_batch()), job.step_args()


def generator_step(config, mesh, latent: int):
  """The generator's step over `latent` x `latent` tokens of an (untrained) tokenizer."""
  tok_config = vqgan_quickstart.get_config()
  tok = tokenizer.build_model(tok_config, 0)
  graphdef, state = generator.init_state(config, tok, {"latent_size": latent})
  shardings = parallel.config_shardings(state, mesh, config.mesh)
  state = parallel.put(state, shardings)
  job = generator.GeneratorJob(config, workdir="")  # its compile, without its load()
  job.mesh = mesh
  job.q_graphdef, job.q_state = nnx.split(tok.quantizer)
  step = job.compile(graphdef, shardings)[None]
  b = config.train.batch_size
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, 1024, (b, latent * latent)), jnp.int32),
           "label": jnp.zeros((b,), jnp.int32)}
  return step, state, batch, job.step_args()


def measure(step, state, batch, args, steps: int) -> tuple[float, float]:
  """(median seconds per step, FLOPs per step)."""
  flops = utilisation.step_flops(step, state, batch, *args)
  state, metrics = step(state, batch, *args)  # compile
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, batch, *args)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return statistics.median(times), flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--jobs", default=",".join(JOBS))
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"# Train steps, preset {args.preset}: {device.device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} cores\n")
  print("| job | batch | compute | step ms | examples/s | GFLOP/step | MFU | peak from | "
        "bf16 speed-up |")
  print("|---|---:|---|---:|---:|---:|---:|---|---:|")
  presets = configs(args.preset)
  for name in args.jobs.split(","):
    f32_time = None
    for dtype in args.dtypes.split(","):
      config = presets[name]
      config.train.compute_dtype = dtype
      mesh = parallel.make_mesh({a: config.mesh[a] for a in parallel.AXES})
      try:
        if name == "generator":
          built = generator_step(config, mesh, presets["generator_latent"])
        else:
          job_cls = codec.CodecJob if name == "codec" else tokenizer.ImageTokenizerJob
          built = tokenizer_step(job_cls, config, mesh)
        seconds, flops = measure(*built, args.steps)
      except Exception as e:  # one job's failure must not hide the others' numbers
        print(f"| {name} | {config.train.batch_size} | {dtype} | failed: "
              f"{type(e).__name__}: {str(e)[:200]} |||||", flush=True)
        continue
      peak, source = utilisation.peak_flops(device, dtype)
      mfu = flops / seconds / (peak * jax.device_count())
      speedup = "" if dtype == "float32" or f32_time is None else f"{f32_time / seconds:.2f}x"
      f32_time = seconds if dtype == "float32" else f32_time
      b = config.train.batch_size
      print(f"| {name} | {b} | {dtype} | {seconds * 1e3:.1f} | {b / seconds:.1f} | "
            f"{flops / 1e9:.1f} | {100 * mfu:.1f}% | {source} | {speedup} |", flush=True)


if __name__ == "__main__":
  main()
