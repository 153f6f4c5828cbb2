"""The FID InceptionV3 against the same network run with PyTorch ops on the original
(unconverted) state dict: layouts, batch-norm folding, pools and resizing all agree."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import jax.numpy as jnp  # noqa: E402

from vqlab.convert import inception as convert_inception  # noqa: E402
from vqlab.eval import inception  # noqa: E402


class TorchOps:
  """pytorch-fid's layers as PyTorch ops: NCHW, BasicConv2d = conv (no bias) + BN + ReLU."""

  def __init__(self, state):
    self.state = state

  def conv(self, name, x, cout, kernel, stride=1, pad=0):
    s = lambda k: self.state[f"{name}.{k}"]
    y = F.conv2d(x, s("conv.weight"), stride=stride, padding=pad)
    y = F.batch_norm(y, s("bn.running_mean"), s("bn.running_var"), s("bn.weight"), s("bn.bias"),
                     training=False, eps=0.001)
    return F.relu(y)

  @staticmethod
  def avg_pool(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

  @staticmethod
  def max_pool(x, stride, pad):
    return F.max_pool2d(x, kernel_size=3, stride=stride, padding=pad)

  @staticmethod
  def concat(xs):
    return torch.cat(xs, 1)


def _random_state_dict(seed=0):
  """pytorch-fid's key names and shapes, random values (BN statistics included)."""
  g = torch.Generator().manual_seed(seed)
  state = {}
  for name, (kh, kw, cin, cout) in inception.layer_shapes().items():
    state[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * (2 / (cin * kh * kw)) ** 0.5
    state[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.running_var"] = 0.5 + torch.rand(cout, generator=g)
    state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
  state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 2048 ** -0.5  # IS logits
  state["fc.bias"] = 0.1 * torch.randn(1008, generator=g)
  return state


def _torch_features(state, images01):
  x = F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False)
  with torch.no_grad():
    out = inception.inception_v3(TorchOps(state), 2 * x - 1)
  return F.adaptive_avg_pool2d(out, 1)[:, :, 0, 0].numpy()


@pytest.mark.parametrize("side", [64, 320], ids=["upsample", "downsample"])
def test_converted_network_matches_pytorch(side, tmp_path):
  state = _random_state_dict()
  path = tmp_path / "inception.npz"
  np.savez(path, **convert_inception.convert({k: v.numpy() for k, v in state.items()}))
  params = inception.load_npz(str(path))
  rng = np.random.default_rng(side)
  images = rng.uniform(-1, 1, (2, side, side, 3)).astype(np.float32)
  got = np.asarray(inception.inception_features(params, jnp.asarray(images)))
  want = _torch_features(state, torch.from_numpy((images.transpose(0, 3, 1, 2) + 1) / 2))
  assert got.shape == (2, inception.FEATURES)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
  logits = np.asarray(inception.logits(params, jnp.asarray(want)))
  want_logits = F.linear(torch.from_numpy(want), state["fc.weight"], state["fc.bias"]).numpy()
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)


def test_bad_weight_files_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="Inception"):
    inception.load_npz(str(tmp_path / "missing.npz"))
  arrays = convert_inception.convert({k: v.numpy() for k, v in _random_state_dict().items()})
  arrays.pop("Mixed_7c.branch_pool/kernel")
  np.savez(tmp_path / "partial.npz", **arrays)
  with pytest.raises(ValueError, match="Mixed_7c.branch_pool/kernel"):
    inception.load_npz(str(tmp_path / "partial.npz"))
  with pytest.raises(ValueError, match="images"):
    inception.inception_features({}, jnp.zeros((2, 32, 32, 2)))
  without_fc = {k: v for k, v in arrays.items() if not k.startswith("fc/")}
  without_fc["Mixed_7c.branch_pool/kernel"] = np.zeros((1, 1, 2048, 192), np.float32)
  np.savez(tmp_path / "no_fc.npz", **without_fc)  # FID works, the Inception Score says why not
  with pytest.raises(ValueError, match="no fc layer"):
    inception.logits(inception.load_npz(str(tmp_path / "no_fc.npz")), jnp.zeros((1, 2048)))
