"""GAN losses for tokenizers, as in VQGAN (taming-transformers) and MaskGIT / MAGVIT.

- hinge and non-saturating ("vanilla") discriminator / generator losses;
- the adaptive generator weight of VQGAN: |grad_W nll| / (|grad_W g| + 1e-4) at the
  decoder's last layer W, clipped to [0, 1e4], times `disc_weight`;
- LeCam regularisation (Tseng et al. 2021, https://arxiv.org/abs/2104.03310): the
  discriminator's outputs are pulled towards EMAs of its outputs on the other side.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

GAN_LOSSES = ("hinge", "non_saturating")


def check_gan_loss(kind: str) -> None:
  if kind not in GAN_LOSSES:
    raise ValueError(f"gan_loss: expected one of {GAN_LOSSES}, got {kind!r}")


def discriminator_loss(real_logits: Array, fake_logits: Array, kind: str = "hinge") -> Array:
  """0.5 * (loss on real + loss on fake), taming's convention."""
  check_gan_loss(kind)
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
  return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))


def generator_loss(fake_logits: Array, kind: str = "hinge") -> Array:
  check_gan_loss(kind)
  fake = fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return -jnp.mean(fake)
  return jnp.mean(jax.nn.softplus(-fake))


def adaptive_weight(last_layer: Callable[[Array], Array], kernel: Array,
                    nll_fn: Callable[[Array], Array], gan_fn: Callable[[Array], Array],
                    disc_weight: float = 1.0, max_weight: float = 1e4) -> Array:
  """VQGAN's balance between the reconstruction and GAN terms.

  last_layer(kernel) -> images is the decoder's last layer applied to its (fixed) input
  features; nll_fn / gan_fn map images to the two scalar losses. The weight is a
  constant for the optimizer (stop-gradient), as in taming.
  """
  return weight_from_gradients(*last_layer_gradients(last_layer, kernel, nll_fn, gan_fn),
                               disc_weight, max_weight)


def last_layer_gradients(last_layer: Callable[[Array], Array], kernel: Array,
                         nll_fn: Callable[[Array], Array], gan_fn: Callable[[Array], Array]
                         ) -> tuple[Array, Array]:
  """(d nll / d kernel, d gan / d kernel) at the decoder's last layer (see adaptive_weight).
  Both are linear in the losses: a batch's are the sums of its slices' (each loss weighted
  by its slice's share), which is how accumulated micro-batches get the batch's weight."""
  return (jax.grad(lambda k: nll_fn(last_layer(k)))(kernel),
          jax.grad(lambda k: gan_fn(last_layer(k)))(kernel))


def weight_from_gradients(nll_grad: Array, gan_grad: Array, disc_weight: float = 1.0,
                          max_weight: float = 1e4) -> Array:
  """|nll_grad| / (|gan_grad| + 1e-4), clipped to [0, max_weight], times disc_weight."""
  weight = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(gan_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight) * disc_weight)


def lecam_regularization(real_logits: Array, fake_logits: Array, ema_real: Array,
                         ema_fake: Array) -> Array:
  """mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)."""
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  return (jnp.mean(jnp.square(jax.nn.relu(real - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake))))
