"""Generator speed: the KV cache, next-scale vs raster sampling, and train-step MFU.

  python benchmarks/generators.py [--width 256 --depth 4 --batch 8 --repeats 3]

1. Raster sampling of a 16x16 token grid with the KV cache (one token per step,
   attending to the cache) vs without (every step re-runs the whole prefix through the
   model, as a cache-less decoder must): time per batch and tokens/s.
2. The same-size image sampled by next-scale prediction (VAR scales 1..16, 680 tokens
   in 10 steps) vs raster (256 tokens in 256 steps), same transformer.
3. Train step (next-token loss, forward + backward + Adam): FLOPs from XLA's cost
   analysis, achieved FLOP/s, against a float32 matmul measured in the same run.
4. Vocabulary scaling (`--only vocab` runs this alone): the same raster transformer over
   2^10, 2^14, 2^18 and 2^31 codes (LFQ / BSQ-sized vocabularies) with the full softmax,
   Infinity's bitwise head and Open-MAGVIT2's factorized sub-tokens (6 bits, then the
   rest, through a 2-block depth transformer): parameters, train-step time and XLA's
   peak temporary memory, and sampling time. A case that cannot run says why in its row
   (its parameters alone would not fit, or XLA ran out of memory) instead of stopping.
Prints markdown tables; the README quotes them.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from timing import matmul_flops_per_second, median_time
from vqlab.models import sampling
from vqlab.models.generators import NextScaleGenerator, NextTokenGenerator
from vqlab.models.token_heads import CodeStack
from vqlab.nn.transformer import TransformerShape
from vqlab.quantizers import MultiScaleVQ

VOCAB, GRID, PATCH_NUMS = 4096, 16, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def sample_without_cache(model: NextTokenGenerator, labels, key):
  """Greedy-free sampling that recomputes the full sequence at every step."""
  b, n = labels.shape[0], model.seq_len
  graphdef, state = nnx.split(model)

  def body(i, carry):
    tokens, key = carry
    m = nnx.merge(graphdef, state)
    logits = m(tokens, labels)  # causal: slot i only sees tokens < i
    key, sub = jax.random.split(key)
    tok = sampling.sample_logits(sub, jax.lax.dynamic_index_in_dim(logits, i, 1, False))
    return jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], i, axis=1), key

  return jax.lax.fori_loop(0, n, body, (jnp.zeros((b, n), jnp.int32), key))[0]



def vocabulary_scaling(args) -> None:
  """Table 4: full softmax vs bitwise vs factorized heads at growing vocabularies."""
  grid = 8
  shape = TransformerShape(width=args.width, depth=args.depth, heads=max(1, args.width // 64))
  depth_shape = TransformerShape(width=args.width, depth=2, heads=shape.heads)
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
  memory_budget = 16 * 2**30  # the benchmark machine's share for one model's state
  print(f"**Vocabulary scaling: raster, {grid}x{grid} tokens, width {args.width}, depth "
        f"{args.depth}, batch {args.batch}**\n")
  print("| codes | head | parameters | train step s | step temp. memory MiB | sampling s "
        "per batch |\n|---|---|---:|---:|---:|---:|")
  for bits in (10, 14, 18, 31):
    for head in ("softmax", "bitwise", "factorized"):
      stack = {"softmax": CodeStack((2**bits,)), "bitwise": CodeStack((2,) * bits),
               "factorized": CodeStack((2**6, 2**(bits - 6)))}[head]
      cell = f"| 2^{bits} | {head} |"
      # parameters before building: the softmax's embedding + output layer are 2 V W
      big = max(stack.sizes) if head != "bitwise" else 0
      estimate = 2 * big * args.width * (1 if head == "softmax" else 2)
      if 4 * 4 * estimate > memory_budget:  # f32 params, grads, Adam's two moments
        print(f"{cell} ~{estimate / 1e6:,.0f}M | not run: parameters, gradients and Adam "
              f"state would need {16 * estimate / 2**30:,.0f} GiB | | |")
        continue
      try:
        print(cell + _scaling_row(shape, depth_shape, stack, head, grid, labels, args))
      except Exception as e:  # noqa: BLE001 (out of memory is the finding, not a crash)
        print(f"{cell} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | |")
  print()


def _scaling_row(shape, depth_shape, stack, head, grid, labels, args) -> str:
  kind = "depth" if head == "factorized" else head
  vocab = stack.sizes[0] if head == "softmax" else 2**31  # (only the softmax reads it)
  model = NextTokenGenerator(shape, vocab, 10, grid, head=kind, stack=stack,
                             depth_shape=depth_shape, rngs=nnx.Rngs(0))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  codes = jax.random.randint(jax.random.key(0), (args.batch, grid * grid, stack.depth), 0,
                             jnp.asarray(stack.sizes))
  tokens = stack.join(codes)

  def step(state, tokens, labels):
    model, opt = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: -m.log_prob(tokens, labels)[0].mean())(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), loss

  compiled = jax.jit(step).lower(state, tokens, labels).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20
  t_step = median_time(lambda: jax.block_until_ready(compiled(state, tokens, labels)),
                       args.repeats)
  sample = jax.jit(lambda l, k: sampling.sample_next_token(model, l, k))
  t_sample = median_time(lambda: sample(labels, jax.random.key(1)).block_until_ready(),
                         args.repeats)
  return f" {params / 1e6:.2f}M | {t_step:.3g} | {temp:,.0f} | {t_sample:.3g} |"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--only", choices=("vocab",), default=None)
  args = parser.parse_args()
  if args.only == "vocab":
    vocabulary_scaling(args)
    return
  device = jax.devices()[0]
  print(f"# {device.platform} x{jax.device_count()}, width {args.width}, depth "
        f"{args.depth}, batch {args.batch}, vocab {VOCAB}\n")
  heads = max(1, args.width // 64)
  shape = TransformerShape(width=args.width, depth=args.depth, heads=heads)
  raster = NextTokenGenerator(shape, VOCAB, 10, GRID, rngs=nnx.Rngs(0))
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
  key = jax.random.key(1)
  cached = jax.jit(lambda l, k: sampling.sample_next_token(raster, l, k))
  uncached = jax.jit(lambda l, k: sample_without_cache(raster, l, k))
  t_cache = median_time(lambda: cached(labels, key).block_until_ready(), args.repeats)
  t_nocache = median_time(lambda: uncached(labels, key).block_until_ready(), args.repeats)
  n = args.batch * GRID * GRID
  print(f"**Raster sampling, {GRID}x{GRID} tokens**\n")
  print("| decoder | s per batch | tokens/s | speed-up |\n|---|---:|---:|---:|")
  print(f"| without KV cache | {t_nocache:.3g} | {n / t_nocache:.0f} | 1.00x |")
  print(f"| with KV cache | {t_cache:.3g} | {n / t_cache:.0f} | {t_nocache / t_cache:.2f}x |\n")

  var_shape = TransformerShape(width=args.width, depth=args.depth, heads=heads, norm="layer",
                               mlp="gelu", qk_norm="l2", adaln=True)
  rngs = nnx.Rngs(2)
  quantizer = MultiScaleVQ(32, VOCAB, PATCH_NUMS, rngs=rngs)
  var = NextScaleGenerator(var_shape, VOCAB, 10, PATCH_NUMS, 32, rngs=rngs)
  nextscale = jax.jit(lambda l, k: sampling.sample_next_scale(var, quantizer, l, k))
  t_var = median_time(lambda: nextscale(labels, key).block_until_ready(), args.repeats)
  print(f"**One {GRID}x{GRID}-token image: next-scale vs raster, same transformer size**\n")
  print("| paradigm | tokens | steps | s per batch | images/s |\n|---|---:|---:|---:|---:|")
  print(f"| raster (KV cache) | {GRID * GRID} | {GRID * GRID} | {t_cache:.3g} | "
        f"{args.batch / t_cache:.2f} |")
  print(f"| next-scale (VAR, KV cache) | {var.seq_len} | {len(PATCH_NUMS)} | {t_var:.3g} | "
        f"{args.batch / t_var:.2f} |\n")

  optimizer = nnx.Optimizer(raster, optax.adamw(1e-4), wrt=nnx.Param)
  graphdef, state = nnx.split((raster, optimizer))
  tokens = jax.random.randint(key, (args.batch, GRID * GRID), 0, VOCAB)

  def step(state, tokens, labels):
    model, opt = nnx.merge(graphdef, state)
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(tokens, labels), tokens).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), loss

  compiled = jax.jit(step).lower(state, tokens, labels).compile()
  flops = float((compiled.cost_analysis() or {}).get("flops", float("nan")))
  t_step = median_time(lambda: jax.block_until_ready(compiled(state, tokens, labels)),
                       args.repeats)
  peak = matmul_flops_per_second(args.repeats)
  print("**Train step (next-token loss, fwd + bwd + AdamW)**\n")
  print("| step s | GFLOP per step (XLA) | achieved GFLOP/s | f32 matmul GFLOP/s (same run) "
        "| utilisation |\n|---:|---:|---:|---:|---:|")
  print(f"| {t_step:.3g} | {flops / 1e9:.1f} | {flops / t_step / 1e9:.1f} | {peak / 1e9:.1f} | "
        f"{flops / t_step / peak:.1%} |\n")
  vocabulary_scaling(args)


if __name__ == "__main__":
  main()
