"""HuBERT's speech encoder (Hsu et al. 2021, https://arxiv.org/abs/2106.07447), the teacher
of semantic distillation (SpeechTokenizer distils its features into a codec's first
level), as a frozen function of a parameter tree: `features(params, wave, config)`.

The architecture of the published base / large models (the layout of transformers'
HubertModel; `vqlab.convert.hubert` maps those checkpoints to this tree):
- a conv feature encoder: 7 conv layers (kernels 10 3 3 3 3 2 2, strides 5 2 2 2 2 2 2:
  320 samples, 20 ms, per frame at 16 kHz), GELU, group norm after the first ("group"
  mode, base) or layer norm after each ("layer" mode, large);
- a projection (layer norm, linear) to the transformer width;
- a grouped positional convolution (weight-normalised, kernel 128, 16 groups, GELU)
  added to its input;
- transformer layers, post-norm (base) or pre-norm ("stable" layer norm, large).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HubertConfig:
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  feat_extract_norm: str = "group"  # "group" (base) or "layer" (large)
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  pos_conv_kernel: int = 128
  pos_conv_groups: int = 16
  stable_layer_norm: bool = False  # pre-norm layers (large)
  layer_norm_eps: float = 1e-5

  @property
  def hop(self) -> int:
    return math.prod(self.conv_stride)


BASE = HubertConfig()
LARGE = HubertConfig(feat_extract_norm="layer", hidden_size=1024, num_layers=24,
                     num_heads=16, intermediate_size=4096, conv_bias=True,
                     stable_layer_norm=True)


def _layer_norm(x, p, eps):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["weight"] + p["bias"]


def _conv1d(x, weight, bias, stride: int, groups: int = 1, padding: int = 0):
  """x (B, T, C_in), weight (C_out, C_in / groups, K) as PyTorch stores it."""
  y = jax.lax.conv_general_dilated(x, jnp.transpose(weight, (2, 1, 0)), (stride,),
                                   [(padding, padding)], feature_group_count=groups,
                                   dimension_numbers=("NWC", "WIO", "NWC"))
  return y if bias is None else y + bias


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)  # PyTorch's default GELU: the exact erf form


def num_frames(samples, config: HubertConfig):
  """Frames of the conv encoder over `samples` (an int or an int array): each layer's
  valid-convolution arithmetic."""
  n = samples
  for k, stride in zip(config.conv_kernel, config.conv_stride):
    n = _valid_frames(n, k, stride)
  return n


def _valid_frames(samples, kernel: int, stride: int):
  """Outputs of one valid convolution over `samples` inputs."""
  return (samples - kernel) // stride + 1


def frame_centre(config: HubertConfig) -> float:
  """Where frame t's receptive field is centred, in hops after t * hop (0.625 for the
  published models: 400 samples from t * 320)."""
  field, step = config.conv_kernel[0], config.conv_stride[0]
  for k, stride in zip(config.conv_kernel[1:], config.conv_stride[1:]):
    field, step = field + (k - 1) * step, step * stride
  return field / 2 / config.hop


def conv_features(params, wave: Array, config: HubertConfig, lengths: Array | None = None
                  ) -> Array:
  """(B, T) waveform -> (B, frames, conv_dim[-1]) conv features. `lengths` (B,): the
  valid samples of each row (the rest padding): the first layer's group norm takes its
  statistics over the valid frames only, so those frames equal the unpadded row's."""
  x = wave[..., None].astype(jnp.float32)
  for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride)):
    p = params["conv"][i]
    x = _conv1d(x, p["weight"], p.get("bias"), s)
    if config.feat_extract_norm == "layer":
      x = _layer_norm(x, p["norm"], config.layer_norm_eps)
    elif i == 0:  # group norm with one group per channel: normalise each over time
      if lengths is None:
        w = jnp.full(x.shape[:2] + (1,), 1.0 / x.shape[1])
      else:
        valid = jnp.arange(x.shape[1])[None] < _valid_frames(lengths, k, s)[:, None]
        w = (valid / jnp.sum(valid, axis=1, keepdims=True))[..., None]
      mean = jnp.sum(x * w, axis=1, keepdims=True)
      var = jnp.sum(jnp.square(x - mean) * w, axis=1, keepdims=True)
      x = (x - mean) * jax.lax.rsqrt(var + config.layer_norm_eps) * p["norm"]["weight"] \
          + p["norm"]["bias"]
    x = _gelu(x)
  return x


def _attention(x, p, heads: int, valid: Array | None = None):
  b, t, d = x.shape
  split = lambda y: y.reshape(b, t, heads, d // heads)
  q = split(x @ p["q"]["weight"].T + p["q"]["bias"]) * (d // heads) ** -0.5
  k = split(x @ p["k"]["weight"].T + p["k"]["bias"])
  v = split(x @ p["v"]["weight"].T + p["v"]["bias"])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  if valid is not None:  # padding frames are no keys
    logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  w = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
  return out @ p["out"]["weight"].T + p["out"]["bias"]


def _feed_forward(x, p):
  h = _gelu(x @ p["intermediate"]["weight"].T + p["intermediate"]["bias"])
  return h @ p["output"]["weight"].T + p["output"]["bias"]


def hidden_states(params, wave: Array, config: HubertConfig, lengths: Array | None = None
                  ) -> list[Array]:
  """[the transformer's input, the output of each layer], each (B, frames, hidden).
  `lengths` (B,): valid samples per row, the rest padding (as transformers' attention
  mask): the first `num_frames(lengths)` frames of a row equal those of the row alone."""
  eps = config.layer_norm_eps
  x = conv_features(params, wave, config, lengths)
  x = _layer_norm(x, params["projection"]["norm"], eps)
  x = x @ params["projection"]["weight"].T + params["projection"]["bias"]
  valid = None
  if lengths is not None:  # padding frames: zero into the positional conv, no keys
    valid = jnp.arange(x.shape[1])[None] < num_frames(lengths, config)[:, None]
    x = jnp.where(valid[..., None], x, 0.0)
  pos = params["pos_conv"]
  y = _conv1d(x, pos["weight"], pos["bias"], 1, config.pos_conv_groups,
              config.pos_conv_kernel // 2)
  if config.pos_conv_kernel % 2 == 0:
    y = y[:, :-1]  # an even kernel with padding k/2 gives one frame too many
  x = x + _gelu(y)
  if not config.stable_layer_norm:
    x = _layer_norm(x, params["encoder_norm"], eps)
  states = [x]
  for p in params["layers"]:
    if config.stable_layer_norm:
      x = x + _attention(_layer_norm(x, p["attention_norm"], eps), p["attention"],
                         config.num_heads, valid)
      x = x + _feed_forward(_layer_norm(x, p["final_norm"], eps), p["feed_forward"])
    else:
      x = _layer_norm(x + _attention(x, p["attention"], config.num_heads, valid),
                      p["attention_norm"], eps)
      x = _layer_norm(x + _feed_forward(x, p["feed_forward"]), p["final_norm"], eps)
    states.append(x)
  if config.stable_layer_norm:
    states[-1] = _layer_norm(x, params["encoder_norm"], eps)
  return states


def features(params, wave: Array, config: HubertConfig, layer: int | str | None = None,
             lengths: Array | None = None) -> Array:
  """The teacher's frame features: layer `layer`'s output (1-based; default the last),
  with layer=0 the transformer's input, or with layer="avg" the mean of the input and
  every layer's output (SpeechTokenizer's teacher). (B, frames, hidden)."""
  states = hidden_states(params, wave, config, lengths)
  if layer == "avg":
    return jnp.mean(jnp.stack(states), axis=0)
  layer = len(states) - 1 if layer is None else layer
  if not isinstance(layer, int):
    raise ValueError(f"layer: expected an int or 'avg', got {layer!r}")
  if not 0 <= layer < len(states):
    raise ValueError(f"layer: expected in [0, {len(states) - 1}], got {layer}")
  return states[layer]


def normalize_wave(wave: Array) -> Array:
  """Zero mean, unit variance per utterance, as HuBERT's feature extractor prepares
  input (the published large models expect it; base was trained on raw waveforms)."""
  mean = jnp.mean(wave, axis=-1, keepdims=True)
  return (wave - mean) / jnp.sqrt(jnp.var(wave, axis=-1, keepdims=True) + 1e-7)


def random_params(config: HubertConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """A randomly initialised network of `config`'s shape (tests, smoke runs) as the flat
  {name: array} that `vqlab convert hubert` saves (`unflatten` gives the tree):
  fan-in-scaled normal weights, unit norms."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (rng.normal(size=shape) / math.sqrt(math.prod(shape[1:]))).astype(
      np.float32)
  ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
  flat, hidden, ff = {}, config.hidden_size, config.intermediate_size
  channels = (1, *config.conv_dim)
  for i, k in enumerate(config.conv_kernel):
    flat[f"conv.{i}.weight"] = normal(channels[i + 1], channels[i], k)
    if config.conv_bias:
      flat[f"conv.{i}.bias"] = zeros(channels[i + 1])
    if config.feat_extract_norm == "layer" or i == 0:
      flat[f"conv.{i}.norm.weight"] = ones(channels[i + 1])
      flat[f"conv.{i}.norm.bias"] = zeros(channels[i + 1])
  linear = {"projection": (hidden, channels[-1])}
  for i in range(config.num_layers):
    linear.update({f"layers.{i}.attention.{n}": (hidden, hidden) for n in ("q", "k", "v", "out")})
    linear[f"layers.{i}.feed_forward.intermediate"] = (ff, hidden)
    linear[f"layers.{i}.feed_forward.output"] = (hidden, ff)
    for n in ("attention_norm", "final_norm"):
      flat[f"layers.{i}.{n}.weight"], flat[f"layers.{i}.{n}.bias"] = ones(hidden), zeros(hidden)
  for name, (out, inp) in linear.items():
    flat[f"{name}.weight"], flat[f"{name}.bias"] = normal(out, inp), zeros(out)
  flat["projection.norm.weight"], flat["projection.norm.bias"] = (ones(channels[-1]),
                                                                  zeros(channels[-1]))
  flat["encoder_norm.weight"], flat["encoder_norm.bias"] = ones(hidden), zeros(hidden)
  flat["pos_conv.weight"] = normal(hidden, hidden // config.pos_conv_groups,
                                   config.pos_conv_kernel)
  flat["pos_conv.bias"] = zeros(hidden)
  return flat


def unflatten(flat: dict) -> dict:
  """{"layers.0.attention.q.weight": array, ...} -> the parameter tree (lists for the
  numbered parts)."""
  tree: dict = {}
  for name, value in flat.items():
    parts = name.split(".")
    node = tree
    for part, following in zip(parts[:-1], parts[1:]):
      node = node.setdefault(part, {})
    node[parts[-1]] = jnp.asarray(value)

  def lists(node):
    if not isinstance(node, dict):
      return node
    if node and all(k.isdigit() for k in node):
      return [lists(node[str(i)]) for i in range(len(node))]
    return {k: lists(v) for k, v in node.items()}

  return lists(tree)


def load_npz(path: str) -> tuple[dict, HubertConfig]:
  """The parameter tree and config that `vqlab convert hubert` wrote."""
  import json

  import numpy as np
  with np.load(path) as f:
    flat = {k: f[k] for k in f.files if k != "config"}
    fields = json.loads(str(f["config"]))
  config = HubertConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
  return unflatten(flat), config
