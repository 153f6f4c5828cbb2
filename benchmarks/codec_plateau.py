"""Does the codec's autoencoder learn at all? Its encoder and decoder trained with no
quantizer between them, on the built-in speech, under one loss.

  python benchmarks/codec_plateau.py --loss mse --decoder seanet --steps 150
  python benchmarks/codec_plateau.py --loss mse --decoder istft --steps 150

The audio issue's diagnostic: the quickstart codec sits on a plateau (the decoder's
output hardly depends on its input) for its first hundreds of steps. This trains the
quickstart's SEANet encoder and either decoder (`seanet`, or the iSTFT head of
vqlab.models.istft_decoder) with Adam (the codec's b1 0.8, b2 0.99, no schedule) on one
loss: `mse` (waveform squared error over the signal's power: 1.0 is a silent output),
`mel` (DAC's multi-scale log-mel L1), `stft` (spectral convergence + log-magnitude L1).
Prints, every 25 steps, the batch's mel distance, relative squared error and the
latent's standard deviation. One batch per line: read the trend, not a row.
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
from vqlab.models import audio_codec


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--loss", choices=("mse", "mel", "stft"), default="mse")
  parser.add_argument("--decoder", choices=("seanet", "istft"), default="seanet")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--data_dir", default="~/tensorflow_datasets")
  args = parser.parse_args()

  config = codec_config.get_config()
  config.data.data_dir = args.data_dir
  rate = config.data.sample_rate
  shape = {**config.model.shape, "decoder": args.decoder}
  # the quantizer is built (the codec needs one) and never called
  model = audio_codec.build(shape, "rvq", dict(codebook_size=16, num_levels=1), rate,
                            rngs=nnx.Rngs(config.seed))
  batches = iter(splits.audio_split(config, "train", train=True,
                                    batch_size=config.train.batch_size))
  optimizer = nnx.Optimizer(model, optax.adam(args.lr, b1=config.train.b1, b2=config.train.b2),
                            wrt=nnx.Param)

  def loss_fn(model, x):
    z = model.encoder(model.pad(x))
    y = model.decoder(z)[:, :x.shape[1], 0]
    terms = {"mel": spectral.multiscale_mel_loss(y, x, rate),
             "mse": jnp.mean(jnp.square(y - x)) / jnp.mean(jnp.square(x)),
             "stft": spectral.multiscale_stft_loss(y, x)}
    return terms[args.loss], (terms["mel"], terms["mse"], jnp.std(z))

  @nnx.jit
  def step(model, optimizer, x):
    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x)
    optimizer.update(model, grads)
    return aux

  print(f"{args.decoder} decoder, {args.loss} loss, lr {args.lr}")
  print("| step | mel distance | relative squared error | latent std |\n|---:|---:|---:|---:|")
  for i in range(args.steps):
    mel, mse, z_std = step(model, optimizer, jnp.asarray(np.asarray(next(batches)["audio"])))
    if i % 25 == 0 or i == args.steps - 1:
      print(f"| {i + 1} | {float(mel):.3f} | {float(mse):.3f} | {float(z_std):.4f} |", flush=True)


if __name__ == "__main__":
  main()
