"""Spectral losses, the audio discriminators' losses and the audio metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.eval import audio_metrics
from vqlab.losses import spectral
from vqlab.models import audio_discriminators as discs


def test_stft_matches_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 3000)).astype(np.float32)
  for n_fft, hop in ((512, 128), (64, 16), (2048, 512)):
    ours = np.asarray(spectral.stft(jnp.asarray(x), n_fft, hop))
    ref = torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.hann_window(n_fft),
                     center=True, pad_mode="reflect", return_complex=True).numpy()
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 1), atol=2e-3, rtol=1e-4)


def test_mel_filterbank_is_triangles_on_the_mel_scale():
  fb = spectral.mel_filterbank(1024, 40, 16000)
  assert fb.shape == (513, 40) and fb.min() >= 0
  fine = spectral.mel_filterbank(16384, 40, 16000)  # dense bins: each peak reaches ~1
  np.testing.assert_allclose(fine.max(axis=0), 1.0, atol=0.03)
  peaks = np.argmax(fb, axis=0)
  assert np.all(np.diff(peaks) >= 0)  # centres rise with the filter index
  mel = 2595 * np.log10(1 + peaks * 8000 / 512 / 700)
  spacing = np.diff(mel[10:])  # equal on the mel scale (away from the coarse low bins)
  assert spacing.std() < 0.2 * spacing.mean()
  # a pure tone lights the filter whose centre is nearest
  t = np.arange(16000) / 16000
  tone = jnp.asarray(np.sin(2 * np.pi * 2000 * t)[None], jnp.float32)
  m = spectral.mel_spectrogram(tone, 16000, 1024, 256, 40)
  centre_hz = peaks * 8000 / 512
  assert abs(centre_hz[int(jnp.argmax(m[0, 10]))] - 2000) < 200


def test_losses_vanish_on_equal_signals_and_grow_with_distortion():
  x = jax.random.normal(jax.random.key(0), (2, 4000)) * 0.1
  noise = jax.random.normal(jax.random.key(1), x.shape)
  assert float(spectral.multiscale_mel_loss(x, x, 16000)) == 0.0
  assert float(spectral.multiscale_stft_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
  mel = [float(spectral.multiscale_mel_loss(x + s * noise, x, 16000)) for s in (0.01, 0.1, 1.0)]
  stft = [float(spectral.multiscale_stft_loss(x + s * noise, x)) for s in (0.01, 0.1, 1.0)]
  assert mel[0] < mel[1] < mel[2] and stft[0] < stft[1] < stft[2]
  # DAC's distance is the sum of the per-resolution log-mel L1
  per = [spectral.log_mel_l1(x + 0.1 * noise, x, 16000, w, m)
         for w, m in zip(spectral.DAC_WINDOWS, spectral.DAC_MELS)]
  np.testing.assert_allclose(sum(per).mean(), mel[1], rtol=1e-5)
  with pytest.raises(ValueError, match="samples"):
    spectral.stft(x[:, :100], 2048, 512)


def test_si_sdr_values():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(1, 16000))
  n = rng.normal(size=(1, 16000))
  n -= (n @ s.T) / (s @ s.T) * s  # noise orthogonal to the signal
  n *= np.linalg.norm(s) / np.linalg.norm(n) * 10 ** (-12 / 20)  # 12 dB below
  got = float(audio_metrics.si_sdr(jnp.asarray(s + n), jnp.asarray(s))[0])
  assert got == pytest.approx(12.0, abs=1e-3)
  scaled = float(audio_metrics.si_sdr(jnp.asarray(0.3 * (s + n)), jnp.asarray(s))[0])
  assert scaled == pytest.approx(12.0, abs=1e-3)  # scale-invariant


def test_hinge_and_feature_matching_formulas():
  real = [(jnp.array([0.5, 2.0]), [jnp.ones((2, 3))]), (jnp.array([-1.0]), [jnp.full((1,), 2.0)])]
  fake = [(jnp.array([0.0, -3.0]), [jnp.zeros((2, 3))]), (jnp.array([1.0]), [jnp.full((1,), 1.0)])]
  # D: ((0.5 + 0) / 2 + (1 + 0) / 2 + 2 + 2) / 2
  assert float(discs.discriminator_hinge(real, fake)) == pytest.approx((0.75 + 4.0) / 2)
  # G: (mean(1, 4) + 0) / 2
  assert float(discs.generator_hinge(fake)) == pytest.approx(1.25)
  # relative L1 per layer: |1 - 0| / 1 and |2 - 1| / 2
  assert float(discs.feature_matching(real, fake)) == pytest.approx((1.0 + 0.5) / 2)
  grad = jax.grad(lambda r: discs.feature_matching([(None, [r])], [(None, [jnp.zeros(3)])]))(
      jnp.ones(3))
  np.testing.assert_array_equal(grad, 0.0)  # no gradient into the real features


def test_discriminators_shapes_and_period_folding():
  d = discs.AudioDiscriminator(periods=(2, 3), stft_resolutions=((256, 64),), width=4,
                               rngs=nnx.Rngs(0))
  outs = d(jax.random.normal(jax.random.key(0), (2, 1001, 1)))
  assert len(outs) == 3
  for logits, features in outs:
    assert logits.shape[0] == 2 and logits.shape[-1] == 1 and features
  # the period discriminator sees column j = samples j, j + p, ...: a signal that is
  # constant within each column gives time-constant features away from the edges
  p = discs.PeriodDiscriminator(3, width=4, rngs=nnx.Rngs(1))
  x = jnp.tile(jnp.array([0.3, -0.2, 0.9]), 60)[None, :, None]
  feats = p(x)[1][0]  # (1, T / 3 / 3, 3, C)
  np.testing.assert_allclose(feats[0, 2], feats[0, 10], atol=1e-6)


def test_pesq_and_stoi_when_installed():
  pytest.importorskip("pesq")
  pytest.importorskip("pystoi")
  from vqlab.data import speech
  wave, rate = speech.read_wav(speech.recordings()[0])
  x = (wave[:32000] / 32768.0).astype(np.float32)[None]
  same = audio_metrics.pesq_stoi(x, x, rate)
  assert same["pesq"] == pytest.approx(4.64, abs=0.01) and same["stoi"] == pytest.approx(1.0)
  noisy = x + 0.05 * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
  worse = audio_metrics.pesq_stoi(noisy, x, rate)
  assert worse["pesq"] < 2.0 and worse["stoi"] < 0.95
  assert "pesq" not in audio_metrics.pesq_stoi(np.zeros((1, 800), np.float32),
                                               np.zeros((1, 800), np.float32), rate)
