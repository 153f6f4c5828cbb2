"""bfloat16 compute with float32 parameters (vqlab.nn.precision): every model computes
close to its float32 self, the quantizers do not round, attention stays float32.

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2% per op); over
the ~20 layers of these models the outputs drift by 0.5-2% (measured), so outputs are
held to 4% relative L2 error and gradients to a cosine of 0.99 with the float32 ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.vit_vqgan_imagenet as vit_config
import configs.vqgan_quickstart as vqgan_config
from vqlab.models import audio_codec, image_tokenizer
from vqlab.models.generators import NextTokenGenerator
from vqlab.nn.precision import set_compute_dtype
from vqlab.nn.transformer import TransformerShape
from vqlab.quantizers import FSQ, VectorQuantizer, factory


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def cosine(a, b) -> float:
  flat = lambda t: np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(t)])
  a, b = flat(a), flat(b)
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def pair(make):
  """The same model twice, float32 and bfloat16, in eval mode (no statistics move)."""
  f32, bf16 = make(), set_compute_dtype(make(), "bfloat16")
  f32.eval(), bf16.eval()
  return f32, bf16


@pytest.mark.parametrize("config", [vqgan_config, vit_config], ids=["vqgan", "vit_vqgan"])
def test_image_tokenizers_compute_in_bf16_close_to_float32(config):
  m = config.get_config("runlocal").model
  f32, bf16 = pair(lambda: image_tokenizer.build(m.arch, m.shape.to_dict(), m.quantizer.kind,
                                                 factory.spec_args(m.quantizer),
                                                 rngs=nnx.Rngs(0)))
  size = f32.image_size
  x = jax.random.uniform(jax.random.key(1), (4, size, size, f32.channels), minval=-1, maxval=1)
  encode = nnx.jit(lambda m, x: m.encoder(x))
  z32, z16 = encode(f32, x), encode(bf16, x)
  assert z16.dtype == jnp.bfloat16 and z32.dtype == jnp.float32
  assert rel_err(z16, z32) < 0.04
  codes = nnx.jit(lambda m, x: m.encode(x).indices)(f32, x)
  decode = nnx.jit(lambda m, codes: m.decode(codes))
  y32, y16 = decode(f32, codes), decode(bf16, codes)
  assert y16.dtype == jnp.float32  # outputs are float32 whatever the compute dtype
  assert rel_err(y16, y32) < 0.04

  def loss(model):  # decoder gradients from the same codes (squared error: L1's sign
    return jnp.mean(jnp.square(model.decode(codes) - x))  # flips where y ~ x)
  g32, g16 = (nnx.jit(nnx.grad(loss))(m) for m in (f32, bf16))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(g16))  # float32 parameters
  assert cosine(g16, g32) > 0.99


@pytest.mark.parametrize("decoder", ["seanet", "istft"])
def test_codec_computes_in_bf16_close_to_float32(decoder):
  shape = dict(channels=8, latent_dim=8, strides=(2, 4), dilations=(1, 3), causal=True,
               decoder=decoder)  # istft: bf16 convs, then magnitudes and FFTs in float32
  f32, bf16 = pair(lambda: audio_codec.build(shape, "rvq", dict(codebook_size=16, num_levels=3),
                                             16000, rngs=nnx.Rngs(0)))
  wav = 0.1 * jax.random.normal(jax.random.key(1), (2, 800))
  codes = nnx.jit(lambda m, w: m.encode(w).indices)(f32, wav)
  decode = nnx.jit(lambda m, codes: m.decode(codes))
  y32, y16 = decode(f32, codes), decode(bf16, codes)
  assert y16.dtype == jnp.float32 and rel_err(y16, y32) < 0.04
  loss = lambda m: jnp.mean(jnp.square(m.decode(codes, length=800)[..., 0] - wav))
  grad = nnx.jit(nnx.grad(loss))
  assert cosine(grad(bf16), grad(f32)) > 0.99


def test_generator_computes_in_bf16_with_float32_logits():
  shape = TransformerShape(width=64, depth=3, heads=4, mlp_ratio=2.0)
  f32, bf16 = pair(lambda: NextTokenGenerator(shape, vocab_size=64, num_classes=4, grid=4,
                                              rngs=nnx.Rngs(0)))
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 64)
  labels = jnp.arange(4)
  logits = nnx.jit(lambda m: m(tokens, labels))
  l32, l16 = logits(f32), logits(bf16)
  assert l16.dtype == jnp.float32 and rel_err(l16, l32) < 0.04

  def loss(model):
    logp = jax.nn.log_softmax(model(tokens, labels))
    return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))
  value_and_grad = nnx.jit(nnx.value_and_grad(loss))
  (v16, g16), (v32, g32) = value_and_grad(bf16), value_and_grad(f32)
  assert abs(v16 - v32) < 0.01 * v32
  assert cosine(g16, g32) > 0.99


def test_quantizers_stay_float32_inside_a_bf16_model():
  """The quantizer of a bf16 model keeps float32 layers, and on bf16 inputs picks the
  indices it picks for the same values in float32 (its search casts to float32)."""
  m = vqgan_config.get_config("runlocal").model
  model = set_compute_dtype(image_tokenizer.build(m.arch, m.shape.to_dict(), "vq",
                                                  dict(codebook_size=256, code_dim=4),
                                                  rngs=nnx.Rngs(0)), "bfloat16")
  inside = [x for path, x in nnx.iter_modules(model) if path[:1] == ("quantizer",)
            and isinstance(x, nnx.Linear)]
  assert inside and all(x.dtype is None for x in inside)  # the code_dim projections

  vq = VectorQuantizer(8, 512, rngs=nnx.Rngs(0))
  vq.eval()
  z = jax.random.normal(jax.random.key(2), (4096, 8)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(vq(z).indices, vq(z.astype(jnp.float32)).indices)


def test_fsq_usage_does_not_drop_on_bf16_inputs():
  """vector-quantize-pytorch issue 114: FSQ rounding in bf16 merged codes and halved
  usage. Ours bounds and rounds in float32: bf16 inputs (encoder outputs) use the codes
  their float32 values use, and the same number of them."""
  fsq = FSQ([8, 8, 8, 6, 5])  # 15,360 codes
  z = 2.0 * jax.random.normal(jax.random.key(3), (65536, 5))
  z16 = z.astype(jnp.bfloat16)
  i16, i32 = fsq(z16).indices, fsq(z16.astype(jnp.float32)).indices
  np.testing.assert_array_equal(i16, i32)
  used = lambda i: len(np.unique(np.asarray(i)))
  assert used(i16) >= 0.97 * used(fsq(z).indices)  # bf16 input rounding moves few codes
