"""Does the codec's autoencoder learn to use its input? The quickstart codec's encoder,
quantizer and either decoder trained under one loss, outside the trainer.

  python benchmarks/codec_plateau.py --quantize --decoder seanet --loss mse --steps 150
  python benchmarks/codec_plateau.py --quantize --decoder istft --loss mel --steps 400 \\
      --mse_first 200

The audio issue's diagnostic (README "Audio codec quickstart"): under the log-mel loss the
codec sits on a plateau where the decoder's output hardly depends on its input. Adam with
the codec's b1 0.8, b2 0.99 at a constant lr, no quantizer loss (`--quantize` keeps the
quantizer's forward pass and straight-through gradient; without it the latent goes to
the decoder as is), one of: `mse` (the waveform's squared error over the signal's power,
`codec.relative_squared_error`: 1.0 for a silent output), `mel` (DAC's multi-scale
log-mel L1), `stft` (spectral convergence + log-magnitude L1), `mel+mse`; `--mse_first N`
trains on `mse` for the first N steps (the trainer's `loss.mse_warmup_steps`). Prints a
markdown row per 50 steps: the means of the batches' mel distance, relative squared error
and latent standard deviation.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs import audio_codec as codec_config
from vqlab.data import splits
from vqlab.losses import spectral
from vqlab.train import codec


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--loss", choices=("mse", "mel", "stft", "mel+mse"), default="mse")
  parser.add_argument("--decoder", choices=("seanet", "istft"), default="seanet")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--mse_first", type=int, default=0,
                      help="train on the waveform's squared error alone for this many steps first")
  parser.add_argument("--quantize", action="store_true",
                      help="put the quickstart's quantizer back between them (its loss unused)")
  parser.add_argument("--data_dir", default="~/tensorflow_datasets")
  args = parser.parse_args()

  config = codec_config.get_config()
  config.data.data_dir = args.data_dir
  rate = config.data.sample_rate
  config.model.shape.decoder = args.decoder
  model = codec.build_model(config, config.seed)
  batches = iter(splits.audio_split(config, "train", train=True,
                                    batch_size=config.train.batch_size))
  optimizer = nnx.Optimizer(model, optax.adam(args.lr, b1=config.train.b1, b2=config.train.b2),
                            wrt=nnx.Param)

  def loss_fn(model, x, kind):
    z = model.encoder(model.pad(x))
    y = model.decoder(model.quantize(z).quantized if args.quantize else z)[:, :x.shape[1], 0]
    mel, mse = spectral.multiscale_mel_loss(y, x, rate), codec.relative_squared_error(x, y)
    if kind == "stft":  # computed only when trained on; the rows report mel and mse
      value = spectral.multiscale_stft_loss(y, x)
    else:
      value = {"mel": mel, "mse": mse, "mel+mse": mel + mse}[kind]
    return value, (mel, mse, jnp.std(z))

  @nnx.jit(static_argnums=3)
  def step(model, optimizer, x, kind):
    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, kind)
    optimizer.update(model, grads)
    return aux

  print(f"{args.decoder} decoder, {args.loss} loss, lr {args.lr}")
  print("| steps | mel distance | relative squared error | latent std |\n|---:|---:|---:|---:|")
  window = []
  for i in range(args.steps):
    kind = "mse" if i < args.mse_first else args.loss
    x = jnp.asarray(np.asarray(next(batches)["audio"]))
    window.append([float(v) for v in step(model, optimizer, x, kind)])
    if (i + 1) % 50 == 0 or i == args.steps - 1:  # means over the steps since the last row
      mel, mse, z_std = np.mean(window, axis=0)
      print(f"| {i + 2 - len(window)}-{i + 1} | {mel:.3f} | {mse:.3f} | {z_std:.4f} |",
            flush=True)
      window = []


if __name__ == "__main__":
  main()
