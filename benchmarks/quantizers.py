"""Quantizer speed and memory.

  python benchmarks/quantizers.py            # vqlab alone
  pip install -e ".[bench]"; python benchmarks/quantizers.py   # + vector-quantize-pytorch

1. Forward+backward time of each quantizer at N = 65,536 vectors, D = 32, K = 8,192
   (the loss is sum(quantized * w) + aux loss; gradients w.r.t. the input and the
   parameters), and, when `vector_quantize_pytorch` is installed, of its counterpart
   on the same CPU, with the ratio.
2. Peak memory of the exact nearest-code search at K = 2^18, D = 16, N = 65,536 (XLA's
   compiled temp allocation, against the (N, K) float32 matrix a naive search needs),
   and its time.
3. Exact nearest-code search, N = 65,536 rows, K in 2^13, 2^16, 2^18 codes, D in 8, 16,
   32: vqlab's XLA kernel, the fused Pallas kernel (GPUs), FAISS's IndexFlatL2 (when
   faiss-cpu is installed; CPU), each as seconds and as FLOP/s (2 N K D) against a
   float32 matmul measured in the same run; on a GPU also how many indices the fused
   kernel and XLA's disagree on (near-ties: two matmul kernels round differently).
Prints markdown tables; the README quotes them.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from timing import matmul_flops_per_second, median_time
from vqlab.quantizers import BSQ, FSQ, LFQ, ResidualVQ, VectorQuantizer, nearest_code
from vqlab.quantizers import search_pallas

N, D, K = 65536, 32, 8192
FSQ_LEVELS = [8, 8, 8, 4, 4]  # 8,192 codes
BITS = 13                     # 8,192 codes


def time_vqlab(model: nnx.Module, z: jax.Array, repeats: int) -> float:
  z = z[..., :model.dim]
  w = jax.random.normal(jax.random.key(1), z.shape)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def fwd_bwd(params, rest, z):
    def loss(params, z, rest):
      model = nnx.merge(graphdef, params, rest, copy=True)
      out = model(z)
      # Return the updated statistics so their computation is timed, not pruned.
      return jnp.sum(out.quantized * w) + out.loss, nnx.state(model, nnx.Not(nnx.Param))
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, z, rest)

  def run():
    jax.block_until_ready(fwd_bwd(params, rest, z))
  return median_time(run, repeats)


def vqlab_cases(rngs):
  """Training mode on both sides: statistics (EMA, usage) are updated in every step."""
  return {
      "VQ + straight-through": VectorQuantizer(D, K, rngs=rngs),
      "VQ + rotation trick": VectorQuantizer(D, K, estimator="rotation", rngs=rngs),
      "VQ + EMA (cosine)": VectorQuantizer(D, K, codebook="ema", metric="cosine", rngs=rngs),
      "FSQ": FSQ(FSQ_LEVELS, dim=D, rngs=rngs),
      "FSQ on its 5 code axes (no projections)": FSQ(FSQ_LEVELS),
      "LFQ": LFQ(D, bits=BITS, rngs=rngs),
      "BSQ": BSQ(D, bits=BITS, rngs=rngs),
      "Residual VQ (4 levels)": ResidualVQ(D, K, 4, rngs=rngs),
  }


def torch_cases():
  try:
    import torch
    import vector_quantize_pytorch as vqp
  except ImportError:
    return None, {}
  torch.set_num_threads(os.cpu_count())
  device = "cuda" if torch.cuda.is_available() else "cpu"  # the same kind as JAX's
  cases = {
      "VQ + straight-through": vqp.VectorQuantize(dim=D, codebook_size=K, decay=0.0,
                                                  learnable_codebook=True, ema_update=False),
      "VQ + rotation trick": vqp.VectorQuantize(dim=D, codebook_size=K, decay=0.0,
                                                learnable_codebook=True, ema_update=False,
                                                rotation_trick=True),
      "VQ + EMA (cosine)": vqp.VectorQuantize(dim=D, codebook_size=K, use_cosine_sim=True),
      "FSQ": vqp.FSQ(levels=FSQ_LEVELS, dim=D),
      "FSQ on its 5 code axes (no projections)": vqp.FSQ(levels=FSQ_LEVELS),
      "LFQ": vqp.LFQ(dim=D, codebook_size=2**BITS),
      "Residual VQ (4 levels)": vqp.ResidualVQ(dim=D, codebook_size=K, num_quantizers=4),
  }
  return torch, {name: m.to(device) for name, m in cases.items()}


def time_torch(torch, module, z: np.ndarray, repeats: int) -> float:
  device = next(module.buffers(), torch.zeros(())).device
  z = z[..., :module.dim] if hasattr(module, "dim") and isinstance(module.dim, int) else z
  x = torch.from_numpy(z.copy()).to(device).requires_grad_(True)
  w = torch.randn(z.shape, device=device)

  def run():
    out = module(x)
    quantized, aux = out[0], out[-1]
    loss = (quantized * w).sum()
    if torch.is_tensor(aux) and aux.requires_grad:
      loss = loss + aux.sum()
    loss.backward()
    x.grad = None
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
      torch.cuda.synchronize()
  return median_time(run, repeats)


def search_memory(repeats: int) -> dict:
  n, k, d = 65536, 2**18, 16
  z = jax.random.normal(jax.random.key(2), (n, d))
  c = jax.random.normal(jax.random.key(3), (k, d))
  compiled = jax.jit(nearest_code, static_argnames=("metric", "block_size")).lower(
      z, c).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  seconds = median_time(lambda: jax.block_until_ready(compiled(z, c)), repeats)
  return {"temp_bytes": temp, "naive_bytes": n * k * 4, "seconds": seconds}


def search_table(n: int, repeats: int) -> None:
  """Section 3: one row per (K, D)."""
  try:
    import faiss
  except ImportError:
    faiss = None
  gpu = search_pallas.available()
  matmul = matmul_flops_per_second(repeats)
  print(f"\n# Exact nearest-code search, N={n:,}; float32 matmul here: "
        f"{matmul / 1e9:.0f} GFLOP/s\n")
  cols = ["K", "D", "vqlab XLA s"] + (["vqlab fused (Pallas) s", "fused vs XLA",
                                       "indices differing"] if gpu else [])
  cols += ["FAISS s", "vqlab / FAISS time"] if faiss else []
  cols += ["vqlab GFLOP/s", "% of matmul"]
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  xla = jax.jit(nearest_code, static_argnames=("metric", "block_size", "kernel"))
  for log_k in (13, 16, 18):
    for d in (8, 16, 32):
      k = 2**log_k
      z = jax.random.normal(jax.random.key(4), (n, d))
      c = jax.random.normal(jax.random.key(5), (k, d))
      t_xla = median_time(lambda: jax.block_until_ready(xla(z, c, kernel="xla")), repeats)
      best = t_xla
      cells = [f"2^{log_k}", str(d), f"{t_xla:.3g}"]
      if gpu:
        t_fused = median_time(lambda: jax.block_until_ready(xla(z, c, kernel="pallas")),
                              repeats)
        best = min(best, t_fused)
        differ = int(jnp.sum(xla(z, c, kernel="pallas")[0] != xla(z, c, kernel="xla")[0]))
        cells += [f"{t_fused:.3g}", f"{t_xla / t_fused:.2f}x faster", str(differ)]
      if faiss:
        index = faiss.IndexFlatL2(d)
        index.add(np.asarray(c))
        zn = np.asarray(z)
        t_faiss = median_time(lambda: index.search(zn, 1), repeats)
        cells += [f"{t_faiss:.3g}", f"{best / t_faiss:.2f}"]
      flops = 2 * n * k * d / best
      cells += [f"{flops / 1e9:.0f}", f"{100 * flops / matmul:.0f}%"]
      print("| " + " | ".join(cells) + " |", flush=True)


def tune_fused(n: int, repeats: int) -> None:
  """Tile shapes and warps of the fused kernel at K = 2^18, D = 16 (GPUs)."""
  from vqlab.quantizers.search_pallas import nearest_code_fused
  z = jax.random.normal(jax.random.key(4), (n, 16))
  c = jax.random.normal(jax.random.key(5), (2**18, 16))
  print(f"\n# Fused kernel tiles, N={n:,}, K=2^18, D=16\n\n| bn | bk | warps | stages | s |")
  print("|---:|---:|---:|---:|---:|")
  for bn in (32, 64, 128):
    for bk in (64, 128, 256):
      for warps in (4, 8):
        for stages in (2, 3):
          try:
            t = median_time(lambda: jax.block_until_ready(nearest_code_fused(
                z, c, bn=bn, bk=bk, num_warps=warps, num_stages=stages)), repeats)
            print(f"| {bn} | {bk} | {warps} | {stages} | {t:.4g} |", flush=True)
          except Exception as e:  # a tile that does not fit: say so, try the next
            print(f"| {bn} | {bk} | {warps} | {stages} | {type(e).__name__} |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-search", action="store_true")
  parser.add_argument("--only-search", action="store_true", help="section 3 alone")
  parser.add_argument("--search-rows", type=int, default=65536)
  parser.add_argument("--tune-fused", action="store_true", help="the fused kernel's tiles")
  args = parser.parse_args()

  if args.tune_fused:
    tune_fused(args.search_rows, args.repeats)
    return
  if args.only_search:
    search_table(args.search_rows, args.repeats)
    return
  z = np.random.default_rng(0).normal(size=(N // 1024, 1024, D)).astype(np.float32)
  print(f"# Quantizer forward+backward, N={N} vectors, D={D}, K={K}; "
        f"{jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores\n")
  torch, ref = torch_cases()
  print("| quantizer | vqlab ms | vector-quantize-pytorch ms | speed-up |")
  print("|---|---:|---:|---:|")
  for name, model in vqlab_cases(nnx.Rngs(0)).items():
    ours = time_vqlab(model, jnp.asarray(z), args.repeats) * 1e3
    theirs = time_torch(torch, ref[name], z, args.repeats) * 1e3 if name in ref else None
    ms = lambda t: f"{t:.0f}" if t >= 100 else f"{t:.3g}"
    cells = f"{ms(theirs)} | {theirs / ours:.2f}x" if theirs else "- | -"
    print(f"| {name} | {ms(ours)} | {cells} |", flush=True)

  if not args.skip_search:
    mem = search_memory(args.repeats)
    print("\n# Exact nearest-code search, N=65,536, K=2^18, D=16 (default block: 2^20 "
          "distances)\n")
    print("| | bytes | time s |")
    print("|---|---:|---:|")
    print(f"| blocked search, XLA temp allocation | {mem['temp_bytes'] / 2**20:.0f} MiB | "
          f"{mem['seconds']:.3g} |")
    print(f"| naive (N, K) float32 distance matrix | {mem['naive_bytes'] / 2**30:.0f} GiB | - |")
    search_table(args.search_rows, args.repeats)


if __name__ == "__main__":
  main()
