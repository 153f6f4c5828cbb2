"""Gradient accumulation (train.grad_accum_steps): micro-batches give the large batch's
loss and gradients, in one micro-batch's activation memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import audio_codec, generator_quickstart, vqgan_quickstart
from vqlab.train import codec, generator, tokenizer
from vqlab.train.common import accumulated_value_and_grad


def generator_setup(paradigm: str):
  config = generator_quickstart.get_config(f"{paradigm},runlocal")
  config.train.batch_size = 8
  tok = tokenizer.build_model(vqgan_quickstart.get_config("runlocal"), 0)
  graphdef, state = generator.init_state(config, tok, {"latent_size": 8})
  q_graphdef, q_state = nnx.split(tok.quantizer)
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, tok.quantizer.codebook_size, (8, 64)),
                                 jnp.int32),
           "label": jnp.zeros((8,), jnp.int32)}
  return config, graphdef, state, q_graphdef, q_state, batch


@pytest.mark.parametrize("paradigm", ["raster", "maskgit"])
def test_micro_batches_give_the_large_batch_step(paradigm):
  """One generator step at 1 and 4 micro-batches from the same state: the loss, the
  accuracy and the gradient norm agree to float32 rounding (a mean of micro-batch means
  would not, for MaskGIT's masks cover each micro-batch differently)."""
  config, graphdef, state, q_graphdef, q_state, batch = generator_setup(paradigm)
  out = {}
  for accum in (1, 4):
    spec = generator.StepSpec(paradigm, config.model.num_classes, config.train.label_dropout,
                              config.train.ema_decay, accum)
    step = jax.jit(functools.partial(generator.train_step, graphdef=graphdef,
                                     quantizer_graphdef=q_graphdef, spec=spec))
    out[accum] = step(jax.tree.map(jnp.copy, state), batch, q_state)[1]
  for k in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(out[4][k], out[1][k], rtol=2e-5, err_msg=k)


def test_accumulated_gradients_equal_the_full_batch_gradients():
  model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (12, 6))
  y = jax.random.normal(jax.random.key(2), (12, 3))

  def loss_fn(m, part):  # the slice's share of the batch's mean squared error
    return jnp.sum((m(part["x"]) - part["y"]) ** 2) / y.size, jnp.sum(part["x"][:, 0])
  (l1, a1), g1 = accumulated_value_and_grad(loss_fn, model, {"x": x, "y": y}, 1)
  (l3, a3), g3 = accumulated_value_and_grad(loss_fn, model, {"x": x, "y": y}, 3)
  np.testing.assert_allclose(l3, l1, rtol=1e-6)
  np.testing.assert_allclose(a3, a1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g3), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="grad_accum_steps: expected a divisor"):
    accumulated_value_and_grad(loss_fn, model, {"x": x, "y": y}, 5)


@pytest.mark.slow  # ~45 s of compile: CI's slow step (the image tokenizer's runs by default)
def test_codec_micro_batches_give_the_large_batch_step():
  """The codec's step and its discriminators' at 1 and 4 micro-batches from the same
  state: with terms that are means over examples (mel, waveform L1, a learned codebook's
  loss, the hinge losses) the losses and both gradient norms agree to float32 rounding.
  (The warm-up's relative error and feature matching are normalised per slice: there the
  step is the mean of the slices', by design, not the large batch's.)"""
  config = audio_codec.get_config("runlocal")
  config.model.quantizer.args.update(codebook="learned", kmeans_init=False,
                                     dead_code_threshold=0.0, quantizer_dropout=0.0)
  config.disc.periods = (2,)  # one period discriminator: the compile is the test's cost
  c = config.loss
  loss = codec.LossSpec(config.data.sample_rate, c.wave_l1, c.mel, 0.0, c.quantizer,
                        c.adversarial, 0.0)
  graphdef, state = codec.init_state(config)
  t = np.arange(3200) / 16000
  audio = np.stack([0.1 * (1 + i) * np.sin(2 * np.pi * (150 + 40 * i) * t) for i in range(8)])
  batch = {"audio": jnp.asarray(audio, jnp.float32)}
  out = {}
  for accum in (1, 4):
    step = jax.jit(functools.partial(codec.train_step, graphdef=graphdef, loss=loss, gan=True,
                                     micro_batches=accum))
    out[accum] = step(jax.tree.map(jnp.copy, state), batch)[1]
  for k in ("loss", "mel_loss", "grad_norm/codec", "si_sdr", "disc_loss",
            "grad_norm/discriminator"):
    np.testing.assert_allclose(out[4][k], out[1][k], rtol=1e-4, err_msg=k)


def test_image_tokenizer_micro_batches_give_the_large_batch_step():
  """The VQGAN step (the GAN with VQGAN's adaptive weight, LeCam) and its discriminator's
  at 1 and 4 micro-batches from the same state: the adaptive weight is the whole batch's
  (a look-ahead pass over the slices), so the losses, the weight and both gradient norms
  agree to float32 rounding. The mean of the four slices' own weights is 3.1% off the
  batch's here (measured with the 1-slice step on each slice). LPIPS is off: a mean over
  examples like the L1 term, it adds ~20 s of compile and nothing to what is checked."""
  config = vqgan_quickstart.get_config("runlocal")
  config.model.quantizer.args.update(codebook="learned", kmeans_init=False,
                                     dead_code_threshold=0.0)
  config.disc.norm = "none"  # a batch norm's statistics are per slice
  config.loss.lecam_weight = 0.1
  loss = tokenizer.LossSpec.from_config(config)
  graphdef, state = tokenizer.init_state(config)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)), jnp.uint8)
  out = {}
  for accum in (1, 4):
    step = jax.jit(functools.partial(tokenizer.train_step, graphdef=graphdef, loss=loss,
                                     gan=True, lpips_graphdef=None, micro_batches=accum))
    out[accum] = step(jax.tree.map(jnp.copy, state), images, None)[1]
  for k in ("loss", "recon_loss", "quantizer_loss", "generator_loss",
            "gan_weight", "psnr", "grad_norm/generator", "disc_loss", "disc/real_logits",
            "grad_norm/discriminator"):
    np.testing.assert_allclose(out[4][k], out[1][k], rtol=1e-4, err_msg=k)
