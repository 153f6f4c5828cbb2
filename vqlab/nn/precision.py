"""Mixed precision: float32 parameters and optimizer state, bfloat16 compute.

`set_compute_dtype(model, "bfloat16")` sets the computation dtype of every flax layer in
`model` (Linear, Conv, Embed, the norms, ...): each casts its float32 parameters and
its input to bfloat16 for the matmul / convolution, and the gradient flows back to the
float32 parameter through the cast. Flax's norms keep their statistics in float32 (they
promote to at least float32); our attention computes logits and softmax in float32.

Quantizers are left in float32 whole: distances, argmin, entropies and index arithmetic
must not round (bf16 has 8 bits of mantissa: it merges FSQ levels and ties distinct
distances), and their projections are small. The layers after a quantizer take its
float32 output and cast it themselves.

Model code needs no dtype argument: this runs once on the built model, before
`nnx.split`, so the dtype lives in the graphdef and the jitted step is traced with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

COMPUTE_DTYPES = ("float32", "bfloat16")
LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose, nnx.Embed,
          nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm, nnx.BatchNorm)


def check_compute_dtype(dtype: str, name: str = "compute_dtype") -> None:
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"{name}: expected one of {COMPUTE_DTYPES}, got {dtype!r}")


def keeps_float32(module: nnx.Module) -> bool:
  """Quantizers (every class of vqlab.quantizers) compute in float32 whatever the model."""
  return type(module).__module__.startswith("vqlab.quantizers")


def set_compute_dtype(model: nnx.Module, dtype: str) -> nnx.Module:
  """Sets the compute dtype of `model`'s layers outside its quantizers, in place;
  returns `model`. "float32" leaves the layers' own default (their inputs' dtype)."""
  check_compute_dtype(dtype)
  target = None if dtype == "float32" else jnp.dtype(dtype)
  skipped = [path for path, m in nnx.iter_modules(model) if keeps_float32(m)]
  for path, m in nnx.iter_modules(model):
    inside_quantizer = any(path[:len(q)] == q for q in skipped)
    if isinstance(m, LAYERS) and not inside_quantizer:
      m.dtype = target
  return model


def float32_softmax_attention(query, key, value, bias=None, mask=None, **unused):
  """`nnx.MultiHeadAttention`'s attention_fn with logits and softmax in float32 (flax's
  default takes the softmax in the query's dtype). query (..., Lq, H, Dh)."""
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key.astype(query.dtype),
                      preferred_element_type=jnp.float32) * query.shape[-1] ** -0.5
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value)
