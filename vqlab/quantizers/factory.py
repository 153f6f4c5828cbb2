"""Build any quantizer of the library from a config: `build(kind, dim, rngs=..., **kwargs)`."""

from __future__ import annotations

import inspect
from typing import Any

from flax import nnx

from vqlab.quantizers.bsq import BSQ
from vqlab.quantizers.fsq import FSQ
from vqlab.quantizers.lfq import LFQ
from vqlab.quantizers.multiscale import MultiScaleVQ
from vqlab.quantizers.residual import GroupedResidualVQ, GroupedVQ, ResidualFSQ, ResidualVQ
from vqlab.quantizers.vq import VectorQuantizer

# the `kind` a config names -> the class it builds
KINDS = {
    "vq": VectorQuantizer, "rvq": ResidualVQ, "gvq": GroupedVQ, "grvq": GroupedResidualVQ,
    "fsq": FSQ, "rfsq": ResidualFSQ, "lfq": LFQ, "bsq": BSQ, "msvq": MultiScaleVQ,
}


def quantizer_class(kind: str) -> type:
  if kind not in KINDS:
    raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
  return KINDS[kind]


def default_args(kind: str) -> dict[str, Any]:
  """The keyword arguments of `kind`'s class with their defaults (not dim / rngs)."""
  params = inspect.signature(quantizer_class(kind).__init__).parameters
  args = {name: p.default for name, p in params.items()
          if name not in ("self", "dim", "rngs") and p.default is not p.empty}
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):  # **vq_kwargs
    args = {**default_args("vq"), **args}
  return args


def build(kind: str, dim: int, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """A quantizer taking `dim` input channels. kwargs are the class's own arguments."""
  cls = quantizer_class(kind)
  accepted = inspect.signature(cls.__init__).parameters
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
    raise ValueError(f"{kind}: unknown arguments {unknown}; expected some of "
                     f"{sorted(k for k in accepted if k not in ('self', 'rngs'))}")
  quantizer = cls(dim=dim, rngs=rngs, **kwargs)
  if quantizer.dim != dim:
    raise ValueError(f"{kind}: built for dim={quantizer.dim}, expected {dim}")
  return quantizer
