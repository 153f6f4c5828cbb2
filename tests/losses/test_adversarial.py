"""GAN losses, VQGAN's adaptive weight and LeCam against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.losses.adversarial import (adaptive_weight, discriminator_loss, generator_loss,
                                      lecam_regularization)
from vqlab.models.discriminator import PatchGAN
from vqlab.models.vit_vqgan import TINY as VIT_TINY, ViTDecoder
from vqlab.models.vqgan import TINY, Decoder


def _logits(seed):
  return jax.random.normal(jax.random.key(seed), (4, 6, 6, 1)) * 2


def test_hinge_and_non_saturating_losses():
  real, fake = np.asarray(_logits(0)), np.asarray(_logits(1))
  np.testing.assert_allclose(discriminator_loss(real, fake, "hinge"),
                             0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()),
                             rtol=1e-6)
  np.testing.assert_allclose(generator_loss(fake, "hinge"), -fake.mean(), rtol=1e-6)
  softplus = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(discriminator_loss(real, fake, "non_saturating"),
                             0.5 * (softplus(-real).mean() + softplus(fake).mean()), rtol=1e-5)
  np.testing.assert_allclose(generator_loss(fake, "non_saturating"), softplus(-fake).mean(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="gan_loss"):
    generator_loss(fake, "wasserstein")


@pytest.mark.parametrize("arch", ["vqgan", "vit"])
def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms(arch):
  rngs = nnx.Rngs(0)
  if arch == "vqgan":
    dec, grid, dim, last = Decoder(TINY, rngs), 16, TINY.embed_dim, "conv_out"
  else:
    dec, grid, dim, last = ViTDecoder(VIT_TINY, rngs), 8, VIT_TINY.latent_dim, "to_pixels"
  disc = PatchGAN(3, width=8, n_layers=2, norm="none", rngs=rngs)
  z = jax.random.normal(jax.random.key(1), (2, grid, grid, dim))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  nll = lambda y: jnp.mean(jnp.abs(y - x))
  gan = lambda y: generator_loss(disc(y))
  h = dec.features(z)
  w = adaptive_weight(lambda k: dec.last_layer(h, k), dec.last_kernel, nll, gan, disc_weight=0.8)
  # Reference: gradients of the whole decoder's losses w.r.t. the last layer's kernel.
  grads = lambda loss: nnx.grad(lambda d: loss(d(z)))(dec)[last]["kernel"][...]
  want = 0.8 * jnp.linalg.norm(grads(nll)) / (jnp.linalg.norm(grads(gan)) + 1e-4)
  np.testing.assert_allclose(w, want, rtol=1e-4)
  np.testing.assert_allclose(dec.last_layer(h, dec.last_kernel), dec(z), atol=1e-5)


def test_lecam_regularization():
  real, fake = np.asarray(_logits(3)), np.asarray(_logits(4))
  want = (np.maximum(0, real - 0.3) ** 2).mean() + (np.maximum(0, -0.2 - fake) ** 2).mean()
  np.testing.assert_allclose(lecam_regularization(real, fake, -0.2, 0.3), want, rtol=1e-5)
