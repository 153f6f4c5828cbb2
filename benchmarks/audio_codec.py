"""Audio codec speed: whole-signal vs streaming coding, and the train step's FLOP rate.

  python benchmarks/audio_codec.py [--seconds 10 --repeats 3]

1. Encode + decode of a mono signal by the quickstart codec (16 kHz, 50 frames/s, with
   the SEANet decoder: the iSTFT one does not stream) and
   EnCodec's shape (24 kHz, 75 frames/s, LSTM): whole-signal (one jitted call) vs
   streaming in chunks of 1, 5 and 25 frames (one jitted call per chunk, state carried,
   as a real-time coder runs). Real-time factor = audio seconds per wall second.
2. The quickstart train step without the discriminators (reconstruction + quantizer):
   FLOPs from XLA's cost analysis and achieved FLOP/s against a float32 matmul measured
   in the same run.
Prints markdown tables; the README quotes them.
"""

from __future__ import annotations

import argparse

import jax
from flax import nnx

from configs import audio_codec as codec_config
from timing import matmul_flops_per_second, median_time
from vqlab import parallel
from vqlab.data import splits
from vqlab.models import audio_codec
from vqlab.train import codec



def build(variant: str) -> audio_codec.AudioCodec:
  c = codec_config.get_config(variant)
  c.model.shape.decoder = "seanet"  # the one that streams (the quickstart's iSTFT does not)
  model = codec.build_model(c, 0)
  model.eval()
  return model


def coding_rows(name: str, model: audio_codec.AudioCodec, seconds: float, repeats: int):
  x = 0.1 * jax.random.normal(jax.random.key(0), (1, int(seconds * model.sample_rate)))

  @nnx.jit
  def whole(m, x):
    return m.decode(m.encode(x).indices)

  t = median_time(lambda: whole(model, x).block_until_ready(), repeats)
  rows = [(name, "whole signal", "-", t, seconds / t)]
  for chunk in (1, 5, 25):
    def stream():
      indices = model.stream_encode(x, chunk)
      return model.stream_decode(indices, chunk).block_until_ready()
    t = median_time(stream, repeats)
    rows.append((name, f"{chunk} frame{'s' if chunk > 1 else ''}",
                 f"{chunk / model.frame_rate * 1000:.0f} ms", t, seconds / t))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"# {device.platform} x{jax.device_count()}, {args.seconds:g} s of audio\n")
  print("**Encode + decode, whole signal vs streaming**\n")
  print("| codec | processing | chunk | s | real-time factor |\n|---|---|---:|---:|---:|")
  for name, variant in (("quickstart 16 kHz", None), ("EnCodec shape 24 kHz", "encodec")):
    for row in coding_rows(name, build(variant), args.seconds, args.repeats):
      print("| {} | {} | {} | {:.3g} | {:.1f}x |".format(*row))

  config = codec_config.get_config(None)
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  graphdef, state = codec.init_state(config)
  shardings = parallel.state_shardings(state, mesh)
  state = parallel.put(state, shardings)
  job = codec.CodecJob(config, "")
  job.mesh = mesh
  step = job.compile(graphdef, shardings)[(False, False)]  # no GAN, no warm-up
  length = splits.crop_length(config, config.data.crop_seconds)
  audio = {"audio": 0.1 * jax.random.normal(jax.random.key(1),
                                            (config.train.batch_size, length))}
  compiled = step.lower(state, audio).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  flops = float(cost.get("flops", float("nan")))
  box = {"state": state}

  def run():
    box["state"], metrics = step(box["state"], audio)
    jax.block_until_ready(metrics["loss"])

  t_step = median_time(run, args.repeats)
  peak = matmul_flops_per_second(args.repeats)
  print(f"\n**Train step (quickstart, batch {config.train.batch_size} x "
        f"{config.data.crop_seconds:g} s, no discriminators)**\n")
  print("| train step s | GFLOP per step (XLA) | achieved GFLOP/s | f32 matmul GFLOP/s (same run) "
        "| utilisation |\n|---:|---:|---:|---:|---:|")
  print(f"| {t_step:.3g} | {flops / 1e9:.1f} | {flops / t_step / 1e9:.1f} | {peak / 1e9:.1f} | "
        f"{flops / t_step / peak:.1%} |")


if __name__ == "__main__":
  main()
