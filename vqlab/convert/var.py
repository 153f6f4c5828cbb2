"""FoundationVision/VAR's released checkpoints as vqlab models, to sample the published
VAR models (Tian et al. 2024, https://arxiv.org/abs/2404.02905).

- `load_vae(state_dict)`: `vae_ch160v4096z32.pth` -> an `ImageTokenizer` (the taming-
  shaped VQGAN with 3x3 quant / post-quant convs, channel_mult (1, 1, 2, 2, 4), attention
  at the last level, and `MultiScaleVQ` with VAR's partially shared phi convs).
- `load_var(state_dict)`: `var_d{16,20,24,30}.pth` -> a `NextScaleGenerator` (LayerNorm
  AdaLN blocks, GELU MLP, unit q / k with a per-head scale, q and v biases).
- `sample(tokenizer, generator, labels, key, cfg=...)` -> images, VAR's sampler with its
  guidance convention.

Sizes are read from the state dict's shapes (channels, latent width, codebook, depth,
width, heads, classes), the scale schedule is an argument (VAR: 1, 2, 3, 4, 5, 6, 8, 10,
13, 16). A key the model does not have, or a parameter of the model no key fills, is an
error naming it. `vqlab convert var` samples a grid from the released files:
  vqlab convert var --vae vae_ch160v4096z32.pth --var var_d16.pth \
      --classes 207,360,387,974 --out var_samples.png
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.convert.state_dict import read_state_dict
from vqlab.models import image_tokenizer, sampling, vqgan
from vqlab.models.generators import NextScaleGenerator
from vqlab.nn.transformer import TransformerShape
from vqlab.quantizers.multiscale import VAR_PATCH_NUMS

Array = jax.Array

VAE_CHANNEL_MULT = (1, 1, 2, 2, 4)  # VAR's ddconfig (latent-diffusion's vq-f16)
VAE_RES_BLOCKS = 2
# Buffers of the published modules that hold no learned value.
IGNORED = ("quantize.ema_vocab_hit_SV", "lvl_1L", "attn_bias_for_masking", ".zero_k_bias")


class _Keys:
  """The state dict as float32 numpy arrays; remembers which keys were read."""

  def __init__(self, state_dict: Mapping[str, object], what: str):
    self.arrays = {k: _to_numpy(v) for k, v in state_dict.items()}  # no copy if float32 numpy
    self.used: set[str] = set()
    self.what = what

  def __contains__(self, key: str) -> bool:
    return key in self.arrays

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.arrays:
      raise KeyError(f"{self.what}: the state dict has no {key!r}")
    self.used.add(key)
    return self.arrays[key]

  def check_all_used(self) -> None:
    left = sorted(k for k in self.arrays if k not in self.used
                  and not any(k.endswith(i) for i in IGNORED))
    if left:
      raise ValueError(f"{self.what}: keys with no vqlab parameter: {left[:8]}"
                       f"{' ...' if len(left) > 8 else ''}")


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().float().cpu().numpy()
  return np.asarray(value, np.float32)


def _put(param: nnx.Variable, value: np.ndarray, key: str) -> None:
  if tuple(param[...].shape) != tuple(value.shape):
    raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit the vqlab parameter "
                     f"{tuple(param[...].shape)}")
  param[...] = jnp.asarray(value, param[...].dtype)


def _conv(conv: nnx.Conv, keys: _Keys, key: str) -> None:
  _put(conv.kernel, keys[f"{key}.weight"].transpose(2, 3, 1, 0), f"{key}.weight")  # OIHW->HWIO
  _put(conv.bias, keys[f"{key}.bias"], f"{key}.bias")


def _linear(linear: nnx.Linear, keys: _Keys, key: str) -> None:
  _put(linear.kernel, keys[f"{key}.weight"].T, f"{key}.weight")
  if linear.bias is not None:
    _put(linear.bias, keys[f"{key}.bias"], f"{key}.bias")


def _norm(norm, keys: _Keys, key: str) -> None:
  _put(norm.scale, keys[f"{key}.weight"], f"{key}.weight")
  _put(norm.bias, keys[f"{key}.bias"], f"{key}.bias")


def _layer(layer: nnx.Module, keys: _Keys, key: str) -> None:
  """One layer of the VQGAN trunk from VAR's module of the same role."""
  if isinstance(layer, vqgan.ResnetBlock):
    for name in ("norm1", "norm2"):
      _norm(getattr(layer, name), keys, f"{key}.{name}")
    for name in ("conv1", "conv2"):
      _conv(getattr(layer, name), keys, f"{key}.{name}")
    if layer.shortcut is not None:
      _conv(layer.shortcut, keys, f"{key}.nin_shortcut")
  elif isinstance(layer, vqgan.AttnBlock):  # VAR fuses q, k, v into one (3C, C) conv
    _norm(layer.norm, keys, f"{key}.norm")
    w, b = keys[f"{key}.qkv.weight"], keys[f"{key}.qkv.bias"]
    c = w.shape[1]
    for i, conv in enumerate((layer.q, layer.k, layer.v)):
      _put(conv.kernel, w[i * c:(i + 1) * c].transpose(2, 3, 1, 0), f"{key}.qkv.weight")
      _put(conv.bias, b[i * c:(i + 1) * c], f"{key}.qkv.bias")
    _conv(layer.proj, keys, f"{key}.proj_out")
  else:  # Downsample / Upsample
    _conv(layer.conv, keys, f"{key}.conv")


def _trunk_keys(prefix: str, levels: int, blocks: int, down: bool) -> list[str]:
  """VAR's module names in the order vqgan.Encoder / Decoder keep their `layers`."""
  mid = [f"{prefix}.mid.block_1", f"{prefix}.mid.attn_1", f"{prefix}.mid.block_2"]
  names = [] if down else mid
  order = range(levels) if down else reversed(range(levels))
  group, resample = ("down", "downsample") if down else ("up", "upsample")
  for i in order:
    for j in range(blocks):
      names.append(f"{prefix}.{group}.{i}.block.{j}")
      if i == levels - 1:  # VAR's using_sa: attention at the lowest resolution
        names.append(f"{prefix}.{group}.{i}.attn.{j}")
    if (down and i != levels - 1) or (not down and i != 0):
      names.append(f"{prefix}.{group}.{i}.{resample}")
  return names + mid if down else names


def _count(keys: _Keys, pattern: str) -> int:
  n = 0
  while pattern.format(n) in keys:
    n += 1
  return n


def vae_config(state_dict: Mapping[str, object],
               patch_nums: Sequence[int] = VAR_PATCH_NUMS, quant_resi: float = 0.5):
  """(arch shape fields, msvq arguments) of the VQVAE this state dict is from."""
  keys = _Keys(state_dict, "VAR VQVAE")
  ch = keys.arrays["encoder.conv_in.weight"].shape[0]
  vocab, z = keys.arrays["quantize.embedding.weight"].shape
  num_phi = _count(keys, "quantize.quant_resi.qresi_ls.{}.weight")
  if not num_phi:
    if "quantize.quant_resi.qresi.weight" in keys:  # PhiShared: one conv for all scales
      num_phi = 1
    elif "quantize.quant_resi.0.weight" in keys:    # PhiNonShared: one conv per scale
      num_phi = _count(keys, "quantize.quant_resi.{}.weight")
    else:
      raise ValueError("VAR VQVAE: no quantize.quant_resi convs (quant_resi = 0 is not "
                       "supported)")
  if num_phi not in (1, 4) and num_phi != len(patch_nums):
    raise ValueError(f"VAR VQVAE: {num_phi} phi convs do not fit {len(patch_nums)} scales")
  latent = int(patch_nums[-1])
  down = 2 ** (len(VAE_CHANNEL_MULT) - 1)
  shape = dict(channels=ch, channel_mult=VAE_CHANNEL_MULT, num_res_blocks=VAE_RES_BLOCKS,
               attn_resolutions=(latent,), z_channels=z, embed_dim=z,
               resolution=latent * down, quant_conv_kernel=3)
  quantizer = dict(codebook_size=vocab, patch_nums=tuple(int(p) for p in patch_nums),
                   quant_resi=quant_resi, num_phi=num_phi if num_phi != len(patch_nums) else 0)
  return shape, quantizer


def load_vae(state_dict: Mapping[str, object], patch_nums: Sequence[int] = VAR_PATCH_NUMS,
             quant_resi: float = 0.5) -> image_tokenizer.ImageTokenizer:
  """VAR's VQVAE state dict -> an ImageTokenizer in eval mode (images in [-1, 1])."""
  keys = _Keys(state_dict, "VAR VQVAE")
  shape, quantizer_args = vae_config(keys.arrays, patch_nums, quant_resi)
  model = image_tokenizer.build("vqgan", shape, "msvq", quantizer_args, rngs=nnx.Rngs(0))
  levels = len(VAE_CHANNEL_MULT)
  for side, down in (("encoder", True), ("decoder", False)):
    module = getattr(model, side)
    names = _trunk_keys(side, levels, VAE_RES_BLOCKS + (0 if down else 1), down)
    if len(names) != len(module.layers):
      raise AssertionError(f"{side}: {len(module.layers)} layers, {len(names)} VAR names")
    _conv(module.conv_in, keys, f"{side}.conv_in")
    for layer, name in zip(module.layers, names):
      _layer(layer, keys, name)
    _norm(module.norm_out, keys, f"{side}.norm_out")
    _conv(module.conv_out, keys, f"{side}.conv_out")
  _conv(model.encoder.quant_conv, keys, "quant_conv")
  _conv(model.decoder.post_quant_conv, keys, "post_quant_conv")
  q = model.quantizer
  _put(q.codebook, keys["quantize.embedding.weight"], "quantize.embedding.weight")
  phi_keys = {1: ["quantize.quant_resi.qresi"],
              4: [f"quantize.quant_resi.qresi_ls.{i}" for i in range(4)]}.get(
                  len(q.phis), [f"quantize.quant_resi.{i}" for i in range(len(q.phis))])
  for conv, key in zip(q.phis, phi_keys):
    _conv(conv, keys, key)
  keys.check_all_used()
  model.eval()
  return model


def var_config(state_dict: Mapping[str, object], patch_nums: Sequence[int] = VAR_PATCH_NUMS):
  """(TransformerShape, generator arguments) of the VAR transformer in this state dict."""
  keys = _Keys(state_dict, "VAR transformer")
  if "shared_ada_lin.1.weight" in keys:
    raise ValueError("VAR transformer: shared_aln=True checkpoints are not supported")
  depth = _count(keys, "blocks.{}.attn.proj.weight")
  classes, width = keys.arrays["class_emb.weight"].shape
  vocab = keys.arrays["head.weight"].shape[0]
  latent_dim = keys.arrays["word_embed.weight"].shape[1]
  l2 = "blocks.0.attn.scale_mul_1H11" in keys
  heads = keys.arrays["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else depth  # VAR: heads = depth
  seq = sum(int(p) ** 2 for p in patch_nums)
  if keys.arrays["pos_1LC"].shape[1] != seq:
    raise ValueError(f"VAR transformer: pos_1LC has {keys.arrays['pos_1LC'].shape[1]} "
                     f"positions, patch_nums {list(patch_nums)} make {seq}")
  if not l2:
    raise ValueError("VAR transformer: only attn_l2_norm=True checkpoints (the released "
                     "ones) are supported")
  mlp_ratio = keys.arrays["blocks.0.ffn.fc1.weight"].shape[0] / width
  shape = TransformerShape(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                           norm="layer", mlp="gelu", qk_norm="l2", adaln=True, qkv_bias=True)
  return shape, dict(vocab_size=vocab, num_classes=classes - 1,
                     patch_nums=tuple(int(p) for p in patch_nums), latent_dim=latent_dim)


def load_var(state_dict: Mapping[str, object],
             patch_nums: Sequence[int] = VAR_PATCH_NUMS) -> NextScaleGenerator:
  """VAR's transformer state dict -> a NextScaleGenerator in eval mode."""
  keys = _Keys(state_dict, "VAR transformer")
  shape, args = var_config(keys.arrays, patch_nums)
  model = NextScaleGenerator(shape, rngs=nnx.Rngs(0), **args)
  _put(model.cls_embed.embedding, keys["class_emb.weight"], "class_emb.weight")
  _put(model.pos_start, keys["pos_start"][0], "pos_start")
  _put(model.pos_embed, keys["pos_1LC"][0], "pos_1LC")
  _put(model.lvl_embed.embedding, keys["lvl_embed.weight"], "lvl_embed.weight")
  _linear(model.word_embed, keys, "word_embed")
  for i, block in enumerate(model.transformer.blocks):
    key = f"blocks.{i}"
    _linear(block.attn.qkv, keys, f"{key}.attn.mat_qkv")
    _put(block.attn.q_bias, keys[f"{key}.attn.q_bias"], f"{key}.attn.q_bias")
    _put(block.attn.v_bias, keys[f"{key}.attn.v_bias"], f"{key}.attn.v_bias")
    _put(block.attn.log_scale, keys[f"{key}.attn.scale_mul_1H11"].reshape(-1),
         f"{key}.attn.scale_mul_1H11")
    _linear(block.attn.proj, keys, f"{key}.attn.proj")
    _linear(block.mlp.fc1, keys, f"{key}.ffn.fc1")
    _linear(block.mlp.fc2, keys, f"{key}.ffn.fc2")
    _linear(block.ada, keys, f"{key}.ada_lin.1")
  _linear(model.transformer.head_ada, keys, "head_nm.ada_lin.1")
  _linear(model.head, keys, "head")
  keys.check_all_used()
  model.eval()
  return model


def sample(tokenizer: image_tokenizer.ImageTokenizer, generator: NextScaleGenerator,
           labels: Array, key: Array, *, cfg: float = 4.0, top_k: int = 900,
           top_p: float = 0.95, temperature: float = 1.0) -> Array:
  """Images (B, H, W, 3) in [-1, 1] for class `labels`. `cfg` is VAR's: the guided
  logits at scale k are (1 + t) cond - t uncond with t = cfg * k / (K - 1), i.e.
  vqlab's `cfg_scale = 1 + cfg`. Defaults are VAR's demo settings."""
  indices = sampling.sample_next_scale(generator, tokenizer.quantizer, labels, key,
                                       cfg_scale=1.0 + cfg, temperature=temperature,
                                       top_k=top_k, top_p=top_p)
  return jnp.clip(tokenizer.decode(indices), -1.0, 1.0)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="vqlab convert var",
                                   description="Sample a grid from VAR's released weights.")
  parser.add_argument("--vae", required=True, help="vae_ch160v4096z32.pth (or .npz)")
  parser.add_argument("--var", required=True, help="var_d16.pth ... (or .npz)")
  parser.add_argument("--classes", default="207,360,387,974,88,979,417,279",
                      help="comma-separated ImageNet class ids, one sample each")
  parser.add_argument("--cfg", type=float, default=4.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="var_samples.png")
  args = parser.parse_args(argv)
  from vqlab.train.common import labeled_grid, to_pixels  # the CLI writes a grid
  tokenizer = load_vae(read_state_dict(args.vae, "--vae"))
  generator = load_var(read_state_dict(args.var, "--var"), tokenizer.quantizer.patch_nums)
  labels = jnp.asarray([int(c) for c in args.classes.split(",")], jnp.int32)
  images = sample(tokenizer, generator, labels, jax.random.key(args.seed), cfg=args.cfg)
  labeled_grid([(f"cfg {args.cfg:g}", to_pixels(images))]).save(args.out)
  print(f"wrote {args.out}")

