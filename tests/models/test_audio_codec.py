"""The SEANet codec: frame arithmetic, causality, streaming, bitrates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models import audio_codec
from vqlab.models.seanet import Conv1d, SEANetShape


def _codec(causal=True, strides=(2, 3), lstm=0, activation="elu", levels=3, **quantizer):
  shape = dict(channels=4, latent_dim=8, strides=strides, dilations=(1, 3), causal=causal,
               lstm_layers=lstm, activation=activation)
  return audio_codec.build(shape, "rvq", dict(codebook_size=16, num_levels=levels, **quantizer),
                           16000, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("strides", [(2,), (3, 5), (2, 4, 5), (7,)])
@pytest.mark.parametrize("causal", [True, False])
def test_frame_arithmetic_any_strides_and_lengths(strides, causal):
  model = _codec(causal, strides)
  hop = int(np.prod(strides))
  # shapes only, traced abstractly: JAX's shapes are static, so they are the run's shapes
  # (a compile per length and call costs ~1 s)
  shape = lambda fn, *args: nnx.eval_shape(fn, model, *args)
  for length in sorted({1, hop - 1, hop, hop + 1, 3 * hop + 2}):
    if length < 1:
      continue
    x = jax.ShapeDtypeStruct((2, length), jnp.float32)
    q = shape(lambda m, x: m.encode(x), x)
    frames = -(-length // hop)
    assert q.indices.shape == (2, frames, 3)
    assert shape(lambda m, i: m.decode(i), q.indices).shape == (2, frames * hop, 1)
    assert shape(lambda m, i: m.decode(i, length=length), q.indices).shape == (2, length, 1)
    recon, _ = shape(lambda m, x: m(x), x)
    assert recon.shape == (2, length, 1)


def test_causal_encoder_output_ignores_the_future():
  model = _codec(True, (2, 3))
  x = jax.random.normal(jax.random.key(0), (1, 60, 1))
  late = x.at[:, 40:].set(5.0)  # change samples 40.. : frames 0..5 (samples < 36) see none
  z, z_late = model.encoder(x), model.encoder(late)
  np.testing.assert_array_equal(z[:, :6], z_late[:, :6])
  assert not np.allclose(z[:, 7:], z_late[:, 7:])
  centred = _codec(False, (2, 3))  # the non-causal model looks ahead: the control
  assert not np.allclose(centred.encoder(x)[:, :6], centred.encoder(late)[:, :6])


@pytest.mark.parametrize("lstm,activation", [(0, "elu"), (2, "snake")])
def test_streaming_equals_whole_signal(lstm, activation):
  model = _codec(True, (2, 4), lstm=lstm, activation=activation)
  model.eval()
  x = 0.3 * jax.random.normal(jax.random.key(1), (2, 333))
  q = model.encode(x)
  whole = model.decode(q.indices, length=333)
  for chunk in (1, 3, 7, 100):  # 42 frames: chunks that do and do not divide it
    np.testing.assert_array_equal(model.stream_encode(x, chunk), q.indices)
    streamed = model.stream_decode(q.indices, chunk, length=333)
    np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=1e-5)
  first = model.stream_decode(q.indices, 5, num_levels=1)
  np.testing.assert_allclose(first, model.decode(q.indices, num_levels=1), atol=1e-5, rtol=1e-5)


def test_streaming_needs_a_causal_model():
  model = _codec(False)
  with pytest.raises(ValueError, match="causal"):
    model.stream_encode(jnp.zeros((1, 12)), 1)


def test_transposed_conv_chunks_add_their_overlap():
  conv = Conv1d(3, 2, 8, stride=4, transpose=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 5, 3))
  whole = conv(x)
  state = conv.init_state(1)
  parts = []
  for i in range(5):
    y, state = conv.apply(x[:, i:i + 1], state)
    parts.append(y)
  np.testing.assert_allclose(jnp.concatenate(parts, 1), whole, atol=1e-6)
  # and the untrimmed transposed conv: output t gets kernel tap t - 4 i of input i
  w = conv.weight()
  ref = np.zeros((5 * 4 + 4, 2))
  for i in range(5):
    ref[4 * i:4 * i + 8] += np.asarray(x[0, i] @ w)  # (8, 2): x_i contracted per tap
  np.testing.assert_allclose(whole[0], ref[:20] + conv.bias[...], atol=1e-5)


def test_weight_norm_is_scale_free_in_v():
  conv = Conv1d(3, 5, 4, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(conv.weight(), conv.v[...], rtol=1e-5, atol=1e-7)  # g = |v| at init
  before = conv.weight()
  conv.v[...] = 3.0 * conv.v[...]
  np.testing.assert_allclose(conv.weight(), before, rtol=1e-5, atol=1e-7)
  norms = jnp.sqrt(jnp.sum(jnp.square(conv.weight()), axis=(0, 1)))
  np.testing.assert_allclose(norms, conv.g[...], rtol=1e-5)


def test_bitrates_and_error_falls_with_levels():
  model = _codec(True, (2, 4), levels=4, codebook="ema", kmeans_init=True)
  x = 0.5 * jax.random.normal(jax.random.key(2), (8, 800))
  model(x)  # training mode: k-means initialises every level on this batch's residuals
  model.eval()
  assert model.frame_rate == 16000 / 8
  for n, bits in audio_codec.bitrate_table(model):
    assert bits == pytest.approx(2000 * n * 4)  # 16 codes: 4 bits per level and frame
  z = model.encoder(model.pad(x))
  q = model.encode(x)
  errors = [float(jnp.mean(jnp.square(z - model.quantizer.decode(q.indices, num_levels=n))))
            for n in range(1, 5)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # decoding with n levels is decoding the indices whose later levels are dropped (-1)
  dropped = q.indices.at[..., 2:].set(-1)
  np.testing.assert_allclose(model.decode(q.indices, num_levels=2), model.decode(dropped),
                             atol=1e-6)


def test_bad_inputs_fail_with_names():
  model = _codec()
  with pytest.raises(ValueError, match="wav"):
    model.encode(jnp.zeros((1, 10, 2)))
  with pytest.raises(ValueError, match="strides"):
    SEANetShape(strides=()).check()
  with pytest.raises(ValueError, match="activation"):
    SEANetShape(activation="relu").check()
  with pytest.raises(ValueError, match="unknown fields"):
    audio_codec.make_shape({"chanels": 4})
  with pytest.raises(ValueError, match="num_levels"):
    model.decode(jnp.zeros((1, 2, 3), jnp.int32), num_levels=4)


def test_a_one_level_codec_takes_depth_one_only():
  shape = dict(channels=4, latent_dim=8, strides=(2, 3), dilations=(1, 3))
  model = audio_codec.build(shape, "vq", dict(codebook_size=16), 16000, rngs=nnx.Rngs(0))
  model.eval()
  wav = jnp.asarray(np.random.default_rng(0).normal(0, 0.1, (1, 60)), jnp.float32)
  np.testing.assert_array_equal(model.encode(wav, num_levels=1).indices, model.encode(wav).indices)
  with pytest.raises(ValueError, match="num_levels: this codec's quantizer has one level"):
    model.encode(wav, num_levels=2)


def test_remat_keeps_fewer_activations_and_the_same_gradients(remat_shrinks_residuals):
  """`shape.remat` recomputes the residual units of the SEANet encoder and the iSTFT
  decoder (the quickstart's; the SEANet decoder's units run through the same
  `_Stack.apply`) in the backward: the residuals kept shrink from "none" to "block" to
  "full", the gradients do not change. The convs and activations between the units keep
  theirs in every mode, so "full" saves less beyond "block" than in the VQGAN (measured
  here: 2.2x, then 1.2x; with the SEANet decoder 2.3x, 1.3x)."""
  from vqlab.models.istft_decoder import ISTFTDecoder
  from vqlab.models.seanet import SEANetEncoder
  x = jax.random.normal(jax.random.key(1), (2, 240, 1))

  def build(remat):
    shape = SEANetShape(channels=4, latent_dim=8, strides=(2, 3), dilations=(1, 3, 9),
                        decoder="istft", remat=remat)
    return SEANetEncoder(shape, nnx.Rngs(0)), ISTFTDecoder(shape, nnx.Rngs(1))
  remat_shrinks_residuals(build, lambda m: jnp.mean(jnp.square(m[1](m[0](x)) - x)),
                         ratios=(1.8, 1.1))
  with pytest.raises(ValueError, match="remat: expected one of"):
    SEANetShape(remat="blocks").check()
