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


# values of the arguments some kinds require, for a spec switched to such a kind: the FSQ
# paper's ~1k-code levels, and what the other families are usually run with
REQUIRED_STARTING_VALUES = {"levels": (8, 5, 5, 5), "num_levels": 8, "groups": 2,
                            "codebook_size": 1024}


def spec_defaults(kind: str) -> dict[str, Any]:
  """Every argument of every kind, each at `kind`'s default where it has one, else the
  first kind's that has one (or `REQUIRED_STARTING_VALUES`): the `args` of a config's
  quantizer spec, so `kind` can be switched and any argument set from the command line."""
  args = dict(REQUIRED_STARTING_VALUES)
  for k in KINDS:
    for name, value in default_args(k).items():
      args.setdefault(name, value)
  return {**args, **default_args(kind)}


def spec_args(spec: Any) -> dict[str, Any]:
  """The keyword arguments of `spec["kind"]` from a config's quantizer spec ({kind, args,
  defaults_of}): the names it takes, where one still at the default of the kind the spec
  was written for (`defaults_of`) takes `kind`'s own default instead."""
  kind, args = spec["kind"], dict(spec["args"])
  own, theirs = spec_defaults(kind), spec_defaults(spec.get("defaults_of", kind))
  accepted = accepted_args(kind)
  return {name: own[name] if name in own and name in theirs and _same(v, theirs[name]) else v
          for name, v in args.items() if name in accepted}


def accepted_args(kind: str) -> set[str]:
  """The names of `kind`'s keyword arguments (not dim / rngs; a residual kind's VQ ones too)."""
  params = inspect.signature(quantizer_class(kind).__init__).parameters
  names = {n for n in params if n not in ("self", "dim", "rngs")}
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    names = (names - {n for n, p in params.items() if p.kind == p.VAR_KEYWORD}) | accepted_args("vq")
  return names


def _same(a: Any, b: Any) -> bool:
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  return norm(a) == norm(b)


def build(kind: str, dim: int, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """A quantizer taking `dim` input channels. kwargs are the class's own arguments."""
  unknown = sorted(set(kwargs) - accepted_args(kind))
  if unknown:
    raise ValueError(f"{kind}: unknown arguments {unknown}; expected some of "
                     f"{sorted(accepted_args(kind))}")
  quantizer = quantizer_class(kind)(dim=dim, rngs=rngs, **kwargs)
  if quantizer.dim != dim:
    raise ValueError(f"{kind}: built for dim={quantizer.dim}, expected {dim}")
  return quantizer
