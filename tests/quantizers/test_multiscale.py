"""VAR multi-scale quantizer: resampling, f_hat from indices, teacher forcing; and the
whole forward against the same algorithm run with PyTorch's own ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.quantizers import MultiScaleVQ
from vqlab.quantizers.multiscale import area_matrix, bicubic_matrix, phi_index, resize

SCALES = (1, 2, 3, 4, 6, 8)


def _model(**kw):
  return MultiScaleVQ(8, 64, SCALES, rngs=nnx.Rngs(0), **kw)


def _features(seed=0, b=2):
  return jax.random.normal(jax.random.key(seed), (b, 8, 8, 8))


def test_resampling_weights_are_normalised_and_exact_at_equal_size():
  for n_in, n_out in [(8, 3), (16, 13), (16, 5)]:
    np.testing.assert_allclose(area_matrix(n_in, n_out).sum(1), 1.0, rtol=1e-6)
  for n_in, n_out in [(1, 8), (3, 8), (13, 16)]:
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(bicubic_matrix(7, 7), np.eye(7), atol=1e-7)
  np.testing.assert_allclose(area_matrix(7, 7), np.eye(7), atol=1e-7)


def test_phi_sharing_follows_var_ticks():
  # VAR: 10 scales, 4 partially shared convs at ticks 1/12, 13/36, 23/36, 11/12. Scales
  # 2 and 7 (at 2/9 and 7/9) are exact ties in real numbers; float64 breaks them up,
  # and so does VAR's identical numpy expression.
  assert [phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert [phi_index(si, 10, 1) for si in range(10)] == [0] * 10
  # one phi per scale (num_phi 0 -> 10): ticks 0.05, 0.15, ..., 0.95 against k / 9
  assert [phi_index(si, 10, 10) for si in range(10)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  # K != 4 keeps a 1/(2K) margin (a 1/(3K) margin would give [0, 1, 1, 2, ..., 5, 6, 7])
  assert [phi_index(si, 10, 8) for si in range(10)] == [0, 0, 1, 2, 3, 4, 5, 6, 7, 7]


def test_decode_gives_the_forward_f_hat_and_the_output_is_straight_through():
  msvq = _model()
  f = _features()
  out = msvq(f)
  assert out.indices.shape == (2, sum(p * p for p in SCALES)) and out.indices.dtype == jnp.int32
  f_hat = msvq.decode(out.indices)
  np.testing.assert_allclose(out.quantized, f_hat, atol=1e-5)
  msvq.eval()
  dz = jax.grad(lambda f: jnp.sum(msvq(f).quantized * 3.0))(f)
  np.testing.assert_allclose(dz, 3.0, atol=1e-6)


def test_teacher_forcing_input_is_the_downsampled_cumulative_f_hat():
  msvq = _model()
  msvq.eval()
  out = msvq(_features(1))
  tf = msvq.teacher_forcing_input(out.indices)
  assert tf.shape == (2, sum(p * p for p in SCALES[1:]), 8)
  # Entry for scale k+1 comes from the f_hat of the first k+1 scales: rebuild it by
  # decoding indices whose later scales point nowhere (phi of a zero map is zero here).
  scales = msvq.split_scales(out.indices)
  first = jnp.take(msvq.codebook[...], scales[0], axis=0)
  f_hat0 = msvq.phi(resize(first, 8, "bicubic"), 0)
  np.testing.assert_allclose(tf[:, :4], resize(f_hat0, 2, "area").reshape(2, 4, 8), atol=1e-5)


def test_more_scales_reconstruct_better_after_codebook_init():
  msvq = MultiScaleVQ(8, 256, SCALES, quant_resi=0.0, rngs=nnx.Rngs(0))
  f = _features(2, b=8)
  # Put the features' own vectors in the codebook so the quantizer is not trivial.
  msvq.codebook[...] = f.reshape(-1, 8)[:256]
  out = msvq(f)
  idx = out.indices
  errs = []
  for keep in range(1, len(SCALES) + 1):
    parts = msvq.split_scales(idx)
    f_hat = sum(msvq._upsampled(jnp.take(msvq.codebook[...], parts[si], axis=0), si, 8)
                for si in range(keep))
    errs.append(float(jnp.mean((f_hat - f) ** 2)))
  assert errs[-1] < 0.5 * errs[0], errs


def test_binary_codes_are_the_signs_of_each_scales_residual():
  """Infinity's bitwise multi-scale quantizer, rebuilt scale by scale in numpy: each
  scale's code is sign(area-downsampled residual) / sqrt(C), its index the bits MSB first;
  decode and teacher forcing agree with the forward."""
  msvq = MultiScaleVQ(8, 256, SCALES, binary=True, rngs=nnx.Rngs(0))
  msvq.eval()
  f = _features(3)
  out = msvq(f)
  rest, f_hat = np.asarray(f, np.float64), 0.0
  for si, (pn, idx) in enumerate(zip(SCALES, msvq.split_scales(out.indices))):
    r = rest if pn == 8 else np.asarray(resize(jnp.asarray(rest, jnp.float32), pn, "area"))
    bits = (r > 0).astype(np.int64)
    np.testing.assert_array_equal(idx, bits @ (1 << np.arange(7, -1, -1)))
    codes = jnp.asarray(np.where(r > 0, 1.0, -1.0) / np.sqrt(8), jnp.float32)
    h = np.asarray(msvq._upsampled(codes, si, 8), np.float64)
    rest, f_hat = rest - h, f_hat + h
  np.testing.assert_allclose(out.quantized, f_hat, atol=1e-4)
  np.testing.assert_allclose(msvq.decode(out.indices), f_hat, atol=1e-4)
  assert msvq.teacher_forcing_input(out.indices).shape == (2, sum(p * p for p in SCALES[1:]), 8)
  assert "codebook" not in nnx.state(msvq, nnx.Param)  # only phi's convs learn
  with pytest.raises(ValueError, match="binary codes of dim=8 bits are 2\\*\\*dim"):
    MultiScaleVQ(8, 64, SCALES, binary=True, rngs=nnx.Rngs(0))


def test_bad_input():
  msvq = _model()
  with pytest.raises(ValueError, match="f: expected"):
    msvq(jnp.zeros((2, 16, 16, 8)))
  with pytest.raises(ValueError, match="indices"):
    msvq.decode(jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match="patch_nums"):
    MultiScaleVQ(8, 16, (4, 2), rngs=nnx.Rngs(0))


torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_resize_matches_pytorch_interpolate():
  x = np.random.default_rng(0).normal(size=(2, 13, 13, 3)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  for size in (1, 2, 5, 10):
    want = F.interpolate(xt, size=(size, size), mode="area").permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(resize(jnp.asarray(x), size, "area"), want, atol=1e-5)
  small = x[:, :5, :5]
  st = torch.from_numpy(np.ascontiguousarray(small)).permute(0, 3, 1, 2)
  for size in (8, 13, 16):
    want = F.interpolate(st, size=(size, size), mode="bicubic").permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(resize(jnp.asarray(small), size, "bicubic"), want, atol=1e-5)


def _torch_reference(msvq, f):
  """VAR's quantizer forward (as described in its paper/code) in PyTorch ops."""
  codebook = torch.from_numpy(np.array(msvq.codebook[...]))
  convs = [(torch.from_numpy(np.array(c.kernel[...])).permute(3, 2, 0, 1),
            torch.from_numpy(np.array(c.bias[...]))) for c in msvq.phis]
  f = torch.from_numpy(np.array(f)).permute(0, 3, 1, 2)
  b, c, h, w = f.shape
  f_rest, f_hat, indices = f.clone(), torch.zeros_like(f), []
  n = len(msvq.patch_nums)
  for si, pn in enumerate(msvq.patch_nums):
    rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != n - 1 else f_rest
    rest = rest.permute(0, 2, 3, 1).reshape(-1, c)
    d = (rest**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * rest @ codebook.T
    idx = d.argmin(1)
    hq = codebook[idx].reshape(b, pn, pn, c).permute(0, 3, 1, 2)
    if si != n - 1:
      hq = F.interpolate(hq, size=(h, w), mode="bicubic")
    kernel, bias = convs[phi_index(si, n, msvq.num_phi)]
    hq = hq * 0.5 + F.conv2d(hq, kernel, bias, padding=1) * 0.5
    f_hat, f_rest = f_hat + hq, f_rest - hq
    indices.append(idx.reshape(b, -1))
  return torch.cat(indices, 1).numpy(), f_hat.permute(0, 2, 3, 1).numpy()


def test_forward_matches_the_algorithm_in_pytorch_ops():
  msvq = _model()
  msvq.eval()
  f = _features(3, b=4)
  out = msvq(f)
  ref_idx, ref_f_hat = _torch_reference(msvq, f)
  np.testing.assert_array_equal(out.indices, ref_idx)
  np.testing.assert_allclose(msvq.decode(out.indices), ref_f_hat, atol=1e-4)
