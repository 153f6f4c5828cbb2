"""A pre-norm decoder-only transformer for token generators (NNX).

One block serves next-token (LlamaGen), next-scale (VAR) and masked (MaskGIT) models:
- norm: RMSNorm or LayerNorm; optionally AdaLN (the norm has no affine and a SiLU ->
  linear map of a condition vector gives per-block scale / shift / gate, as VAR's
  `AdaLNSelfAttn`);
- MLP: SwiGLU or GELU (tanh);
- attention: multi-head, optional QK-norm ("rms", or VAR's "l2": unit q and k times a
  learned per-head scale), RoPE from `rope_1d` / `rope_2d` angles or none (learned
  positions live in the model);
- masks from levels: a query at level a sees keys at levels <= a. Causal = level is the
  position; VAR's block-causal = level is the scale; a bidirectional prefix shares one
  level; all-equal levels = bidirectional (MaskGIT).
- `KVCache`: per-layer keys / values / levels, written a chunk at a time at `offset`
  (one token for raster decoding, a whole scale for VAR).

Every parameter carries `logical_axes` metadata, one name per dimension ("embed" the
model width, "mlp" the hidden width, "heads" attention heads x head dim, "vocab" the
codebook, None for small axes); `vqlab.parallel` maps them onto the mesh by rules.

Attention logits and softmax run in float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
NORMS = ("rms", "layer")
MLPS = ("swiglu", "gelu")
QK_NORMS = ("none", "rms", "l2")


def _convs_saveable(prim, *_, **__) -> bool:
  return prim is jax.lax.conv_general_dilated_p


# Activation rematerialisation per block (jax.checkpoint): "block" keeps the matmul and
# convolution outputs (not attention's batched logits) and recomputes the rest (norms,
# activations, softmax); "full" keeps only each block's input and recomputes the whole
# block in the backward pass.
REMAT_POLICIES = {"none": None,
                  "block": jax.checkpoint_policies.save_from_both_policies(
                      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                      _convs_saveable),
                  "full": jax.checkpoint_policies.nothing_saveable}
UNSEEN = jnp.iinfo(jnp.int32).max  # the level of an empty cache slot: no query sees it


@dataclasses.dataclass(frozen=True)
class TransformerShape:
  width: int = 512
  depth: int = 8
  heads: int = 8
  mlp_ratio: float = 4.0
  norm: str = "rms"
  mlp: str = "swiglu"
  qk_norm: str = "none"
  adaln: bool = False       # condition every block on a vector (class embedding)
  qkv_bias: bool = False    # q and v biases, no k bias (VAR / BEiT: it cancels in softmax)
  dropout: float = 0.0
  remat: str = "none"       # training: "block" / "full" recompute each block in backward

  def check(self) -> None:
    for name, value, allowed in (("norm", self.norm, NORMS), ("mlp", self.mlp, MLPS),
                                 ("qk_norm", self.qk_norm, QK_NORMS),
                                 ("remat", self.remat, tuple(REMAT_POLICIES))):
      if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    if self.width % self.heads or (self.width // self.heads) % 2:
      raise ValueError(f"width: expected a multiple of heads={self.heads} with an even head "
                       f"dim, got {self.width}")


# ----------------------------------------------------------------------------- positions


def rope_1d(positions: Array, head_dim: int, base: float = 10000.0) -> Array:
  """Rotation angles (..., L, head_dim / 2) for integer positions."""
  freqs = base ** (-jnp.arange(0, head_dim // 2, dtype=jnp.float32) / (head_dim // 2))
  return positions.astype(jnp.float32)[..., None] * freqs


def rope_2d(rows: Array, cols: Array, head_dim: int, base: float = 10000.0) -> Array:
  """2D RoPE: the first half of each head's pairs rotates with the row, the second with
  the column (as LlamaGen / EVA). rows, cols: (..., L)."""
  return jnp.concatenate([rope_1d(rows, head_dim // 2, base), rope_1d(cols, head_dim // 2, base)],
                         axis=-1)


def rope_3d(frames: Array, rows: Array, cols: Array, head_dim: int,
            base: float = 10000.0) -> Array:
  """3D RoPE over (time, row, column) video tokens: of each head's pairs, a third (rounded
  down) rotates with the row, as many with the column, the rest with the frame."""
  pairs = head_dim // 2
  space = pairs // 3
  return jnp.concatenate([rope_1d(frames, 2 * (pairs - 2 * space), base),
                          rope_1d(rows, 2 * space, base), rope_1d(cols, 2 * space, base)],
                         axis=-1)


def apply_rope(x: Array, angles: Array) -> Array:
  """Rotate pairs (x[2i], x[2i+1]) of x (B, L, H, Dh) by angles (B or 1, L, Dh/2)."""
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  out = jnp.stack([xf[..., 0] * cos - xf[..., 1] * sin, xf[..., 0] * sin + xf[..., 1] * cos], -1)
  return out.reshape(x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------- cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Keys and values (layers, B, L_max, H, Dh) and each slot's level (B, L_max)."""
  keys: Array
  values: Array
  levels: Array

  @classmethod
  def empty(cls, shape: TransformerShape, batch: int, length: int, dtype=jnp.float32):
    kv = (shape.depth, batch, length, shape.heads, shape.width // shape.heads)
    return cls(jnp.zeros(kv, dtype), jnp.zeros(kv, dtype),
               jnp.full((batch, length), UNSEEN, jnp.int32))


def attention_mask(q_levels: Array, k_levels: Array) -> Array:
  """(B, 1, Lq, Lk): a query sees keys whose level is <= its own."""
  return (k_levels[:, None, None, :] <= q_levels[:, None, :, None])


# ----------------------------------------------------------------------------- layers


def linear(cin: int, cout: int, axes: tuple, rngs: nnx.Rngs, use_bias: bool = True):
  """nnx.Linear whose kernel is named `axes` and bias `axes[-1:]`."""
  return nnx.Linear(cin, cout, use_bias=use_bias, rngs=rngs,
                    kernel_metadata={"logical_axes": axes},
                    bias_metadata={"logical_axes": axes[-1:]})


def embedding(count: int, width: int, axes: tuple, rngs: nnx.Rngs):
  return nnx.Embed(count, width, rngs=rngs, embedding_metadata={"logical_axes": axes})


def param(value: Array, axes: tuple) -> nnx.Param:
  return nnx.Param(value, logical_axes=axes)


def _norm(shape: TransformerShape, rngs: nnx.Rngs, affine: bool = True):
  axes = {"logical_axes": ("embed",)}
  if shape.norm == "rms":
    return nnx.RMSNorm(shape.width, epsilon=1e-6, use_scale=affine, rngs=rngs,
                       scale_metadata=axes)
  return nnx.LayerNorm(shape.width, epsilon=1e-6, use_scale=affine, use_bias=affine, rngs=rngs,
                       scale_metadata=axes, bias_metadata=axes)


class Attention(nnx.Module):

  def __init__(self, shape: TransformerShape, rngs: nnx.Rngs):
    self.heads, self.head_dim = shape.heads, shape.width // shape.heads
    self.qkv = linear(shape.width, 3 * shape.width, ("embed", "heads"), rngs, use_bias=False)
    self.qkv_bias = shape.qkv_bias
    if shape.qkv_bias:
      self.q_bias = param(jnp.zeros((shape.width,)), ("heads",))
      self.v_bias = param(jnp.zeros((shape.width,)), ("heads",))
    self.proj = linear(shape.width, shape.width, ("heads", "embed"), rngs)
    self.qk_norm = shape.qk_norm
    if shape.qk_norm == "rms":
      self.q_norm = nnx.RMSNorm(self.head_dim, epsilon=1e-6, rngs=rngs,
                                scale_metadata={"logical_axes": (None,)})
      self.k_norm = nnx.RMSNorm(self.head_dim, epsilon=1e-6, rngs=rngs,
                                scale_metadata={"logical_axes": (None,)})
    elif shape.qk_norm == "l2":  # VAR: log of a per-head logit scale, init log(4)
      self.log_scale = param(jnp.full((shape.heads,), jnp.log(4.0)), (None,))

  def __call__(self, x: Array, levels: Array, angles: Array | None = None,
               cache: tuple[Array, Array, Array] | None = None, offset: Array | int = 0):
    """x (B, L, D), levels (B, L). With `cache` = (keys, values, levels) of this layer,
    the chunk is written at `offset` and attends to everything cached; returns
    (out, updated cache or None)."""
    b, l, _ = x.shape
    qkv = self.qkv(x)
    if self.qkv_bias:
      zero = jnp.zeros_like(self.q_bias[...])
      qkv = qkv + jnp.concatenate([self.q_bias[...], zero, self.v_bias[...]]).astype(qkv.dtype)
    q, k, v = jnp.split(qkv.reshape(b, l, 3 * self.heads, self.head_dim), 3, axis=2)
    if self.qk_norm == "rms":
      q, k = self.q_norm(q), self.k_norm(k)
    elif self.qk_norm == "l2":
      unit = lambda t: t * jax.lax.rsqrt(jnp.sum(jnp.square(t.astype(jnp.float32)), -1,
                                                 keepdims=True) + 1e-12).astype(t.dtype)
      scale = jnp.exp(jnp.minimum(self.log_scale[...], jnp.log(100.0)))
      q, k = unit(q) * scale[:, None].astype(q.dtype), unit(k)
    if angles is not None:
      q, k = apply_rope(q, angles), apply_rope(k, angles)
    k_levels = levels
    if cache is not None:
      ck, cv, cl = cache
      start = (0, offset, 0, 0)
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
      k_levels = jax.lax.dynamic_update_slice(cl, levels.astype(jnp.int32), (0, offset))
      cache = (k, v, k_levels)
    logit_scale = 1.0 if self.qk_norm == "l2" else self.head_dim ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    logits = jnp.where(attention_mask(levels, k_levels), logits * logit_scale, -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, l, -1)
    return self.proj(out), cache


class MLP(nnx.Module):

  def __init__(self, shape: TransformerShape, rngs: nnx.Rngs):
    hidden = int(shape.width * shape.mlp_ratio)
    self.kind = shape.mlp
    if shape.mlp == "swiglu":
      hidden = 2 * hidden // 3  # LLaMA: the same parameter count as a GELU MLP
      self.gate = linear(shape.width, hidden, ("embed", "mlp"), rngs, use_bias=False)
    self.fc1 = linear(shape.width, hidden, ("embed", "mlp"), rngs, use_bias=shape.mlp == "gelu")
    self.fc2 = linear(hidden, shape.width, ("mlp", "embed"), rngs, use_bias=shape.mlp == "gelu")

  def __call__(self, x: Array) -> Array:
    if self.kind == "swiglu":
      return self.fc2(nnx.silu(self.gate(x)) * self.fc1(x))
    return self.fc2(nnx.gelu(self.fc1(x), approximate=True))


class Block(nnx.Module):
  """x + gate1 * attn(mod(norm(x))); x + gate2 * mlp(mod(norm(x))). Without AdaLN the
  norms are affine and the gates are 1."""

  def __init__(self, shape: TransformerShape, rngs: nnx.Rngs):
    self.adaln = shape.adaln
    self.norm1, self.norm2 = _norm(shape, rngs, not shape.adaln), _norm(shape, rngs, not shape.adaln)
    self.attn = Attention(shape, rngs)
    self.mlp = MLP(shape, rngs)
    self.dropout = nnx.Dropout(shape.dropout, rngs=rngs)
    if shape.adaln:  # VAR's ada_lin: SiLU -> Linear(D, 6D)
      self.ada = linear(shape.width, 6 * shape.width, ("embed", None), rngs)

  def __call__(self, x, levels, cond=None, angles=None, cache=None, offset=0):
    if self.adaln:
      if cond is None:
        raise ValueError("cond: expected a (B, D) condition for an AdaLN block, got None")
      g1, g2, s1, s2, b1, b2 = jnp.split(self.ada(nnx.silu(cond))[:, None], 6, axis=-1)
      h, cache = self.attn(self.norm1(x) * (1 + s1) + b1, levels, angles, cache, offset)
      x = x + self.dropout(h) * g1
      return x + self.dropout(self.mlp(self.norm2(x) * (1 + s2) + b2)) * g2, cache
    h, cache = self.attn(self.norm1(x), levels, angles, cache, offset)
    x = x + self.dropout(h)
    return x + self.dropout(self.mlp(self.norm2(x))), cache


def checkpointed(module: nnx.Module, remat: str, call, *args, keep_state: bool = False):
  """`call(module, *args)` under `jax.checkpoint` with `REMAT_POLICIES[remat]`. With
  `keep_state` the module's state updates (dropout RNG streams) are carried out of the
  checkpoint; without, the call must change none (then it also runs under plain JAX
  transforms, which may not mutate a module from an outer trace)."""
  graphdef, state = nnx.split(module)

  @functools.partial(jax.checkpoint, policy=REMAT_POLICIES[remat])
  def run(state, *args):
    m = nnx.merge(graphdef, state)
    return call(m, *args), nnx.state(m)

  out, state = run(state, *args)
  if keep_state:
    nnx.update(module, state)
  return out


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat: expected one of {tuple(REMAT_POLICIES)}, got {remat!r}")


def run_blocks(blocks, remat: str, h, *args, keep_state: bool = False):
  """h = block(h, *args) for each block in turn, each under `checkpointed` unless remat
  is "none" (the conv tokenizers' residual and attention blocks)."""
  for block in blocks:
    h = (block(h, *args) if remat == "none" else
         checkpointed(block, remat, lambda b, *a: b(*a), h, *args, keep_state=keep_state))
  return h


class Transformer(nnx.Module):
  """Blocks + final norm (AdaLN-modulated when `adaln`). Embeddings and heads belong to
  the models."""

  def __init__(self, shape: TransformerShape, rngs: nnx.Rngs):
    shape.check()
    self.shape = shape
    self.blocks = nnx.List([Block(shape, rngs) for _ in range(shape.depth)])
    self.norm = _norm(shape, rngs, not shape.adaln)
    if shape.adaln:  # VAR's AdaLNBeforeHead: SiLU -> Linear(D, 2D) -> scale, shift
      self.head_ada = linear(shape.width, 2 * shape.width, ("embed", None), rngs)

  def __call__(self, x: Array, levels: Array, *, cond: Array | None = None,
               angles: Array | None = None, cache: KVCache | None = None,
               offset: Array | int = 0) -> tuple[Array, KVCache | None]:
    new_k, new_v = [], []
    remat = self.shape.remat != "none" and cache is None  # decoding keeps nothing for backward
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (cache.keys[i], cache.values[i], cache.levels)
      if remat:
        x = checkpointed(block, self.shape.remat, lambda b, *a: b(*a)[0], x, levels, cond,
                         angles, keep_state=block.dropout.rate > 0)
        continue
      x, layer_cache = block(x, levels, cond, angles, layer_cache, offset)
      if cache is not None:
        new_k.append(layer_cache[0])
        new_v.append(layer_cache[1])
        levels_after = layer_cache[2]
    if cache is not None:
      cache = KVCache(jnp.stack(new_k), jnp.stack(new_v), levels_after)
    h = self.norm(x)
    if self.shape.adaln:
      scale, shift = jnp.split(self.head_ada(nnx.silu(cond))[:, None], 2, axis=-1)
      h = h * (1 + scale) + shift
    return h, cache
