"""The HuBERT converter: a random network in transformers' layout, run with PyTorch's
modules, gives what the converted JAX teacher gives."""

import warnings

import numpy as np
import pytest

from vqlab.convert import hubert as convert_hubert
from vqlab.models import hubert

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONV = dict(conv_dim=(16, 16, 24), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2))
HIDDEN, HEADS, LAYERS, FF, POS_K, POS_G = 32, 4, 2, 48, 8, 4


def _modules(layer_mode: bool):
  """transformers' HubertModel pieces as PyTorch modules, random weights."""
  torch.manual_seed(0)
  nn = torch.nn
  m = nn.Module()
  m.convs = nn.ModuleList()
  m.norms = nn.ModuleList()
  c_in = 1
  for i, (c, k, s) in enumerate(zip(CONV["conv_dim"], CONV["conv_kernel"], CONV["conv_stride"])):
    m.convs.append(nn.Conv1d(c_in, c, k, stride=s, bias=layer_mode))
    if layer_mode:
      m.norms.append(nn.LayerNorm(c))
    elif i == 0:
      m.norms.append(nn.GroupNorm(c, c))
    c_in = c
  m.proj_norm, m.proj = nn.LayerNorm(c_in), nn.Linear(c_in, HIDDEN)
  pos = nn.Conv1d(HIDDEN, HIDDEN, POS_K, padding=POS_K // 2, groups=POS_G)
  if layer_mode:  # both of PyTorch's weight-norm APIs, with their two sets of key names
    m.pos = torch.nn.utils.parametrizations.weight_norm(pos, name="weight", dim=2)
  else:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", FutureWarning)  # the old API, as older checkpoints
      m.pos = torch.nn.utils.weight_norm(pos, name="weight", dim=2)
  m.enc_norm = nn.LayerNorm(HIDDEN)
  m.layers = nn.ModuleList()
  for _ in range(LAYERS):
    layer = nn.Module()
    layer.q, layer.k, layer.v, layer.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
    layer.norm, layer.final = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
    layer.up, layer.down = nn.Linear(HIDDEN, FF), nn.Linear(FF, HIDDEN)
    m.layers.append(layer)
  for p in m.parameters():  # norms away from the identity, so they are tested
    p.data += 0.1 * torch.randn_like(p)
  return m


def _state_dict(m, layer_mode: bool) -> dict:
  """The module's weights under transformers' HubertModel names."""
  s = {}
  for i, conv in enumerate(m.convs):
    s[f"feature_extractor.conv_layers.{i}.conv.weight"] = conv.weight
    if conv.bias is not None:
      s[f"feature_extractor.conv_layers.{i}.conv.bias"] = conv.bias
    if i < len(m.norms):
      s[f"feature_extractor.conv_layers.{i}.layer_norm.weight"] = m.norms[i].weight
      s[f"feature_extractor.conv_layers.{i}.layer_norm.bias"] = m.norms[i].bias
  for n in ("weight", "bias"):
    s[f"feature_projection.layer_norm.{n}"] = getattr(m.proj_norm, n)
    s[f"feature_projection.projection.{n}"] = getattr(m.proj, n)
    s[f"encoder.layer_norm.{n}"] = getattr(m.enc_norm, n)
  if layer_mode:
    s["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = (
        m.pos.parametrizations.weight.original0)
    s["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = (
        m.pos.parametrizations.weight.original1)
  else:
    s["encoder.pos_conv_embed.conv.weight_g"] = m.pos.weight_g
    s["encoder.pos_conv_embed.conv.weight_v"] = m.pos.weight_v
  s["encoder.pos_conv_embed.conv.bias"] = m.pos.bias
  names = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
           "o": "attention.out_proj", "norm": "layer_norm", "final": "final_layer_norm",
           "up": "feed_forward.intermediate_dense", "down": "feed_forward.output_dense"}
  for i, layer in enumerate(m.layers):
    for ours, theirs in names.items():
      for n in ("weight", "bias"):
        s[f"encoder.layers.{i}.{theirs}.{n}"] = getattr(getattr(layer, ours), n)
  return {"hubert." + k: v.detach().numpy() for k, v in s.items()}  # HubertForCTC's prefix


def _reference(m, wave, layer_mode: bool):
  """HubertModel's forward (eval), written out with PyTorch's modules: all hidden states."""
  x = torch.tensor(wave)[:, None]
  for i, conv in enumerate(m.convs):
    x = conv(x)
    if layer_mode:
      x = m.norms[i](x.transpose(1, 2)).transpose(1, 2)
    elif i == 0:
      x = m.norms[0](x)
    x = F.gelu(x)
  x = m.proj(m.proj_norm(x.transpose(1, 2)))
  pos = F.gelu(m.pos(x.transpose(1, 2))[:, :, :-1]).transpose(1, 2)  # even kernel: drop one
  x = x + pos
  if not layer_mode:
    x = m.enc_norm(x)
  states = [x]
  b, t, _ = x.shape

  def attention(layer, h):
    split = lambda y: y.view(b, t, HEADS, HIDDEN // HEADS).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(layer.q(h)), split(layer.k(h)), split(layer.v(h)))
    return layer.o(out.transpose(1, 2).reshape(b, t, HIDDEN))

  ff = lambda layer, h: layer.down(F.gelu(layer.up(h)))
  for layer in m.layers:
    if layer_mode:
      x = x + attention(layer, layer.norm(x))
      x = x + ff(layer, layer.final(x))
    else:
      x = layer.norm(x + attention(layer, x))
      x = layer.final(x + ff(layer, x))
    states.append(x)
  if layer_mode:
    states[-1] = m.enc_norm(x)
  return [s.detach().numpy() for s in states]


@pytest.mark.parametrize("layer_mode", [False, True], ids=["base-like", "large-like"])
def test_converted_hubert_matches_pytorch(layer_mode, tmp_path):
  m = _modules(layer_mode)
  wave = np.random.default_rng(0).normal(size=(2, 1600)).astype(np.float32)
  with torch.no_grad():
    expected = _reference(m, wave, layer_mode)
  flat, config = convert_hubert.convert(_state_dict(m, layer_mode), heads=HEADS)
  assert config.feat_extract_norm == ("layer" if layer_mode else "group")
  assert config.stable_layer_norm == layer_mode and config.conv_bias == layer_mode
  assert (config.conv_dim, config.conv_kernel) == (CONV["conv_dim"], CONV["conv_kernel"])
  assert (config.hidden_size, config.num_layers, config.intermediate_size) == (HIDDEN, LAYERS, FF)
  assert (config.pos_conv_kernel, config.pos_conv_groups) == (POS_K, POS_G)
  assert config.conv_stride == CONV["conv_stride"]  # the published strides' first three
  path = str(tmp_path / "h.npz")
  convert_hubert.save(path, flat, config)
  params, loaded = hubert.load_npz(path)
  assert loaded == config
  got = hubert.hidden_states(params, wave, loaded)
  assert len(got) == len(expected) == LAYERS + 1
  assert got[0].shape == (2, 79, HIDDEN)  # 1600 samples: 319, 159, then 79 frames
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), e, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(hubert.features(params, wave, loaded, layer=1)),
                             expected[1], rtol=2e-4, atol=2e-4)


def test_not_a_hubert_checkpoint_is_refused():
  with pytest.raises(ValueError, match="expected a HuBERT state dict"):
    convert_hubert.convert({"encoder.weight": np.zeros(3)})


def test_random_teacher_saves_loads_and_averages_its_layers(tmp_path):
  """`random_params` has the converted layout (save -> load_npz runs it), and layer="avg"
  is SpeechTokenizer's teacher: the mean of the input and every layer's output."""
  config = hubert.HubertConfig(conv_dim=(8, 8), conv_kernel=(2, 4), conv_stride=(2, 4),
                               hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                               pos_conv_kernel=4, pos_conv_groups=2)
  path = str(tmp_path / "tiny.npz")
  convert_hubert.save(path, hubert.random_params(config, seed=3), config)
  params, loaded = hubert.load_npz(path)
  assert loaded == config and loaded.hop == 8
  wave = np.random.default_rng(0).normal(size=(2, 800)).astype(np.float32)
  states = hubert.hidden_states(params, wave, loaded)
  assert len(states) == 3 and states[0].shape == (2, 100, 16)  # 800 / 8 frames
  np.testing.assert_allclose(np.asarray(hubert.features(params, wave, loaded, "avg")),
                             np.mean([np.asarray(s) for s in states], axis=0), rtol=1e-6)
  with pytest.raises(ValueError, match="layer"):
    hubert.features(params, wave, loaded, "last")


@pytest.mark.parametrize("layer_mode", [False, True], ids=["base-like", "large-like"])
def test_padded_rows_with_lengths_equal_each_row_alone(layer_mode):
  """A batch of utterances padded to one length: with `lengths` (the attention mask of
  transformers' HuBERT) each row's valid frames are the row's own, group norm included."""
  config = hubert.HubertConfig(
      conv_dim=(8, 8), conv_kernel=(4, 4), conv_stride=(2, 4), hidden_size=16, num_layers=2,
      num_heads=2, intermediate_size=32, pos_conv_kernel=4, pos_conv_groups=2,
      feat_extract_norm="layer" if layer_mode else "group", conv_bias=layer_mode,
      stable_layer_norm=layer_mode)
  params = hubert.unflatten(hubert.random_params(config, seed=1))
  rng = np.random.default_rng(0)
  lengths = [800, 523]
  batch = np.zeros((2, 800), np.float32)
  rows = [rng.normal(size=n).astype(np.float32) for n in lengths]
  for i, r in enumerate(rows):
    batch[i, :len(r)] = r
  padded = hubert.hidden_states(params, batch, config, np.asarray(lengths))
  for i, r in enumerate(rows):
    alone = hubert.hidden_states(params, r[None], config)
    n = hubert.num_frames(lengths[i], config)
    assert alone[0].shape[1] == n == [99, 65][i]  # 800: (800 - 4) // 2 + 1 = 399, then 99
    for a, p in zip(alone, padded):
      np.testing.assert_allclose(np.asarray(p[i, :n]), np.asarray(a[0]), rtol=2e-5, atol=2e-5)
  # unpadded rows: lengths change nothing
  full = hubert.hidden_states(params, batch[:1], config, np.asarray([800]))
  np.testing.assert_allclose(np.asarray(full[-1]), np.asarray(padded[-1][:1]), atol=2e-5)
  assert hubert.frame_centre(hubert.BASE) == pytest.approx(0.625)  # 400 samples, hop 320
