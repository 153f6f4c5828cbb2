"""HuBERT checkpoints in transformers' layout (HubertModel / HubertForCTC state dicts:
facebook/hubert-base-ls960, hubert-large-ll60k, ...) -> the .npz that
`vqlab.models.hubert.load_npz` reads, the teacher of semantic distillation:

  vqlab convert hubert --weights pytorch_model.bin --out hubert_base.npz

The config is read from the weights (conv layers and kernels, widths, depth, norm mode);
strides are the published models' (5 2 2 2 2 2 2), heads are width / 64 unless --heads,
and layer-norm-mode models are taken as pre-norm ("stable"), as every published one is.
The positional convolution's weight norm is folded into its weight.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import numpy as np

from vqlab.convert.state_dict import read_state_dict
from vqlab.models.hubert import BASE, HubertConfig

_LAYER_PARTS = {"attention.q_proj": "attention.q", "attention.k_proj": "attention.k",
                "attention.v_proj": "attention.v", "attention.out_proj": "attention.out",
                "layer_norm": "attention_norm", "final_layer_norm": "final_norm",
                "feed_forward.intermediate_dense": "feed_forward.intermediate",
                "feed_forward.output_dense": "feed_forward.output"}


def _weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
  """PyTorch's weight_norm(dim=2) of a (C_out, C_in, K) conv: w = g v / |v|, the norm
  over the first two axes for each tap."""
  return g * v / np.sqrt(np.sum(v * v, axis=(0, 1), keepdims=True))


def convert(state: dict, heads: int | None = None) -> tuple[dict[str, np.ndarray], HubertConfig]:
  state = {re.sub(r"^hubert\.", "", k): np.asarray(v, np.float32) for k, v in state.items()}
  out = {}
  convs = sorted({int(m.group(1)) for k in state
                  if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.", k))})
  if not convs:
    raise ValueError("weights: expected a HuBERT state dict (feature_extractor.conv_layers.*), "
                     f"found keys like {sorted(state)[:3]}")
  layer_mode = "feature_extractor.conv_layers.1.layer_norm.weight" in state
  for i in convs:
    prefix = f"feature_extractor.conv_layers.{i}."
    out[f"conv.{i}.weight"] = state[prefix + "conv.weight"]
    if prefix + "conv.bias" in state:
      out[f"conv.{i}.bias"] = state[prefix + "conv.bias"]
    for n in ("weight", "bias"):
      if prefix + f"layer_norm.{n}" in state:
        out[f"conv.{i}.norm.{n}"] = state[prefix + f"layer_norm.{n}"]
  for n in ("weight", "bias"):
    out[f"projection.norm.{n}"] = state[f"feature_projection.layer_norm.{n}"]
    out[f"projection.{n}"] = state[f"feature_projection.projection.{n}"]
    out[f"encoder_norm.{n}"] = state[f"encoder.layer_norm.{n}"]
  pos = "encoder.pos_conv_embed.conv."
  if pos + "weight_g" in state:
    g, v = state[pos + "weight_g"], state[pos + "weight_v"]
  else:  # torch.nn.utils.parametrizations.weight_norm's names
    g = state[pos + "parametrizations.weight.original0"]
    v = state[pos + "parametrizations.weight.original1"]
  out["pos_conv.weight"], out["pos_conv.bias"] = _weight_norm(g, v), state[pos + "bias"]
  layers = sorted({int(m.group(1)) for k in state
                   if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
  for i in layers:
    for theirs, ours in _LAYER_PARTS.items():
      for n in ("weight", "bias"):
        out[f"layers.{i}.{ours}.{n}"] = state[f"encoder.layers.{i}.{theirs}.{n}"]
  hidden = out["projection.weight"].shape[0]
  config = dataclasses.replace(
      BASE, conv_dim=tuple(out[f"conv.{i}.weight"].shape[0] for i in convs),
      conv_kernel=tuple(out[f"conv.{i}.weight"].shape[2] for i in convs),
      conv_stride=BASE.conv_stride[:len(convs)], conv_bias="conv.0.bias" in out,
      feat_extract_norm="layer" if layer_mode else "group", hidden_size=hidden,
      num_layers=len(layers), num_heads=heads or hidden // 64,
      intermediate_size=out["layers.0.feed_forward.intermediate.weight"].shape[0] if layers else 0,
      pos_conv_kernel=g.shape[2], pos_conv_groups=hidden // v.shape[1],
      stable_layer_norm=layer_mode)
  return out, config


def save(path: str, params: dict[str, np.ndarray], config: HubertConfig) -> None:
  np.savez(path, config=np.asarray(json.dumps(dataclasses.asdict(config))), **params)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="vqlab convert hubert",
                                   description="Convert a HuBERT checkpoint to .npz.")
  parser.add_argument("--weights", required=True,
                      help="transformers' HubertModel state dict (pytorch_model.bin / .pth)")
  parser.add_argument("--heads", type=int, default=None, help="attention heads (width / 64)")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  params, config = convert(read_state_dict(args.weights, "--weights"), args.heads)
  save(args.out, params, config)
  print(f"wrote {args.out}: {config.num_layers} layers of width {config.hidden_size}")
