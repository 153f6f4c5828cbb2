"""The FVD I3D against the same network run with PyTorch ops on the original
(unconverted) InceptionI3d state dict: layouts, batch-norm folding, SAME padding of
convolutions and zero-padded max pools, the time pooling and the logits."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vqlab.convert import i3d as convert_i3d  # noqa: E402
from vqlab.eval import i3d  # noqa: E402
from vqlab.eval.image_metrics import frechet_distance, gaussian_stats  # noqa: E402


def _pad(x, kernel, stride):
  """TF SAME padding of an NCDHW tensor, as pytorch-i3d computes it."""
  pads = []
  for n, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
    pads += list(i3d.same_padding(n, k, s))
  return F.pad(x, pads)


class TorchOps:
  """pytorch-i3d's Unit3D / MaxPool3dSamePadding as PyTorch ops, NCDHW."""

  def __init__(self, state):
    self.state = state

  def unit(self, name, x, cout, kernel, stride=(1, 1, 1)):
    s = lambda k: self.state[f"{name}.{k}"]
    y = F.conv3d(_pad(x, kernel, stride), s("conv3d.weight"), stride=stride)
    y = F.batch_norm(y, s("bn.running_mean"), s("bn.running_var"), s("bn.weight"), s("bn.bias"),
                     training=False, eps=0.001)
    return F.relu(y)

  @staticmethod
  def max_pool(x, kernel, stride):
    return F.max_pool3d(_pad(x, kernel, stride), kernel, stride)

  @staticmethod
  def avg_pool(x, kernel):
    return F.avg_pool3d(x, kernel, stride=1)[:, :, :, 0, 0].transpose(1, 2)  # (B, t, C)

  def logits(self, pooled, num_classes):
    w = self.state["logits.conv3d.weight"][:, :, 0, 0, 0]
    return F.linear(pooled, w, self.state["logits.conv3d.bias"])

  @staticmethod
  def concat(xs):
    return torch.cat(xs, 1)


def _random_state_dict(num_classes=400, seed=0):
  """pytorch-i3d's key names and shapes, random values (BN statistics included)."""
  g = torch.Generator().manual_seed(seed)
  state = {}
  for name, (kt, kh, kw, cin, cout) in i3d.layer_shapes(num_classes).items():
    fan_in = cin * kt * kh * kw
    state[f"{name}.conv3d.weight"] = torch.randn(cout, cin, kt, kh, kw, generator=g) * (
        2 / fan_in) ** 0.5
    if name == "logits":
      state[f"{name}.conv3d.bias"] = 0.1 * torch.randn(cout, generator=g)
      continue
    state[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
    state[f"{name}.bn.running_var"] = 0.5 + torch.rand(cout, generator=g)
  return state


def test_converted_network_matches_pytorch(tmp_path):
  state = _random_state_dict(num_classes=10)
  path = tmp_path / "i3d.npz"
  np.savez(path, **convert_i3d.convert({k: v.numpy() for k, v in state.items()}))
  params = i3d.load_npz(str(path))
  clips = np.random.default_rng(0).uniform(-1, 1, (1, 16, 224, 224, 3)).astype(np.float32)
  got = np.asarray(i3d.i3d_features(params, jnp.asarray(clips)))
  got_pooled = np.asarray(i3d.i3d_features(params, jnp.asarray(clips), pooled=True))
  with torch.no_grad():
    pooled, logits = i3d.i3d(TorchOps(state), torch.from_numpy(clips.transpose(0, 4, 1, 2, 3)),
                             10)
  want, want_pooled = logits.mean(1).numpy(), pooled.mean(1).numpy()
  assert got.shape == (1, 10) and got_pooled.shape == (1, i3d.POOLED)
  np.testing.assert_allclose(got_pooled, want_pooled, rtol=2e-3,
                             atol=2e-3 * np.abs(want_pooled).max())
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_bad_weights_and_clips_are_refused(tmp_path):
  state = {k: v.numpy() for k, v in _random_state_dict(num_classes=10).items()}
  arrays = convert_i3d.convert(state)
  del arrays["Mixed_5c.b0/kernel"]
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match="layers differ|expected shape"):
    i3d.load_npz(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError):
    i3d.load_npz(str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="expected >= 9 frames"):
    i3d.preprocess(jnp.zeros((1, 4, 32, 32, 3)))


@pytest.mark.slow  # compiling the whole I3D: CI's slow step
def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
  params = i3d.random_params(num_classes=16)
  features = jax.jit(i3d.i3d_features)
  real = np.random.default_rng(1).uniform(-1, 1, (3, 9, 16, 16, 1)).astype(np.float32)
  feats = np.asarray(features(params, jnp.asarray(real)))
  assert feats.shape == (3, 16)
  same = frechet_distance(*gaussian_stats(feats), *gaussian_stats(feats))
  shifted = np.asarray(features(params, jnp.asarray(np.clip(real + 0.5, -1, 1))))
  assert abs(same) < 1e-6 and frechet_distance(*gaussian_stats(feats),
                                               *gaussian_stats(shifted)) > 1e-3
