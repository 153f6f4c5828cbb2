"""TiTok: a 1D tokenizer (Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction
and Generation", https://arxiv.org/abs/2406.07550).

The encoder is a ViT over [class token, patches, K learnable latent tokens]; only the K
latent tokens' outputs are kept, projected to `token_dim` and quantized by any vqlab
quantizer (TiTok's default: VQ, 4,096 l2-normalised codes of 12 dims). The decoder is a ViT
over [class token, grid^2 mask tokens, the quantized latents] whose mask-token outputs
become the image, either
- `decoder="pixels"`: a linear layer to each patch's pixels (the single-stage recipe of
  TA-TiTok, https://arxiv.org/abs/2501.07730, with the tokenizer trainer's losses), or
- `decoder="proxy"`: logits over a teacher 2D tokenizer's codes at its latent grid (TiTok's
  two-stage recipe): stage 1 trains them by cross-entropy against the teacher's codes
  ("proxy codes"); stage 2 decodes softmax(logits) @ the teacher's codebook with the
  teacher's decoder and fine-tunes both decoders on pixels, encoder and quantizer frozen.

Ordered tokens (nested dropout / tail-token drop: FlexTok, https://arxiv.org/abs/2502.13967;
One-D-Piece, https://arxiv.org/abs/2501.10064): with `tail_drop` = p, during training a
fraction p of the examples keep only their first k latents, k uniform over 1..K, the rest
hidden from the decoder's attention. The decoder reads any prefix: `decode(indices[:, :k])`
attends to k latents, exactly what a masked tail gives (a test checks the two agree).

Deviations from the reference (bytedance/1d-tokenizer): patches embedded by a linear layer
(the same map as its stride-p convolution); the pixel head is a linear layer per patch
without the extra 3x3 convolution (as vqlab's ViT-VQGAN decoder, so the adaptive GAN weight
reads the same kind of last layer).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vqlab.models.tokenizer_base import TokenizerBase
from vqlab.nn.transformer import REMAT_POLICIES
from vqlab.nn.vit import EncoderBlock, image_patches, run_blocks, unpatchify
from vqlab.quantizers.core import QuantizerOutput

Array = jax.Array
DECODERS = ("pixels", "proxy")


@dataclasses.dataclass(frozen=True)
class TiTokShape:
  image_size: int = 256
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: int = 4
  num_tokens: int = 64  # K latent tokens
  token_dim: int = 12  # each latent's width at the quantizer
  channels: int = 3
  decoder: str = "pixels"  # or "proxy": logits over a teacher's codes
  tail_drop: float = 0.0  # fraction of training examples that keep a random prefix
  remat: str = "none"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def check(self) -> None:
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size: expected a multiple of patch_size={self.patch_size}, got "
                       f"{self.image_size}")
    if self.width % self.heads:
      raise ValueError(f"width: expected a multiple of heads={self.heads}, got {self.width}")
    if self.num_tokens < 1:
      raise ValueError(f"num_tokens: expected >= 1, got {self.num_tokens}")
    if self.decoder not in DECODERS:
      raise ValueError(f"decoder: expected one of {DECODERS}, got {self.decoder!r}")
    if not 0.0 <= self.tail_drop <= 1.0:
      raise ValueError(f"tail_drop: expected in [0, 1], got {self.tail_drop}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat: expected one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")


# The paper's sizes (encoder and decoder alike; patch 16 at 256 px) and a CPU-sized one.
SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
TITOK_L_32 = TiTokShape(width=1024, depth=24, heads=16, num_tokens=32)
TITOK_B_64 = TiTokShape(width=768, depth=12, heads=12, num_tokens=64)
TITOK_S_128 = TiTokShape(width=512, depth=8, heads=8, num_tokens=128)


def _param(rngs: nnx.Rngs, *shape: int) -> nnx.Param:
  return nnx.Param(shape[-1] ** -0.5 * jax.random.normal(rngs.params(), shape))


def _blocks(s: TiTokShape, rngs: nnx.Rngs) -> nnx.List:
  return nnx.List([EncoderBlock(s.width, s.heads, s.mlp_ratio, rngs=rngs)
                   for _ in range(s.depth)])


class TiTokEncoder(nnx.Module):
  def __init__(self, shape: TiTokShape, rngs: nnx.Rngs):
    shape.check()
    s = self.shape = shape
    self.embed = nnx.Linear(s.patch_size**2 * s.channels, s.width, rngs=rngs)
    self.cls = _param(rngs, 1, s.width)
    self.pos = _param(rngs, s.grid**2 + 1, s.width)
    self.latents = _param(rngs, s.num_tokens, s.width)
    self.latent_pos = _param(rngs, s.num_tokens, s.width)
    self.norm_pre = nnx.LayerNorm(s.width, rngs=rngs)
    self.blocks = _blocks(s, rngs)
    self.norm_post = nnx.LayerNorm(s.width, rngs=rngs)
    self.to_token = nnx.Linear(s.width, s.token_dim, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> latents (B, K, token_dim)."""
    s = self.shape
    b = x.shape[0]
    patches = self.embed(image_patches(x, s.image_size, s.channels, s.patch_size))
    h = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, s.width)).astype(patches.dtype),
                         patches], axis=1) + self.pos[...]
    latents = jnp.broadcast_to(self.latents[...] + self.latent_pos[...], (b, s.num_tokens, s.width))
    h = jnp.concatenate([h, latents.astype(h.dtype)], axis=1)
    h = run_blocks(self.blocks, self.norm_pre(h), s.remat)
    return self.to_token(self.norm_post(h[:, -s.num_tokens:]))


class TiTokDecoder(nnx.Module):
  """[class, grid^2 mask tokens, k <= K latents] -> the mask tokens' features; `head`:
  "pixels" (a linear layer per patch) or "codes" (TiTok's MLP to `num_codes` logits)."""

  def __init__(self, shape: TiTokShape, rngs: nnx.Rngs, num_codes: int = 0):
    shape.check()
    s = self.shape = shape
    self.embed = nnx.Linear(s.token_dim, s.width, rngs=rngs)
    self.cls = _param(rngs, 1, s.width)
    self.pos = _param(rngs, s.grid**2 + 1, s.width)
    self.mask_token = _param(rngs, 1, s.width)
    self.latent_pos = _param(rngs, s.num_tokens, s.width)
    self.norm_pre = nnx.LayerNorm(s.width, rngs=rngs)
    self.blocks = _blocks(s, rngs)
    self.norm_post = nnx.LayerNorm(s.width, rngs=rngs)
    if num_codes:
      self.to_hidden = nnx.Linear(s.width, 2 * s.width, rngs=rngs)
      self.to_codes = nnx.Linear(2 * s.width, num_codes, rngs=rngs)
    else:
      self.to_pixels = nnx.Linear(s.width, s.patch_size**2 * s.channels, rngs=rngs)
    self.num_codes = num_codes
    self.rngs = rngs if s.tail_drop else None
    self.deterministic = False

  def kept(self, batch: int, k: int) -> Array | None:
    """Latents kept per example (B,) when tail drop applies to this call, else None."""
    if not self.shape.tail_drop or self.deterministic:
      return None
    key = self.rngs.tail_drop()
    keep = jax.random.randint(key, (batch,), 1, k + 1)
    drop = jax.random.bernoulli(jax.random.fold_in(key, 1), self.shape.tail_drop, (batch,))
    return jnp.where(drop, keep, k)

  def features(self, z: Array, keep: Array | None = None) -> Array:
    """Quantized latents (B, k, token_dim), k <= K (a prefix) -> normalised mask-token
    features (B, grid^2, width). `keep` (B,): attend to only the first keep[i] latents
    (default: a random prefix under tail drop in training, else all k)."""
    s = self.shape
    if z.ndim != 3 or z.shape[-1] != s.token_dim or not 1 <= z.shape[1] <= s.num_tokens:
      raise ValueError(f"z: expected (B, k, {s.token_dim}) with 1 <= k <= {s.num_tokens}, got "
                       f"{tuple(z.shape)}")
    b, k = z.shape[:2]
    keep = self.kept(b, k) if keep is None else keep
    latents = self.embed(z) + self.latent_pos[:k]
    queries = jnp.concatenate([self.cls[...], jnp.broadcast_to(self.mask_token[...],
                                                                (s.grid**2, s.width))])
    queries = jnp.broadcast_to(queries + self.pos[...], (b, s.grid**2 + 1, s.width))
    h = self.norm_pre(jnp.concatenate([queries.astype(latents.dtype), latents], axis=1))
    mask = None
    if keep is not None:  # keys: every query token, and the latents before keep[i]
      index = jnp.arange(h.shape[1]) - (s.grid**2 + 1)
      mask = (index[None] < keep[:, None])[:, None, None, :]
    h = run_blocks(self.blocks, h, s.remat, mask)
    return self.norm_post(h[:, 1:s.grid**2 + 1])

  def logits(self, z: Array, keep: Array | None = None) -> Array:
    """"codes" head: (B, k, token_dim) -> (B, grid^2, num_codes) logits."""
    return self.to_codes(jnp.tanh(self.to_hidden(self.features(z, keep))))

  def last_layer(self, h: Array, kernel: Array) -> Array:
    s = self.shape
    pixels = h @ kernel.astype(h.dtype) + self.to_pixels.bias[...]
    return unpatchify(pixels, s.patch_size, s.image_size, s.image_size)

  @property
  def last_kernel(self) -> Array:
    return self.to_pixels.kernel[...]

  def __call__(self, z: Array, keep: Array | None = None) -> Array:
    return self.last_layer(self.features(z, keep), self.last_kernel)


class ProxyDecoder(nnx.Module):
  """TiTok's decoder to a teacher's codes, then the teacher's pixel decoder on the soft codes
  softmax(logits) @ codebook (the paper's stage 2; stage 1 reads `logits`)."""

  def __init__(self, titok: TiTokDecoder, teacher_codes: nnx.Module,
               teacher_decoder: nnx.Module, teacher_grid: int):
    self.titok, self.teacher_codes, self.teacher_decoder = titok, teacher_codes, teacher_decoder
    self.teacher_grid = teacher_grid

  def logits(self, z: Array, keep: Array | None = None) -> Array:
    return self.titok.logits(z, keep)

  def soft_codes(self, logits: Array) -> Array:
    n = self.titok.num_codes
    codebook = jax.lax.stop_gradient(self.teacher_codes.decode(jnp.arange(n)))  # (V, D)
    z = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) @ codebook.astype(jnp.float32)
    return z.reshape(z.shape[0], self.teacher_grid, self.teacher_grid, -1).astype(logits.dtype)

  def features(self, z: Array, keep: Array | None = None) -> Array:
    return self.teacher_decoder.features(self.soft_codes(self.logits(z, keep)))

  def last_layer(self, h: Array, kernel: Array) -> Array:
    return self.teacher_decoder.last_layer(h, kernel)

  @property
  def last_kernel(self) -> Array:
    return self.teacher_decoder.last_kernel

  def __call__(self, z: Array, keep: Array | None = None) -> Array:
    return self.last_layer(self.features(z, keep), self.last_kernel)


class TiTok(TokenizerBase):
  """Encoder -> quantizer over K latents -> decoder; the image tokenizer's methods, with
  indices (B, K) (or a stack (B, K, D) for residual / grouped quantizers).

  `teacher`: a trained 2D `ImageTokenizer` whose codes are the proxy targets (needed for
  `decoder="proxy"`); `stage` 1 trains encoder, quantizer and TiTok decoder against its
  codes, stage 2 only the decoders (TiTok's and the teacher's) on pixels."""

  def __init__(self, shape: TiTokShape, quantizer: nnx.Module, *, rngs: nnx.Rngs,
               teacher: nnx.Module | None = None, stage: int = 1):
    shape.check()
    self.shape, self.quantizer = shape, quantizer
    self.image_size, self.channels = shape.image_size, shape.channels
    self.token_shape = (shape.num_tokens,)
    self.encoder = TiTokEncoder(shape, rngs)
    self.stage = stage if shape.decoder == "proxy" else 0
    if shape.decoder == "pixels":
      if teacher is not None:
        raise ValueError("teacher: only the 'proxy' decoder reads a teacher's codes")
      self.decoder = TiTokDecoder(shape, rngs)
      self.teacher_encoder = None
      return
    if teacher is None:
      raise ValueError("teacher: the 'proxy' decoder needs a trained 2D image tokenizer "
                       "(model.proxy.teacher, a vqlab tokenizer workdir)")
    if stage not in (1, 2):
      raise ValueError(f"stage: expected 1 (proxy codes) or 2 (decoder on pixels), got {stage}")
    if teacher.image_size != shape.image_size or teacher.channels != shape.channels:
      raise ValueError(f"teacher: expected {shape.image_size}-px images of {shape.channels} "
                       f"channels as the TiTok shape, got {teacher.image_size} px, "
                       f"{teacher.channels} channels")
    num_codes = int(teacher.quantizer.codebook_size)
    if len(teacher.token_shape) != 2 or teacher.token_shape[0] != shape.grid:
      raise ValueError(f"teacher: expected a 2D tokenizer with a {shape.grid}x{shape.grid} "
                       f"latent grid (image_size / patch_size), got tokens {teacher.token_shape}")
    teacher.encoder.eval()  # the targets: never an EMA codebook update or a random level
    teacher.quantizer.eval()
    self.teacher_encoder = teacher.encoder if stage == 1 else None
    self.decoder = ProxyDecoder(TiTokDecoder(shape, rngs, num_codes), teacher.quantizer,
                                teacher.decoder, shape.grid)
    if stage == 2:
      self.encoder.eval()
      self.quantizer.eval()

  @property
  def proxy(self) -> bool:
    return self.shape.decoder == "proxy"

  def trainable(self):
    """The nnx filter of the parameters this stage trains."""
    frozen = nnx.Any(nnx.PathContains("teacher_encoder"), nnx.PathContains("teacher_codes"))
    if self.stage == 2:
      return nnx.All(nnx.Param, nnx.PathContains("decoder"), nnx.Not(frozen))
    if self.stage == 1:
      return nnx.All(nnx.Param, nnx.Not(nnx.Any(frozen, nnx.PathContains("teacher_decoder"))))
    return nnx.Param

  def proxy_targets(self, x: Array) -> Array:
    """Stage 1: the teacher's codes of images x, (B, grid^2)."""
    if self.teacher_encoder is None:
      raise ValueError("proxy_targets: only a stage-1 'proxy' TiTok holds the teacher's encoder")
    q = self.decoder.teacher_codes(self.teacher_encoder(x))
    return jax.lax.stop_gradient(q.indices.reshape(x.shape[0], -1))

  def decode_prefix(self, indices: Array, keep: Array) -> Array:
    """Images from the first `keep` of all K tokens (an int or (B,) array, traced): what
    `decode(indices[:, :keep])` gives, as one compiled program for every prefix length."""
    k = indices.shape[1]
    if isinstance(keep, int) and not 1 <= keep <= k:
      raise ValueError(f"keep: expected 1 <= keep <= {k} (the tokens given), got {keep}")
    keep = jnp.broadcast_to(jnp.asarray(keep, jnp.int32), indices.shape[:1])
    return self.decoder(self.quantizer.decode(indices), keep).astype(jnp.float32)

  def features(self, x: Array) -> tuple[Array, QuantizerOutput]:
    q = self.encode(x)
    return self.decoder.features(q.quantized), q

  def __call__(self, x: Array) -> tuple[Array, QuantizerOutput]:
    q = self.encode(x)
    return self.decoder(q.quantized).astype(jnp.float32), q
