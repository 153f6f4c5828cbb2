"""Vector quantization: nearest code in a codebook, with the variants the field uses.

VQ-VAE (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937): codebook loss
|sg(z) - q|^2 plus beta * commitment |z - sg(q)|^2, as in VQGAN (taming-transformers).
Variants, each a small function or object below composed by `VectorQuantizer`: the
codebook kind is an object of `CODEBOOKS` (how codes are stored, read, updated and reset),
the estimator an entry of `estimators.ESTIMATORS`; adding either is one class or function
plus one registry line.
- metric "cosine" + `code_dim`: factorized, l2-normalised low-dimensional codes
  (ViT-VQGAN, Yu et al. 2021, https://arxiv.org/abs/2110.04627; LlamaGen).
- codebook "ema": EMA cluster statistics with Laplace smoothing instead of a codebook
  loss (VQ-VAE appendix; SoundStream / EnCodec).
- k-means init on the first training batch; dead-code restart from batch vectors
  (Dhariwal et al. 2020 Jukebox; EnCodec).
- codebook "projected": frozen codebook times a learned linear map. With the default
  random frozen codebook this is SimVQ (Zhu et al. 2024, https://arxiv.org/abs/2411.02038);
  with `frozen_codebook=` features (e.g. clustered CLIP features) it is VQGAN-LC
  (Zhu et al. 2024, https://arxiv.org/abs/2406.11837).
- estimator "ste" / "rotation" / "ibq" / "gumbel" (see estimators.py).
Conventions follow vector-quantize-pytorch unless noted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.quantizers import estimators
from vqlab.quantizers.core import (MAX_TRACKED_CODES, QuantizerOutput, QuantizerState, as_int, check_last_dim,
                                   check_mask, check_weight, ema, empty_output, l2_normalize,
                                   lookup_indices, mark_nonfinite, masked_mean,
                                   nan_where_invalid, sg, split_nonfinite, track_usage,
                                   usage_buffer)
from vqlab.quantizers.search import DEFAULT_BLOCK_SIZE, check_metric, nearest_code

Array = jax.Array

class FrozenCodebook(nnx.Variable):
  """A codebook that no optimizer touches (SimVQ / VQGAN-LC)."""


# --- pure functions ----------------------------------------------------------------

def vq_loss(z: Array, q: Array, beta: float, codebook_learns_by_loss: bool,
            mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """Codebook loss |sg(z) - q|^2 (when the codebook learns by gradient) + beta |z - sg(q)|^2."""
  commitment = masked_mean(jnp.square(z - sg(q)), mask)
  codebook = masked_mean(jnp.square(sg(z) - q), mask) if codebook_learns_by_loss else 0.0
  return codebook + beta * commitment, {"commitment": commitment,
                                        "codebook_loss": jnp.asarray(codebook, jnp.float32)}


def cluster_sums(z_nd: Array, indices: Array, k: int, mask: Array | None = None
                 ) -> tuple[Array, Array]:
  """Per-code counts (K,) and vector sums (K, D) of the rows assigned to each code."""
  w = jnp.ones(z_nd.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
  counts = jax.ops.segment_sum(w, indices, num_segments=k)
  sums = jax.ops.segment_sum(z_nd.astype(jnp.float32) * w[:, None], indices, num_segments=k)
  return counts, sums


def ema_codebook_update(cluster_size: Array, embed_sum: Array, z_nd: Array, indices: Array,
                        decay: float, eps: float = 1e-5, mask: Array | None = None
                        ) -> tuple[Array, Array, Array]:
  """EMA of cluster sizes and sums; codebook = sums / Laplace-smoothed sizes.

  Returns (cluster_size, embed_sum, codebook). Smoothing: (n_k + eps) / (n + K eps) * n.
  """
  counts, sums = cluster_sums(z_nd, indices, cluster_size.shape[0], mask)
  cluster_size = ema(cluster_size, counts, decay)
  embed_sum = ema(embed_sum, sums, decay)
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (n + cluster_size.shape[0] * eps) * n
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def kmeans_plus_plus(z: Array, k: int, key: Array, rounds: int = 64,
                     block_size: int = DEFAULT_BLOCK_SIZE) -> Array:
  """k-means++ seeding (Arthur & Vassilvitskii 2007), `rounds` rounds of ceil(k / rounds)
  centres each: every round draws rows without replacement with probability
  proportional to their squared distance to the nearest centre so far (Gumbel top-k),
  like k-means|| (Bahmani et al. 2012). With rounds >= k it is exact k-means++.
  Plain random rows often seed two centres in one cluster, which Lloyd's iterations
  never undo; sequential k-means++ at K = 8,192 costs 8,192 passes over the batch.
  """
  n = z.shape[0]
  rounds = min(rounds, k)
  per_round = -(-k // rounds)
  if per_round > n:  # fewer rows than one round needs: codes must repeat rows anyway
    return z[jax.random.randint(key, (k,), 0, n)]
  first = jax.random.randint(key, (per_round,), 0, n)  # round 1: uniform rows

  def add_centres(min_d, round_key):
    scores = jnp.log(jnp.maximum(min_d, 1e-30)) + jax.random.gumbel(round_key, (n,))
    picks = jax.lax.top_k(scores, per_round)[1]
    _, d = nearest_code(z, z[picks], "l2", block_size)
    return jnp.minimum(min_d, d), picks

  _, d0 = nearest_code(z, z[first], "l2", block_size)
  _, picks = jax.lax.scan(add_centres, d0, jax.random.split(jax.random.fold_in(key, 1),
                                                            rounds - 1))
  chosen = jnp.concatenate([first, picks.reshape(-1)])[:k]
  return z[chosen]


def kmeans(z_nd: Array, k: int, key: Array, iters: int = 10, metric: str = "l2",
           block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[Array, Array]:
  """Lloyd's k-means from k-means++ seeds; empty clusters keep their centre.

  Runs on the global batch under jit, so a sharded batch gives the one-device result.
  Returns (centres (K, D) float32, cluster counts (K,)).
  """
  z = z_nd.astype(jnp.float32)
  if metric == "cosine":
    z = l2_normalize(z)
  init = kmeans_plus_plus(z, k, key, block_size=block_size)

  def step(centres, _):
    idx, _ = nearest_code(z, centres, metric, block_size)
    counts, sums = cluster_sums(z, idx, k)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)
    if metric == "cosine":
      new = l2_normalize(new)
    return new, counts

  centres, counts = jax.lax.scan(step, init, None, length=iters)
  return centres, counts[-1]


def restart_dead_codes(codebook: Array, usage: Array, z_nd: Array, threshold: float,
                       key: Array) -> tuple[Array, Array]:
  """Replace codes whose usage is below `threshold` with random rows of the batch.

  Returns (codebook, dead mask). Rows are drawn uniformly from the global batch.
  """
  dead = usage < threshold
  picks = jax.random.randint(key, (codebook.shape[0],), 0, z_nd.shape[0])
  sampled = z_nd[picks].astype(codebook.dtype)
  return jnp.where(dead[:, None], sampled, codebook), dead


# --- codebook kinds ------------------------------------------------------------------

class Codebook:
  """How a `VectorQuantizer`'s codes are stored, read and learned. The variables live on
  the quantizer module itself (`vq.codebook`, ...), so a checkpoint's layout is the
  module's; this object only says what to do with them."""
  learns_by_loss = True  # the codebook term |sg(z) - q|^2 of the loss trains it
  stored = True  # codes are stored rows: k-means init and dead-code restarts may write them

  def create(self, vq: "VectorQuantizer", key: Array, frozen_codebook: Array | None) -> None:
    raise NotImplementedError

  def codes(self, vq: "VectorQuantizer") -> Array:
    """The raw codes (K, code_dim)."""
    return vq.codebook[...]

  def update(self, vq: "VectorQuantizer", h: Array, indices: Array, mask: Array | None
             ) -> None:
    """Statistics after a training step's assignment (EMA); nothing for most kinds."""

  def reset(self, vq: "VectorQuantizer", rows: Array, codes: Array, counts: Array) -> None:
    """Overwrite the codes of `rows` (K,) bool with `codes` (K, D), as if each had been
    assigned `counts` (K,) vectors (k-means init, dead-code restarts)."""
    vq.codebook[...] = jnp.where(rows[:, None], codes.astype(vq.codebook.dtype),
                                 vq.codebook[...])


class LearnedCodebook(Codebook):
  """Codes as parameters trained by the codebook loss; taming-transformers' init
  uniform(-1/K, 1/K)."""

  def create(self, vq, key, frozen_codebook):
    k = vq.codebook_size
    vq.codebook = nnx.Param(jax.random.uniform(key, (k, vq.code_dim), minval=-1.0 / k,
                                               maxval=1.0 / k))


class EMACodebook(Codebook):
  """EMA cluster sizes and sums with Laplace smoothing (VQ-VAE appendix; SoundStream /
  EnCodec): codes = sums / smoothed sizes, no codebook loss."""
  learns_by_loss = False

  def create(self, vq, key, frozen_codebook):
    # Unit cluster sizes make the initial codebook embed_sum / 1 = the random codes.
    init = jax.random.normal(key, (vq.codebook_size, vq.code_dim))
    vq.codebook = QuantizerState(init)
    vq.cluster_size = QuantizerState(jnp.ones((vq.codebook_size,)))
    vq.embed_sum = QuantizerState(init)

  def update(self, vq, h, indices, mask):
    size, sums, codebook = ema_codebook_update(vq.cluster_size[...], vq.embed_sum[...], h,
                                               indices, vq.ema_decay, vq.ema_eps, mask)
    vq.cluster_size[...], vq.embed_sum[...] = size, sums
    vq.codebook[...] = codebook

  def reset(self, vq, rows, codes, counts):
    super().reset(vq, rows, codes, counts)
    vq.cluster_size[...] = jnp.where(rows, counts, vq.cluster_size[...])
    vq.embed_sum[...] = jnp.where(rows[:, None], vq.codebook[...] * counts[:, None],
                                  vq.embed_sum[...])


class ProjectedCodebook(Codebook):
  """A frozen basis times a learned linear map: SimVQ with the default random basis,
  VQGAN-LC with `frozen_codebook=` features. Nothing stored to reset."""
  stored = False

  def create(self, vq, key, frozen_codebook):
    k, d = vq.codebook_size, vq.code_dim
    if frozen_codebook is None:
      frozen_codebook = jax.random.normal(key, (k, d)) * d**-0.5
    frozen_codebook = jnp.asarray(frozen_codebook, jnp.float32)
    if frozen_codebook.ndim != 2 or frozen_codebook.shape[0] != k:
      raise ValueError(f"frozen_codebook: expected shape ({k}, F), got "
                       f"{tuple(frozen_codebook.shape)}")
    vq.frozen = FrozenCodebook(frozen_codebook)
    vq.projector = nnx.Linear(frozen_codebook.shape[1], d, use_bias=False, rngs=vq.rngs)

  def codes(self, vq):
    return vq.projector(vq.frozen[...])

  def reset(self, vq, rows, codes, counts):
    raise AssertionError("a projected codebook stores no codes")  # refused in __init__


# name (config field `codebook`) -> the kind
CODEBOOKS: dict[str, Codebook] = {
    "learned": LearnedCodebook(), "ema": EMACodebook(), "projected": ProjectedCodebook(),
}


# --- module --------------------------------------------------------------------------

class VectorQuantizer(nnx.Module):
  """Nearest-code VQ over the last axis of `z (..., dim)`.

  Args:
    dim: input channels.
    codebook_size: K.
    code_dim: if set, codes live in this (low) dimension behind learned in/out
      projections (ViT-VQGAN factorized codes).
    metric: "l2" or "cosine" (l2-normalised inputs and codes).
    estimator: "ste", "rotation", "ibq" or "gumbel".
    beta: commitment weight.
    codebook: "learned" (by the codebook loss), "ema", or "projected" (SimVQ/VQGAN-LC).
    frozen_codebook: (K, F) features for codebook="projected" (VQGAN-LC); default a
      random normal codebook of width code_dim (SimVQ).
    ema_decay, ema_eps: EMA codebook decay and Laplace smoothing.
    kmeans_init: initialise the codebook by k-means on the first training batch.
    dead_code_threshold: restart codes whose EMA count per step falls below this (0: off).
    usage_decay: decay of the per-code usage EMA used by metrics and restarts.
    gumbel_temperature, gumbel_kl_weight: Gumbel estimator temperature and the weight
      of its KL to the uniform prior (taming's GumbelQuantize).
    block_size: most distances held at once by the nearest-code search.
  Set `deterministic = True` (or call `.eval()`) to freeze statistics and noise.
  """

  def __init__(self, dim: int, codebook_size: int, *, code_dim: int | None = None,
               metric: str = "l2", estimator: str = "ste", beta: float = 0.25,
               codebook: str = "learned", frozen_codebook: Array | None = None,
               ema_decay: float = 0.99, ema_eps: float = 1e-5, kmeans_init: bool = False,
               kmeans_iters: int = 10, dead_code_threshold: float = 0.0,
               usage_decay: float = 0.99, gumbel_temperature: float = 1.0,
               gumbel_kl_weight: float = 0.0, block_size: int = DEFAULT_BLOCK_SIZE,
               rngs: nnx.Rngs):
    check_metric(metric)
    estimators.check_estimator(estimator)
    if codebook not in CODEBOOKS:
      raise ValueError(f"codebook: expected one of {tuple(CODEBOOKS)}, got {codebook!r}")
    dim, codebook_size = as_int("dim", dim), as_int("codebook_size", codebook_size)
    code_dim = None if code_dim is None else as_int("code_dim", code_dim)
    kmeans_iters = as_int("kmeans_iters", kmeans_iters)
    beta = check_weight("beta", beta)
    if dead_code_threshold > 0 and codebook_size > MAX_TRACKED_CODES:
      raise ValueError(f"dead_code_threshold: restarts need per-code usage, kept for up to "
                       f"{MAX_TRACKED_CODES} codes, got codebook_size={codebook_size}")
    if not CODEBOOKS[codebook].stored and (kmeans_init or dead_code_threshold > 0):
      raise ValueError(f"codebook: {codebook!r} codes are not stored rows (a fixed basis "
                       "times a learned map); kmeans_init and dead_code_threshold need a "
                       "directly stored codebook")
    if frozen_codebook is not None and codebook != "projected":
      raise ValueError(f"frozen_codebook: only used with codebook='projected', got "
                       f"codebook={codebook!r}")
    if not 0.0 < ema_decay < 1.0 or not 0.0 < usage_decay < 1.0:
      raise ValueError(f"ema_decay, usage_decay: expected in (0, 1), got {ema_decay}, "
                       f"{usage_decay}")
    if gumbel_temperature <= 0:
      raise ValueError(f"gumbel_temperature: expected > 0, got {gumbel_temperature}")

    self.dim, self.codebook_size = dim, codebook_size
    self.code_dim = code_dim or dim
    self.metric, self.estimator, self.beta = metric, estimator, beta
    self.codebook_ops = CODEBOOKS[codebook]
    self.ema_decay, self.ema_eps = ema_decay, ema_eps
    self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
    self.dead_code_threshold = dead_code_threshold
    self.usage_decay = usage_decay
    self.usage_threshold = dead_code_threshold if dead_code_threshold > 0 else 1e-3
    self.gumbel_temperature, self.gumbel_kl_weight = gumbel_temperature, gumbel_kl_weight
    self.block_size = block_size
    self.deterministic = False
    self.rngs = rngs

    project = code_dim is not None and code_dim != dim
    self.project_in = nnx.data(nnx.Linear(dim, code_dim, rngs=rngs) if project else None)
    self.project_out = nnx.data(nnx.Linear(code_dim, dim, rngs=rngs) if project else None)

    self.codebook_ops.create(self, rngs.params(), frozen_codebook)
    self.usage = usage_buffer(codebook_size)
    self.initialized = QuantizerState(jnp.asarray(not kmeans_init))

  # codes --------------------------------------------------------------------------
  def codes(self) -> Array:
    """The effective codebook (K, code_dim) in float32, normalised for cosine."""
    c = self.codebook_ops.codes(self).astype(jnp.float32)
    return l2_normalize(c) if self.metric == "cosine" else c

  def decode(self, indices: Array) -> Array:
    """Indices (...) -> quantized vectors (..., dim) without the input; out of range:
    an error outside jit, NaN vectors under jit (vqlab.quantizers.core)."""
    safe, valid = lookup_indices(indices, self.codebook_size)
    q = jnp.take(self.codes(), safe, axis=0)
    q = self.project_out(q) if self.project_out is not None else q
    return nan_where_invalid(q, valid)

  # forward ------------------------------------------------------------------------
  def __call__(self, z: Array, mask: Array | None = None) -> QuantizerOutput:
    """Quantize z (..., dim). `mask` (...) marks rows that count for losses/statistics."""
    check_last_dim(z, self.dim)
    check_mask(mask, z)
    lead = z.shape[:-1]
    if z.size == 0:
      return empty_output(z, lead)
    h = z.reshape(-1, self.dim)
    if self.project_in is not None:
      h = self.project_in(h)
    h, flat_mask, bad = split_nonfinite(h.astype(jnp.float32),
                                        None if mask is None else mask.reshape(-1))
    if self.metric == "cosine":
      h = l2_normalize(h)
    training = not self.deterministic

    if training and self.kmeans_init:
      self._maybe_kmeans_init(h)
    codebook = self.codes()

    ctx = estimators.EstimatorContext(training, self.rngs.quantizer, self.block_size,
                                      self.gumbel_temperature, self.gumbel_kl_weight)
    indices, q, estimator_loss, estimator_metrics = estimators.ESTIMATORS[self.estimator](
        h, codebook, ctx)
    loss, metrics = vq_loss(h, jnp.take(codebook, indices, axis=0), self.beta,
                            self.codebook_ops.learns_by_loss, flat_mask)
    loss = loss + estimator_loss
    metrics.update(estimator_metrics)

    metrics.update(track_usage(self, indices, flat_mask))
    if training:
      self._update_codebook(h, indices, flat_mask)

    if self.project_out is not None:
      q = self.project_out(q)
    out = QuantizerOutput(quantized=q.reshape(*lead, self.dim).astype(z.dtype),
                          indices=indices.reshape(lead), loss=loss.astype(jnp.float32),
                          metrics=metrics)
    return mark_nonfinite(out, bad.reshape(lead))

  # statistics -----------------------------------------------------------------------
  def _maybe_kmeans_init(self, h: Array) -> None:
    key = self.rngs.quantizer()

    def run_kmeans(_):
      return kmeans(h, self.codebook_size, key, self.kmeans_iters, self.metric, self.block_size)

    def keep(_):  # k-means is skipped, not just discarded, once it has run
      return (self.codebook[...].astype(jnp.float32),
              jnp.zeros((self.codebook_size,), jnp.float32))

    done = self.initialized[...]
    centres, counts = jax.lax.cond(done, keep, run_kmeans, None)
    rows = jnp.broadcast_to(jnp.logical_not(done), (self.codebook_size,))
    self.codebook_ops.reset(self, rows, centres, counts)
    self.initialized[...] = jnp.asarray(True)

  def _update_codebook(self, h: Array, indices: Array, mask: Array | None) -> None:
    self.codebook_ops.update(self, h, indices, mask)
    if self.dead_code_threshold > 0:
      codebook, dead = restart_dead_codes(self.codebook[...], self.usage[...], h,
                                          self.dead_code_threshold, self.rngs.quantizer())
      # A restarted code starts at the threshold: it must be used to stay alive.
      self.codebook_ops.reset(self, dead, codebook,
                      jnp.full((self.codebook_size,), self.dead_code_threshold))
      self.usage[...] = jnp.where(dead, self.dead_code_threshold, self.usage[...])
