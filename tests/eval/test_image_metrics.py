"""PSNR, SSIM against scikit-image, Frechet distance against scipy."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from skimage.metrics import structural_similarity

from vqlab.eval.image_metrics import (frechet_distance, gaussian_stats, inception_score, psnr,
                                     ssim)


def _pair(seed, shape=(2, 24, 20, 3)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  return x, np.clip(x + 0.2 * rng.normal(size=shape), -1, 1).astype(np.float32)


def test_psnr_definition():
  x, y = _pair(0)
  mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(psnr(jnp.asarray(x), jnp.asarray(y)), 10 * np.log10(4 / mse),
                             rtol=1e-5)


def test_ssim_matches_scikit_image():
  x, y = _pair(1)
  got = ssim(jnp.asarray(x), jnp.asarray(y))
  want = [structural_similarity(x[i], y[i], data_range=2.0, channel_axis=-1,
                                gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ssim(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="H, W >= 11"):
    ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


def test_frechet_distance_matches_scipy():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(500, 16))
  b = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
  (m1, s1), (m2, s2) = gaussian_stats(a), gaussian_stats(b)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  want = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(frechet_distance(m1, s1, m2, s2), want, rtol=1e-6)
  np.testing.assert_allclose(frechet_distance(m1, s1, m1, s1), 0.0, atol=1e-8)
  with pytest.raises(ValueError, match="mu1, sigma1"):
    frechet_distance(m1, s1, m2[:3], s2)


def test_inception_score_limits_and_definition():
  confident = np.full((40, 8), -50.0)
  confident[np.arange(40), np.arange(40) % 4] = 50.0  # sure of one of 4 classes, evenly
  mean, std = inception_score(confident, splits=2)
  np.testing.assert_allclose([mean, std], [4.0, 0.0], atol=1e-6)  # = number of classes used
  same = np.tile(np.linspace(-1, 1, 8), (40, 1))  # one prediction for every sample
  np.testing.assert_allclose(inception_score(same, splits=2)[0], 1.0, atol=1e-9)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(30, 5)) * 2
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  py = p.mean(0)
  want = np.exp(np.mean(np.sum(p * np.log(p / py), 1)))  # one split: the formula
  np.testing.assert_allclose(inception_score(logits, splits=1)[0], want, rtol=1e-10)
  with pytest.raises(ValueError, match="logits"):
    inception_score(logits[:3], splits=10)
