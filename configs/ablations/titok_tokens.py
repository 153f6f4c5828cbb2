"""TiTok's number of latent tokens against reconstruction (Yu et al. 2024, "An Image is Worth
32 Tokens for Reconstruction and Generation", arXiv 2406.07550, Fig. 4a / Table 1: with K
from 16 to 256 1D tokens reconstruction improves as K grows). The digits tokenizer of
configs/titok_quickstart.py:digits at K = 16, 32, 64, 128 (1,000 steps, squared error, no
GAN, three seeds), beside the 2D VQGAN of configs/vqgan_quickstart.py:digits at its 64
tokens (8x8) with the same quantizer, loss and steps.

  vqlab sweep --config configs/ablations/titok_tokens.py --workdir runs/ablations/titok_tokens
"""

from configs.common import parse_arg, sweep_config, variant

METRICS = ("psnr", "ssim", "usage")
NO_GAN = {"loss.disc_start": 10**9, "loss.perceptual_weight": 0.0, "loss.lpips_weights": ""}


def get_config(arg=None):
  variants = parse_arg(arg)
  tokens, steps, seeds, extra = (16, 32, 64, 128), 1000, (0, 1, 2), ""
  if "runlocal" in variants:
    tokens, steps, seeds, extra = (8, 16), 2, (0,), ",runlocal"
  same = {"train.steps": steps, "log.checkpoint_every": max(steps // 2, 1), "loss.recon": "l2",
          **NO_GAN}  # squared error for both: L1 keeps digits black (titok_quickstart.py)
  runs = [variant({"model": "titok", "tokens": k}, {"model.shape.num_tokens": k})
          for k in tokens]
  if "runlocal" not in variants:  # the 2D reference: 8x8 codes, the quantizer both share
    runs.append(variant({"model": "vqgan_2d", "tokens": 64}, {},
                        base="configs/vqgan_quickstart.py:digits"))
  return sweep_config(
      "TiTok: latent tokens vs reconstruction (digits)",
      f"configs/titok_quickstart.py:digits{extra}", runs, METRICS, seeds=seeds,
      overrides=same, claims="titok_tokens.claims.toml",
      plots=[dict(x="tokens", metric="psnr", line="model", log2_x=True)],
      labels={"psnr": "held-out PSNR (dB)", "tokens": "tokens per image"})
