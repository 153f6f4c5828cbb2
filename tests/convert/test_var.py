"""VAR checkpoint conversion: random state dicts with the published key names and shapes
(FoundationVision/VAR `models/vqvae.py`, `quant.py`, `basic_vae.py`, `var.py`,
`basic_var.py`), converted, and compared with the same networks run by PyTorch ops
straight from the unconverted state dicts (channels first, as the originals)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlab.convert import var as var_checkpoint
from vqlab.models import sampling

torch = pytest.importorskip("torch")
F = torch.nn.functional

CH, Z, VOCAB = 32, 8, 64
PATCH_NUMS = (1, 2, 3, 4)          # latent 4x4 -> 64x64 images
MULT = (1, 1, 2, 2, 4)
DEPTH, CLASSES = 2, 10             # VAR: width = 64 depth, heads = depth
WIDTH, HEADS = 64 * DEPTH, DEPTH


# ----------------------------------------------------------------------------- state dicts


def _resblock_shapes(prefix, cin, cout):
  s = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
       f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
       f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
       f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
  if cin != cout:
    s.update({f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1),
              f"{prefix}.nin_shortcut.bias": (cout,)})
  return s


def _attn_shapes(prefix, c):
  return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,),
          f"{prefix}.qkv.weight": (3 * c, c, 1, 1), f"{prefix}.qkv.bias": (3 * c,),
          f"{prefix}.proj_out.weight": (c, c, 1, 1), f"{prefix}.proj_out.bias": (c,)}


def _conv_shapes(prefix, cout, cin, k):
  return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def vae_shapes():
  s = _conv_shapes("encoder.conv_in", CH, 3, 3)
  cin = CH
  for i, m in enumerate(MULT):
    for j in range(2):
      s.update(_resblock_shapes(f"encoder.down.{i}.block.{j}", cin, CH * m))
      cin = CH * m
      if i == len(MULT) - 1:
        s.update(_attn_shapes(f"encoder.down.{i}.attn.{j}", cin))
    if i != len(MULT) - 1:
      s.update(_conv_shapes(f"encoder.down.{i}.downsample.conv", cin, cin, 3))
  for side in ("encoder", "decoder"):
    top = CH * MULT[-1]
    s.update(_resblock_shapes(f"{side}.mid.block_1", top, top))
    s.update(_attn_shapes(f"{side}.mid.attn_1", top))
    s.update(_resblock_shapes(f"{side}.mid.block_2", top, top))
  s.update({"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,)})
  s.update(_conv_shapes("encoder.conv_out", Z, cin, 3))
  s.update(_conv_shapes("decoder.conv_in", cin, Z, 3))
  for i in reversed(range(len(MULT))):
    for j in range(3):
      s.update(_resblock_shapes(f"decoder.up.{i}.block.{j}", cin, CH * MULT[i]))
      cin = CH * MULT[i]
      if i == len(MULT) - 1:
        s.update(_attn_shapes(f"decoder.up.{i}.attn.{j}", cin))
    if i != 0:
      s.update(_conv_shapes(f"decoder.up.{i}.upsample.conv", cin, cin, 3))
  s.update({"decoder.norm_out.weight": (cin,), "decoder.norm_out.bias": (cin,)})
  s.update(_conv_shapes("decoder.conv_out", 3, cin, 3))
  s.update(_conv_shapes("quant_conv", Z, Z, 3))
  s.update(_conv_shapes("post_quant_conv", Z, Z, 3))
  s["quantize.embedding.weight"] = (VOCAB, Z)
  for k in range(4):
    s.update(_conv_shapes(f"quantize.quant_resi.qresi_ls.{k}", Z, Z, 3))
  s["quantize.ema_vocab_hit_SV"] = (len(PATCH_NUMS), VOCAB)
  return s


def var_shapes():
  seq, c = sum(p * p for p in PATCH_NUMS), WIDTH
  s = {"class_emb.weight": (CLASSES + 1, c), "pos_start": (1, 1, c), "pos_1LC": (1, seq, c),
       "lvl_embed.weight": (len(PATCH_NUMS), c), "word_embed.weight": (c, Z),
       "word_embed.bias": (c,), "lvl_1L": (1, seq), "attn_bias_for_masking": (1, 1, seq, seq),
       "head_nm.ada_lin.1.weight": (2 * c, c), "head_nm.ada_lin.1.bias": (2 * c,),
       "head.weight": (VOCAB, c), "head.bias": (VOCAB,)}
  for i in range(DEPTH):
    b = f"blocks.{i}"
    s.update({f"{b}.attn.mat_qkv.weight": (3 * c, c), f"{b}.attn.q_bias": (c,),
              f"{b}.attn.v_bias": (c,), f"{b}.attn.zero_k_bias": (c,),
              f"{b}.attn.scale_mul_1H11": (1, HEADS, 1, 1),
              f"{b}.attn.proj.weight": (c, c), f"{b}.attn.proj.bias": (c,),
              f"{b}.ffn.fc1.weight": (4 * c, c), f"{b}.ffn.fc1.bias": (4 * c,),
              f"{b}.ffn.fc2.weight": (c, 4 * c), f"{b}.ffn.fc2.bias": (c,),
              f"{b}.ada_lin.1.weight": (6 * c, c), f"{b}.ada_lin.1.bias": (6 * c,)})
  return s


def random_state(shapes, seed):
  """Fan-in scaled weights, norm scales near 1, a spread-out codebook."""
  g = torch.Generator().manual_seed(seed)
  out = {}
  for k, shape in shapes.items():
    if k.endswith(("zero_k_bias", "ema_vocab_hit_SV", "lvl_1L", "attn_bias_for_masking")):
      out[k] = torch.zeros(shape)
    elif "norm" in k and k.endswith(".weight") and len(shape) == 1:
      out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
    elif k.endswith("scale_mul_1H11"):
      out[k] = math.log(4.0) + 0.3 * torch.randn(shape, generator=g)
    elif len(shape) == 1:
      out[k] = 0.1 * torch.randn(shape, generator=g)
    else:
      fan_in = math.prod(shape[1:]) if k.endswith("weight") and len(shape) > 1 else shape[-1]
      out[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
  if "quantize.embedding.weight" in out:
    out["quantize.embedding.weight"] = torch.randn((VOCAB, Z), generator=g)
  return out


# ----------------------------------------------------------------------------- torch reference


def t_conv(sd, key, x, stride=1, pad=None):
  w = sd[f"{key}.weight"]
  return F.conv2d(x, w, sd[f"{key}.bias"], stride=stride,
                  padding=w.shape[-1] // 2 if pad is None else pad)


def t_gn(sd, key, x):
  return F.group_norm(x, 32, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)


def t_res(sd, key, x):
  h = t_conv(sd, f"{key}.conv1", F.silu(t_gn(sd, f"{key}.norm1", x)))
  h = t_conv(sd, f"{key}.conv2", F.silu(t_gn(sd, f"{key}.norm2", h)))
  return (t_conv(sd, f"{key}.nin_shortcut", x) if f"{key}.nin_shortcut.weight" in sd else x) + h


def t_attn(sd, key, x):
  b, c, h, w = x.shape
  q, k, v = t_conv(sd, f"{key}.qkv", t_gn(sd, f"{key}.norm", x)).reshape(b, 3, c, h * w).unbind(1)
  a = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=2)
  return x + t_conv(sd, f"{key}.proj_out", torch.einsum("bij,bcj->bci", a, v).reshape(b, c, h, w))


def t_encoder(sd, x):
  h = t_conv(sd, "encoder.conv_in", x)
  for i in range(len(MULT)):
    for j in range(2):
      h = t_res(sd, f"encoder.down.{i}.block.{j}", h)
      if f"encoder.down.{i}.attn.{j}.qkv.weight" in sd:
        h = t_attn(sd, f"encoder.down.{i}.attn.{j}", h)
    if i != len(MULT) - 1:
      h = t_conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), 2, 0)
  h = t_res(sd, "encoder.mid.block_2", t_attn(sd, "encoder.mid.attn_1",
                                               t_res(sd, "encoder.mid.block_1", h)))
  h = t_conv(sd, "encoder.conv_out", F.silu(t_gn(sd, "encoder.norm_out", h)))
  return t_conv(sd, "quant_conv", h)


def t_decoder(sd, f_hat):
  h = t_conv(sd, "decoder.conv_in", t_conv(sd, "post_quant_conv", f_hat))
  h = t_res(sd, "decoder.mid.block_2", t_attn(sd, "decoder.mid.attn_1",
                                               t_res(sd, "decoder.mid.block_1", h)))
  for i in reversed(range(len(MULT))):
    for j in range(3):
      h = t_res(sd, f"decoder.up.{i}.block.{j}", h)
      if f"decoder.up.{i}.attn.{j}.qkv.weight" in sd:
        h = t_attn(sd, f"decoder.up.{i}.attn.{j}", h)
    if i != 0:
      h = t_conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2,
                                                                     mode="nearest"))
  return t_conv(sd, "decoder.conv_out", F.silu(t_gn(sd, "decoder.norm_out", h)))


def t_phi(sd, si, h):
  k = len(PATCH_NUMS)
  ticks = np.linspace(1 / 12, 1 - 1 / 12, 4)  # PhiPartiallyShared with 4 convs
  conv = f"quantize.quant_resi.qresi_ls.{int(np.argmin(np.abs(ticks - si / (k - 1))))}"
  return 0.5 * h + 0.5 * t_conv(sd, conv, h)


def t_upsampled(sd, si, emb_bchw):
  side = PATCH_NUMS[-1]
  if si != len(PATCH_NUMS) - 1:
    emb_bchw = F.interpolate(emb_bchw, size=(side, side), mode="bicubic")
  return t_phi(sd, si, emb_bchw)


def t_embed(sd, idx_bl, pn):
  return sd["quantize.embedding.weight"][idx_bl].transpose(1, 2).reshape(-1, Z, pn, pn)


def t_tokenize(sd, f):
  """VectorQuantizer2.f_to_idxBl_or_fhat: indices per scale, (B, pn^2) each."""
  rest, out = f.clone(), []
  emb = sd["quantize.embedding.weight"]
  for si, pn in enumerate(PATCH_NUMS):
    z = rest if si == len(PATCH_NUMS) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
    z = z.permute(0, 2, 3, 1).reshape(-1, Z)
    idx = torch.argmin((z * z).sum(1, keepdim=True) + (emb * emb).sum(1) - 2 * z @ emb.T, 1)
    idx = idx.reshape(f.shape[0], pn * pn)
    rest = rest - t_upsampled(sd, si, t_embed(sd, idx, pn))
    out.append(idx)
  return out


def t_fhat(sd, idx_list):
  return sum(t_upsampled(sd, si, t_embed(sd, idx, pn))
             for si, (idx, pn) in enumerate(zip(idx_list, PATCH_NUMS)))


def t_var_logits(sd, labels, x_wo_first):
  """VAR.forward (teacher forcing) without label dropout."""
  c, b = WIDTH, labels.shape[0]
  levels = torch.cat([torch.full((p * p,), i) for i, p in enumerate(PATCH_NUMS)])
  seq = levels.shape[0]
  cond = sd["class_emb.weight"][labels]
  x = torch.cat([cond[:, None] + sd["pos_start"],
                 F.linear(x_wo_first, sd["word_embed.weight"], sd["word_embed.bias"])], 1)
  x = x + sd["lvl_embed.weight"][levels][None] + sd["pos_1LC"]
  bias = torch.where(levels[:, None] >= levels[None, :], 0.0, -math.inf)
  ln = lambda t: F.layer_norm(t, (c,), eps=1e-6)
  for i in range(DEPTH):
    p = f"blocks.{i}"
    mods = F.linear(F.silu(cond), sd[f"{p}.ada_lin.1.weight"], sd[f"{p}.ada_lin.1.bias"])
    g1, g2, s1, s2, b1, b2 = mods.view(b, 1, 6, c).unbind(2)
    h = ln(x) * (s1 + 1) + b1
    qkv_bias = torch.cat([sd[f"{p}.attn.q_bias"], torch.zeros(c), sd[f"{p}.attn.v_bias"]])
    qkv = F.linear(h, sd[f"{p}.attn.mat_qkv.weight"], qkv_bias)
    q, k, v = qkv.view(b, seq, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
    scale = sd[f"{p}.attn.scale_mul_1H11"].clamp_max(math.log(100)).exp()
    q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1)
    a = torch.softmax(q @ k.transpose(-2, -1) + bias, -1) @ v
    a = F.linear(a.transpose(1, 2).reshape(b, seq, c), sd[f"{p}.attn.proj.weight"],
                 sd[f"{p}.attn.proj.bias"])
    x = x + a * g1
    h = ln(x) * (s2 + 1) + b2
    h = F.linear(F.gelu(F.linear(h, sd[f"{p}.ffn.fc1.weight"], sd[f"{p}.ffn.fc1.bias"]),
                        approximate="tanh"), sd[f"{p}.ffn.fc2.weight"], sd[f"{p}.ffn.fc2.bias"])
    x = x + h * g2
  scale, shift = F.linear(F.silu(cond), sd["head_nm.ada_lin.1.weight"],
                          sd["head_nm.ada_lin.1.bias"]).view(b, 1, 2, c).unbind(2)
  return F.linear(ln(x) * (scale + 1) + shift, sd["head.weight"], sd["head.bias"])


def t_teacher_input(sd, idx_list):
  """VectorQuantizer2.idxBl_to_var_input."""
  b, f_hat, out = idx_list[0].shape[0], 0.0, []
  for si in range(len(PATCH_NUMS) - 1):
    f_hat = f_hat + t_upsampled(sd, si, t_embed(sd, idx_list[si], PATCH_NUMS[si]))
    nxt = PATCH_NUMS[si + 1]
    out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(b, Z, -1).transpose(1, 2))
  return torch.cat(out, 1)


def t_greedy_sample(sd_vae, sd_var, labels, cfg):
  """VAR.autoregressive_infer_cfg with top_k = 1, run as growing teacher-forcing passes
  (the block-causal mask makes that equal to the cached loop)."""
  b, k = labels.shape[0], len(PATCH_NUMS)
  both = torch.cat([labels, torch.full_like(labels, CLASSES)])
  idx_list = []
  for si, pn in enumerate(PATCH_NUMS):
    so_far = idx_list + [torch.zeros((b, p * p), dtype=torch.long) for p in PATCH_NUMS[si:]]
    feats = t_teacher_input(sd_vae, so_far)
    logits = t_var_logits(sd_var, both, torch.cat([feats, feats]))
    start = sum(p * p for p in PATCH_NUMS[:si])
    logits = logits[:, start:start + pn * pn]
    t = cfg * si / (k - 1)
    idx_list.append(((1 + t) * logits[:b] - t * logits[b:]).argmax(-1))
  return idx_list, t_decoder(sd_vae, t_fhat(sd_vae, idx_list)).clamp(-1, 1)


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def converted():
  sd_vae, sd_var = random_state(vae_shapes(), 0), random_state(var_shapes(), 1)
  return (sd_vae, sd_var, var_checkpoint.load_vae(sd_vae, PATCH_NUMS),
          var_checkpoint.load_var(sd_var, PATCH_NUMS))


def _nhwc(x):
  return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def _nchw(x):
  return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def test_vae_encodes_and_decodes_like_the_reference(converted):
  sd, _, tokenizer, _ = converted
  x = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(2)) * 2 - 1
  with torch.no_grad():
    f = t_encoder(sd, x)
    ref_idx = t_tokenize(sd, f)
    ref_images = t_decoder(sd, t_fhat(sd, ref_idx))
  np.testing.assert_allclose(np.asarray(tokenizer.encoder(_nhwc(x))), _nhwc(f),
                             rtol=1e-3, atol=1e-3)
  ours = np.asarray(tokenizer.encode(_nhwc(x)).indices)
  np.testing.assert_array_equal(ours, torch.cat(ref_idx, 1).numpy())
  decoded = tokenizer.decode(jnp.asarray(torch.cat(ref_idx, 1).numpy()))
  np.testing.assert_allclose(np.asarray(decoded), _nhwc(ref_images), rtol=1e-3, atol=1e-3)
  assert float(ref_images.std()) > 0.05  # the comparison is not between two near-zero maps


def test_var_logits_match_the_reference(converted):
  sd_vae, sd_var, tokenizer, generator = converted
  g = torch.Generator().manual_seed(3)
  idx = [torch.randint(0, VOCAB, (3, p * p), generator=g) for p in PATCH_NUMS]
  labels = torch.tensor([0, 7, CLASSES])  # CLASSES = the null class
  with torch.no_grad():
    feats = t_teacher_input(sd_vae, idx)
    ref = t_var_logits(sd_var, labels, feats)
  ours_feats = tokenizer.quantizer.teacher_forcing_input(jnp.asarray(torch.cat(idx, 1).numpy()))
  np.testing.assert_allclose(np.asarray(ours_feats), feats.numpy(), rtol=1e-4, atol=1e-5)
  logits = generator(jnp.asarray(labels.numpy()), ours_feats)
  np.testing.assert_allclose(np.asarray(logits), ref.numpy(), rtol=1e-3, atol=1e-4)


def test_greedy_guided_sampling_matches_the_reference(converted):
  sd_vae, sd_var, tokenizer, generator = converted
  labels = torch.tensor([1, 4])
  with torch.no_grad():
    ref_idx, ref_images = t_greedy_sample(sd_vae, sd_var, labels, cfg=1.5)
  ours = sampling.sample_next_scale(generator, tokenizer.quantizer, jnp.asarray(labels.numpy()),
                                    jax.random.key(0), cfg_scale=2.5, top_k=1)
  np.testing.assert_array_equal(np.asarray(ours), torch.cat(ref_idx, 1).numpy())
  images = var_checkpoint.sample(tokenizer, generator, jnp.asarray(labels.numpy()),
                                 jax.random.key(0), cfg=1.5, top_k=1, top_p=1.0)
  np.testing.assert_allclose(np.asarray(images), _nhwc(ref_images), rtol=1e-3, atol=2e-3)


def test_bad_state_dicts_are_refused(converted):
  sd_vae, sd_var, _, _ = converted
  extra = dict(sd_var, **{"blocks.0.attn.rel_pos": torch.zeros(3)})
  with pytest.raises(ValueError, match="blocks.0.attn.rel_pos"):
    var_checkpoint.load_var(extra, PATCH_NUMS)
  missing = {k: v for k, v in sd_vae.items() if k != "decoder.up.2.upsample.conv.bias"}
  with pytest.raises(KeyError, match="decoder.up.2.upsample.conv.bias"):
    var_checkpoint.load_vae(missing, PATCH_NUMS)
  with pytest.raises(ValueError, match="pos_1LC"):
    var_checkpoint.load_var(sd_var, (1, 2, 3))
  wrong = dict(sd_var, **{"head.bias": torch.zeros(VOCAB + 1)})
  with pytest.raises(ValueError, match="head.bias"):
    var_checkpoint.load_var(wrong, PATCH_NUMS)


def test_npz_round_trip(converted, tmp_path):
  _, sd_var, _, generator = converted
  path = str(tmp_path / "var.npz")
  np.savez(path, **{k: v.numpy() for k, v in sd_var.items()})
  again = var_checkpoint.load_var(var_checkpoint.read_state_dict(path), PATCH_NUMS)
  np.testing.assert_array_equal(np.asarray(again.head.kernel[...]),
                                np.asarray(generator.head.kernel[...]))
