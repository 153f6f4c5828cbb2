"""The causal 3D video tokenizer: no frame sees a later one (encoder and decoder), an
image is a 1-frame clip, clips of any length come back with their length, the CPU
convolution equals XLA's 3D one, and the 3D discriminator's shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models import causal3d, image_tokenizer
from vqlab.models.discriminator import PatchGAN
from vqlab.nn import precision

SHAPE = dict(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
             temporal_downsample=(True, True), embed_dim=6, resolution=16, in_channels=1,
             norm_groups=4)


def tokenizer(kind="lfq", **shape):
  args = {"lfq": dict(bits=6), "fsq": dict(levels=(5, 5, 3, 3)), "vq": dict(codebook_size=32)}[kind]
  return image_tokenizer.build("causal3d", dict(SHAPE, **shape), kind, args,
                               rngs=nnx.Rngs(0))


def clip(frames=9, batch=2, seed=1):
  return jax.random.uniform(jax.random.key(seed), (batch, frames, 16, 16, 1), minval=-1,
                            maxval=1)


def test_frame_arithmetic():
  assert [causal3d.latent_frames(t, 4) for t in (1, 2, 5, 6, 9, 17, 20)] == [1, 2, 2, 3, 3, 5, 6]
  assert [causal3d.decoded_frames(n, 4) for n in (1, 2, 3)] == [1, 5, 9]
  assert causal3d.latent_frames(7, 1) == 7
  assert causal3d.CausalShape(temporal_downsample=(False, True, True)).temporal_factor == 4
  with pytest.raises(ValueError, match="num_frames: expected >= 1"):
    causal3d.latent_frames(0, 4)


@pytest.mark.parametrize("temporal,lengths", [((True, True), (6,)), ((False, True), (4,))])
def test_any_length_comes_back_with_its_length(temporal, lengths):
  model = tokenizer(temporal_downsample=temporal)
  factor = 2 ** sum(temporal)
  x = clip(6)
  for t in lengths:
    recon, indices, decoded = nnx.jit(lambda m, v: (lambda out: (
        out[0], out[1].indices, m.decode(out[1].indices, t)))(m(v)))(model, x[:, :t])
    assert recon.shape == x[:, :t].shape
    assert indices.shape == (2, causal3d.latent_frames(t, factor), 4, 4)
    assert decoded.shape == recon.shape
    np.testing.assert_allclose(decoded, recon, atol=1e-5)


def test_encoder_is_causal():
  # the tokens of the first 1 + 4k frames are the whole clip's first 1 + k latent frames,
  # and no latent frame has a gradient from a later input frame
  model = tokenizer()
  x = clip(9)
  # whole programs (op by op, each clip length would compile every op again)
  encode = nnx.jit(lambda m, v: (m.encode(v).indices, m.encoder(v)))
  whole, features = encode(model, x)
  for t, n in ((1, 1), (5, 2)):
    part, part_features = encode(model, x[:, :t])
    np.testing.assert_array_equal(part, whole[:, :n])
    np.testing.assert_allclose(part_features, features[:, :n], atol=1e-5)
  grad = nnx.jit(lambda m, v, latent: jax.grad(
      lambda v: jnp.sum(jnp.take(m.encoder(v), latent, axis=1) ** 2))(v))
  for latent, last_seen in ((0, 0), (1, 4)):
    g = grad(model, x, latent)
    per_frame = np.asarray(jnp.abs(g).sum(axis=(0, 2, 3, 4)))
    assert np.all(per_frame[last_seen + 1:] == 0), per_frame
    assert np.all(per_frame[:last_seen + 1] > 0), per_frame


def test_decoder_is_causal_by_time_block():
  # decoded frames 0 .. 4k depend only on latent frames 0 .. k
  model = tokenizer()
  indices = model.encode(clip(9)).indices
  decode = nnx.jit(lambda m, i: m.decode(i))  # a program per length, not an op at a time
  whole = decode(model, indices)
  np.testing.assert_allclose(decode(model, indices[:, :2]), whole[:, :5], atol=1e-5)
  np.testing.assert_allclose(decode(model, indices[:, :1]), whole[:, :1], atol=1e-5)


def test_image_is_a_one_frame_clip():
  model = tokenizer()
  x = clip(1)
  image = model.encode(x[:, 0])
  one = model.encode(x)
  assert image.indices.shape == (2, 4, 4) and one.indices.shape == (2, 1, 4, 4)
  np.testing.assert_array_equal(image.indices, one.indices[:, 0])
  np.testing.assert_allclose(image.quantized, one.quantized[:, 0])
  recon, q = model(x[:, 0])
  np.testing.assert_allclose(recon, model(x)[0][:, 0], atol=1e-6)
  np.testing.assert_allclose(model.decode(image.indices), recon, atol=1e-5)
  h, _ = model.features(x[:, 0])  # the trainer's path: features, then the last layer
  np.testing.assert_allclose(model.decoder.last_layer(h, model.decoder.last_kernel), recon,
                             atol=1e-5)


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_any_quantizer_plugs_in(kind):
  model = tokenizer(kind, embed_dim=4 if kind == "fsq" else 6)
  recon, q = model(clip(5))
  assert recon.shape == (2, 5, 16, 16, 1) and q.indices.shape[:4] == (2, 2, 4, 4)
  assert np.isfinite(float(q.loss))


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_cpu_convolution_equals_the_3d_one(stride):
  conv = causal3d.CausalConv3d(3, 5, 3, nnx.Rngs(0), stride=stride)
  x = jax.random.normal(jax.random.key(2), (2, 7, 10, 10, 3))
  st, s = stride
  ref = jax.lax.conv_general_dilated(
      causal3d._causal_pad(x, 2), conv.conv.kernel[...], (st, s, s),
      ((0, 0), (1, 1), (1, 1)), dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  ) + conv.conv.bias[...]
  got = conv(x)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_adaptive_norm_reads_its_time_block():
  z = jnp.arange(3.0)[None, :, None, None, None] * jnp.ones((1, 3, 2, 2, 1))
  cond = causal3d._frame_condition(z, 9)[0, :, 0]
  np.testing.assert_array_equal(cond, [0, 1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(causal3d._frame_condition(z, 3)[0, :, 0], [0, 1, 2])


def test_frame_norm_is_per_frame_and_starts_as_the_plain_norm():
  norm = causal3d.FrameGroupNorm(8, 4, nnx.Rngs(0), cond_dim=6)
  x = jax.random.normal(jax.random.key(3), (2, 5, 4, 4, 8)) * jnp.arange(1.0, 6.0)[:, None,
                                                                                  None, None]
  z = jax.random.normal(jax.random.key(4), (2, 2, 2, 2, 6))
  y = np.asarray(norm(x, z))  # the conditioning is zero-initialised: a plain group norm
  groups = np.asarray(x).reshape(2, 5, 4, 4, 4, 2)
  mean = groups.mean(axis=(2, 3, 5), keepdims=True)
  var = groups.var(axis=(2, 3, 5), keepdims=True)
  want = ((groups - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)  # each frame on its own
  np.testing.assert_allclose(y, want, atol=1e-4)


def test_bad_input_and_shape_are_refused():
  model = tokenizer()
  with pytest.raises(ValueError, match=r"clips: expected shape \(B, T, 16, 16, 1\)"):
    model.encode(jnp.zeros((2, 5, 16, 16, 3)))
  with pytest.raises(ValueError, match="temporal_downsample: expected 2 flags"):
    tokenizer(temporal_downsample=(True,))
  with pytest.raises(ValueError, match="resolution: expected a multiple of 4"):
    tokenizer(resolution=18)


def test_bfloat16_compute_stays_close():
  model = tokenizer()
  x = clip(5)
  ref, q = model(x)
  precision.set_compute_dtype(model, "bfloat16")
  got, q16 = model(x)
  assert got.dtype == jnp.float32
  rel = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
  assert rel < 0.04, rel


def test_video_discriminator_shapes():
  disc = PatchGAN(1, 8, 2, video=True, rngs=nnx.Rngs(0))
  assert disc(jnp.zeros((2, 9, 32, 32, 1))).shape == (2, 3, 6, 6, 1)
  assert disc(jnp.zeros((2, 1, 32, 32, 1))).shape == (2, 1, 6, 6, 1)
  image = PatchGAN(1, 8, 2, rngs=nnx.Rngs(0))
  assert image(jnp.zeros((2, 32, 32, 1))).shape == (2, 6, 6, 1)
