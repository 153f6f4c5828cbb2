"""LPIPS: metric properties on a random network; published-format files converted and
compared with the same network written in PyTorch ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqlab.convert import lpips as convert_lpips
from vqlab.losses import perceptual
from vqlab.losses.perceptual import LPIPS


def _images(seed, b=2, side=32):
  return jnp.tanh(jax.random.normal(jax.random.key(seed), (b, side, side, 3)))


def test_distance_is_zero_on_equal_images_positive_and_symmetric():
  lpips = LPIPS(nnx.Rngs(0))
  x, y = _images(0), _images(1)
  d = lpips(x, y)
  assert d.shape == (2,) and bool(jnp.all(d > 0))
  np.testing.assert_allclose(lpips(x, x), 0.0, atol=1e-6)
  np.testing.assert_allclose(lpips(y, x), d, rtol=1e-5)
  assert float(lpips(x, x + 0.01).mean()) < float(d.mean())
  with pytest.raises(ValueError, match="x, y"):
    lpips(x, y[:, :16])


def test_bad_weights_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="path"):
    LPIPS(nnx.Rngs(0)).load_npz(str(tmp_path / "none.npz"))
  np.savez(tmp_path / "bad.npz", conv0_kernel=np.zeros((3, 3, 3, 64), np.float32))
  with pytest.raises(ValueError, match="conv0_bias: missing"):
    LPIPS(nnx.Rngs(0)).load_npz(str(tmp_path / "bad.npz"))


def test_converted_published_files_match_pytorch(tmp_path):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  g = torch.Generator().manual_seed(0)
  vgg = {}
  for t, (i, o) in zip(perceptual.TORCHVISION_INDEX, perceptual.VGG16_CONVS):
    vgg[f"features.{t}.weight"] = torch.randn(o, i, 3, 3, generator=g) * (2 / (9 * i)) ** 0.5
    vgg[f"features.{t}.bias"] = torch.randn(o, generator=g) * 0.01
  vgg["classifier.0.weight"] = torch.zeros(2, 2)  # present in the real file, ignored
  lin = {f"lin{k}.model.1.weight": torch.rand(1, perceptual.VGG16_CONVS[e][1], 1, 1, generator=g)
         for k, e in enumerate(perceptual.STAGE_ENDS)}
  torch.save(vgg, tmp_path / "vgg16.pth")
  torch.save(lin, tmp_path / "vgg.pth")
  convert_lpips.main(["--vgg", str(tmp_path / "vgg16.pth"), "--lin", str(tmp_path / "vgg.pth"),
                   "--out", str(tmp_path / "lpips.npz")])
  lpips = LPIPS(nnx.Rngs(1)).load_npz(str(tmp_path / "lpips.npz"))
  x, y = _images(2), _images(3)

  def reference(x, y):  # LPIPS v0.1 in PyTorch ops, NCHW
    shift = torch.tensor(perceptual.SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(perceptual.SCALE).view(1, 3, 1, 1)
    def feats(img):
      h = (torch.from_numpy(np.array(img)).permute(0, 3, 1, 2) - shift) / scale
      out = []
      for j, t in enumerate(perceptual.TORCHVISION_INDEX):
        h = F.relu(F.conv2d(h, vgg[f"features.{t}.weight"], vgg[f"features.{t}.bias"], padding=1))
        if j in perceptual.STAGE_ENDS:
          out.append(h)
          h = F.max_pool2d(h, 2, 2)
      return out
    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
      a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
      b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
      total = total + F.conv2d((a - b) ** 2, lin[f"lin{k}.model.1.weight"]).mean((2, 3))[:, 0]
    return total.numpy()

  np.testing.assert_allclose(lpips(x, y), reference(x, y), rtol=1e-4, atol=1e-6)
