"""TiTok: token counts and shapes (the paper's sizes too), prefix decoding = a masked tail,
tail drop's prefixes, the proxy decoder's targets, soft codes and trainable parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.models import image_tokenizer, titok

SMALL = dict(image_size=16, patch_size=4, width=32, depth=2, heads=4, num_tokens=8,
             token_dim=6, channels=1)
VQ = dict(codebook_size=64, metric="cosine")


def _titok(**shape):
  return image_tokenizer.build("titok", {**SMALL, **shape}, "vq", VQ, rngs=nnx.Rngs(0))


def _images(n=3, size=16, channels=1, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, channels), minval=-1,
                            maxval=1)


@pytest.mark.parametrize("size,tokens", [(titok.TITOK_L_32, 32), (titok.TITOK_B_64, 64),
                                         (titok.TITOK_S_128, 128)])
def test_paper_sizes_give_k_tokens_of_256px_images(size, tokens):
  def run():
    tok = titok.TiTok(size, image_tokenizer.factory.build("vq", 12, rngs=nnx.Rngs(0),
                                                          codebook_size=4096, metric="cosine"),
                      rngs=nnx.Rngs(0))
    recon, q = tok(jnp.zeros((1, 256, 256, 3)))
    return recon, q.indices, nnx.state(tok.encoder, nnx.Param)
  recon, indices, params = jax.eval_shape(run)
  assert indices.shape == (1, tokens) and recon.shape == (1, 256, 256, 3)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # the encoder is a ViT of the paper's size: ~12 d^2 per block
  assert 0.9 < count / (12 * size.width**2 * size.depth) < 1.1


def test_encode_decode_shapes_and_every_prefix_equals_a_masked_tail():
  tok = _titok(tail_drop=0.5)
  x = _images()
  recon, q = nnx.jit(lambda t, x: t(x))(tok, x)
  assert recon.shape == x.shape and q.indices.shape == (3, 8) and q.quantized.shape == (3, 8, 6)
  assert tok.token_shape == (8,)
  tok.eval()
  # whole programs: op by op, every prefix length would compile each op again
  decode = nnx.jit(lambda t, i: t.decode(i))
  masked_tail = nnx.jit(lambda t, z, k: t.decoder(z, keep=jnp.full((3,), k)))
  indices = nnx.jit(lambda t, x: t.encode(x).indices)(tok, x)
  z = tok.quantizer.decode(indices)
  full = decode(tok, indices)
  np.testing.assert_allclose(masked_tail(tok, z, 8), full, atol=1e-6)
  decode_prefix = nnx.jit(lambda t, i, k: t.decode_prefix(i, k))  # one program, any k
  previous = None
  for k in range(1, 9):
    prefix = decode(tok, indices[:, :k])  # attends to k latents only
    np.testing.assert_allclose(prefix, masked_tail(tok, z, k), atol=1e-5)
    np.testing.assert_allclose(prefix, decode_prefix(tok, indices, k), atol=1e-5)
    if previous is not None:  # every token changes the image: none is ignored
      assert float(jnp.max(jnp.abs(prefix - previous))) > 1e-4
    previous = prefix
  mixed = decode_prefix(tok, indices, jnp.array([1, 4, 8]))  # per-example prefixes
  np.testing.assert_allclose(mixed[1], tok.decode(indices[1:2, :4])[0], atol=1e-5)
  with pytest.raises(ValueError, match=r"keep: expected 1 <= keep <= 8 \(the tokens given\), "
                                       r"got 9"):
    tok.decode_prefix(indices, 9)
  with pytest.raises(ValueError, match=r"z: expected \(B, k, 6\) with 1 <= k <= 8"):
    tok.decoder(jnp.zeros((1, 9, 6)))


def test_tail_drop_draws_prefixes_in_training_only():
  dec = _titok(tail_drop=1.0).decoder
  kept = np.concatenate([np.asarray(dec.kept(64, 8)) for _ in range(8)])
  assert kept.min() == 1 and kept.max() == 8 and len(set(kept.tolist())) == 8
  half = _titok(tail_drop=0.5).decoder
  kept = np.concatenate([np.asarray(half.kept(64, 8)) for _ in range(8)])
  # the undropped half keeps all 8; the other half draws 8 too one time in eight
  assert 0.5 < np.mean(kept == 8) < 0.62, np.mean(kept == 8)
  half.eval()
  assert half.kept(4, 8) is None and _titok().decoder.kept(4, 8) is None


def _teacher(grid=4, channels=1):
  shape = dict(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
               z_channels=8, embed_dim=8, resolution=16, in_channels=channels, norm_groups=4,
               dropout=0.0)
  tok = image_tokenizer.build("vqgan", shape, "vq", dict(codebook_size=32), rngs=nnx.Rngs(3))
  assert tok.token_shape == (grid, grid)
  return tok


def test_proxy_targets_are_the_teachers_codes_and_soft_codes_decode_them():
  teacher = _teacher()
  tok = image_tokenizer.build("titok", {**SMALL, "decoder": "proxy"}, "vq", VQ,
                              rngs=nnx.Rngs(0), teacher=teacher, stage=1)
  x = _images()
  want = teacher.encode(x).indices.reshape(3, -1)
  np.testing.assert_array_equal(tok.proxy_targets(x), want)
  logits = tok.decoder.logits(tok.encode(x).quantized)
  assert logits.shape == (3, 16, 32)
  # a one-hot (peaked) distribution over the teacher's codes decodes as those codes
  peaked = 1e4 * jax.nn.one_hot(want, 32)
  z = tok.decoder.soft_codes(peaked)
  np.testing.assert_allclose(z, teacher.quantizer.decode(want.reshape(3, 4, 4)), atol=1e-5)
  np.testing.assert_allclose(tok.decoder.teacher_decoder(z), teacher.decode(want.reshape(3, 4, 4)),
                             atol=1e-4)


def _trained_paths(model):
  return {"/".join(map(str, p)) for p, _ in nnx.state(model, model.trainable()).flat_state()}


def test_each_stage_trains_its_parts_only():
  stage1 = image_tokenizer.build("titok", {**SMALL, "decoder": "proxy"}, "vq", VQ,
                                 rngs=nnx.Rngs(0), teacher=_teacher(), stage=1)
  paths = _trained_paths(stage1)
  assert any(p.startswith("encoder/") for p in paths)
  assert any(p.startswith("quantizer/") for p in paths)
  assert any(p.startswith("decoder/titok/") for p in paths)
  assert not any("teacher" in p for p in paths)
  stage2 = image_tokenizer.build("titok", {**SMALL, "decoder": "proxy"}, "vq", VQ,
                                 rngs=nnx.Rngs(0), teacher=_teacher(), stage=2)
  paths = _trained_paths(stage2)
  assert any(p.startswith("decoder/titok/") for p in paths)
  assert any(p.startswith("decoder/teacher_decoder/") for p in paths)
  assert not any(p.startswith(("encoder/", "quantizer/", "decoder/teacher_codes/"))
                 for p in paths)
  assert stage2.teacher_encoder is None and stage2.quantizer.deterministic


def test_bad_settings_are_errors():
  with pytest.raises(ValueError, match="tail_drop: expected in"):
    _titok(tail_drop=1.5)
  with pytest.raises(ValueError, match="decoder: expected one of"):
    _titok(decoder="codes")
  with pytest.raises(ValueError, match="teacher: the 'proxy' decoder needs"):
    _titok(decoder="proxy")
  with pytest.raises(ValueError, match=r"teacher: expected a 2D tokenizer with a 2x2"):
    image_tokenizer.build("titok", {**SMALL, "patch_size": 8, "decoder": "proxy"}, "vq", VQ,
                          rngs=nnx.Rngs(0), teacher=_teacher())
  with pytest.raises(ValueError, match=r"images: expected shape \(B, 16, 16, 1\)"):
    _titok().encode(jnp.zeros((1, 16, 16, 3)))
