"""The iSTFT codec decoder (Vocos): the inverse STFT against PyTorch's, frame arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.losses import spectral
from vqlab.models import audio_codec, istft_decoder


def _torch_frames(signal: np.ndarray, hop: int):
  """torch.stft(center=True) of `signal`: frame g is centred on sample g hop."""
  torch = pytest.importorskip("torch")
  n = 4 * hop
  spec = torch.stft(torch.from_numpy(signal), n, hop, window=torch.hann_window(n),
                    center=True, return_complex=True)
  return torch, spec.transpose(-1, -2)  # (B, frames, bins)


@pytest.mark.parametrize("hop", [8, 20])
def test_istft_inverts_torch_stft_and_matches_torch_istft(hop):
  frames = 12
  signal = np.random.RandomState(hop).randn(2, frames * hop).astype(np.float32)
  torch, spec = _torch_frames(signal, hop)
  # our frame f is centred on the start of hop block f + 1: torch's frame f + 1
  ours = spec[:, 1:frames + 1].numpy()
  out = istft_decoder.istft(jnp.log(np.abs(ours) + 1e-30), jnp.angle(ours), hop)
  assert out.shape == (2, frames * hop)
  np.testing.assert_allclose(out, signal, atol=2e-5)  # to the last sample: the ends too
  reference = torch.istft(spec.transpose(-1, -2), 4 * hop, hop,
                          window=torch.hann_window(4 * hop), center=True,
                          length=frames * hop).numpy()
  np.testing.assert_allclose(out, reference, atol=2e-5)


def test_overlap_add_sums_four_windows_per_block():
  hop = 3
  frames = np.zeros((1, 5, 12), np.float32)
  frames[0, 2] = np.arange(12)  # frame 2's blocks go to output blocks 1, 2, 3, 4
  out = np.asarray(istft_decoder.overlap_add(jnp.asarray(frames), hop)).reshape(5, hop)
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1:], np.arange(12).reshape(4, hop))
  # the Hann window's squares overlap-add to 1.5 where four frames meet
  env = istft_decoder.overlap_add(jnp.broadcast_to(spectral.hann(4 * hop) ** 2,
                                                   (1, 6, 4 * hop)), hop)
  np.testing.assert_allclose(np.asarray(env)[0, 2 * hop:4 * hop], 1.5, rtol=1e-6)
  with pytest.raises(ValueError, match="4 hop"):
    istft_decoder.overlap_add(jnp.zeros((1, 2, 10)), hop)


def _codec():
  shape = dict(channels=4, latent_dim=8, strides=(2, 3), dilations=(1, 3), decoder="istft")
  return audio_codec.build(shape, "rvq", dict(codebook_size=16, num_levels=2), 16000,
                           rngs=nnx.Rngs(0))


def test_istft_codec_frames_gradients_and_no_streaming():
  model = _codec()
  for length in (5, 13):  # under one frame; two frames and a sample
    x = jax.random.normal(jax.random.key(length), (2, length))
    recon, q = model(x)
    assert recon.shape == (2, length, 1) and q.indices.shape == (2, -(-length // 6), 2)
    assert model.decode(q.indices).shape == (2, -(-length // 6) * 6, 1)
  x = jax.random.normal(jax.random.key(0), (2, 60))
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(jnp.square(m(x)[0] - x[..., None]))))(model)
  assert float(jnp.abs(grads.encoder.layers[0].v[...]).sum()) > 0  # through the quantizer
  assert float(jnp.abs(grads.decoder.head.v[...]).sum()) > 0
  model.eval()
  with pytest.raises(ValueError, match="look"):
    model.stream_decode(model.encode(x).indices, 2)
  with pytest.raises(ValueError, match="decoder"):
    audio_codec.make_shape(dict(decoder="griffin")).check()
