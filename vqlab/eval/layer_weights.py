"""Converted weights of the frozen evaluation networks (Inception for FID, I3D for FVD):
an .npz of "layer/field" arrays, read into {layer: {field: array}} and checked against
the network's own layer shapes, so a wrong or truncated file fails by name."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np


def read_layers(path: str, network: str) -> dict[str, dict]:
  """{layer: {field: array}} of a converted .npz."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"path: expected a converted {network} .npz file, got {path!r}")
  with np.load(path) as f:
    arrays = dict(f)
  params = {}
  for key, value in arrays.items():
    name, field = key.rsplit("/", 1)
    params.setdefault(name, {})[field] = jnp.asarray(value)
  return params


def check_layers(path: str, network: str, params: Mapping[str, Mapping],
                 want: Mapping[str, Mapping[str, tuple]]) -> None:
  """The same layers as `want` ({layer: {field: shape}}), each field of its shape."""
  if set(want) != set(params):
    raise ValueError(f"{path}: layers differ from {network}'s: missing "
                     f"{sorted(set(want) - set(params))[:5]}, unexpected "
                     f"{sorted(set(params) - set(want))[:5]}")
  for name, fields in want.items():
    for field, shape in fields.items():
      got = params[name][field].shape if field in params[name] else "nothing"
      if got != shape:
        raise ValueError(f"{name}/{field}: expected shape {shape}, got {got}")
