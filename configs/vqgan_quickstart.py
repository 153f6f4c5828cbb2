"""Quickstart: a small VQGAN on the built-in photographs, trained on a CPU in minutes.

  vqlab train --config configs/vqgan_quickstart.py --workdir runs/quickstart

32x32 crops (sides 32-128 px, resized) of 8 bundled photographs, f4 (8x8 tokens), an
EMA codebook of 1,024 codes with k-means init and dead-code restarts, L1 + quantizer
loss, PatchGAN with the adaptive weight for the last quarter; evaluated on 2 held-out
photographs. No LPIPS (its weights are not bundled): add
--config.loss.perceptual_weight=1 --config.loss.lpips_weights=lpips_vgg16.npz.
`configs/vqgan_quickstart.py:msvq` swaps in VAR's multi-scale quantizer (scales 1-8) for
the next-scale generator; `:digits` trains on the built-in MNIST digits instead (labelled:
the class-conditional generator chain whose samples the digits classifier scores).
Tokens for the generators' other heads (configs/generator_quickstart.py): `:rvq` residual
VQ, 4 levels of 1,024 codes (RQ-Transformer's depth head, `:raster,rq`); `:lfq` LFQ with
2^16 codes (Infinity's bitwise head `:raster,bitwise`, Open-MAGVIT2's sub-tokens
`:raster,factorized`, MaskBit `:maskgit,bitwise`); `:msbsq` Infinity's bitwise
multi-scale quantizer (scales 1-8, 16 bits a position: `:var,bitwise`).
"""

from configs.common import parse_arg, quantizer_spec, shrink_for_runlocal, tokenizer_config

SHAPE = dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
             z_channels=32, embed_dim=32, resolution=32, in_channels=3, norm_groups=8,
             dropout=0.0)


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("msvq", "msbsq", "rvq", "lfq", "digits"))
  quantizer = quantizer_spec("vq", codebook_size=1024, codebook="ema", kmeans_init=True,
                             dead_code_threshold=0.5)
  if "msvq" in variants:  # VAR's multi-scale quantizer: the next-scale chain
    quantizer = quantizer_spec("msvq", codebook_size=1024, patch_nums=(1, 2, 3, 4, 6, 8))
  if "msbsq" in variants:  # Infinity's bitwise multi-scale quantizer: 16 bits a position
    quantizer = quantizer_spec("msvq", codebook_size=2**16, patch_nums=(1, 2, 3, 4, 6, 8),
                               binary=True)
  if "rvq" in variants:  # 4 residual levels: indices (8, 8, 4)
    quantizer = quantizer_spec("rvq", codebook_size=1024, num_levels=4, codebook="ema",
                               kmeans_init=True, dead_code_threshold=0.5)
  if "lfq" in variants:  # 2^16 implicit codes (projections from the 32-channel latent)
    quantizer = quantizer_spec("lfq", bits=16)
  c = tokenizer_config("vqgan", dict(SHAPE, embed_dim=16) if "msbsq" in variants else SHAPE,
                       quantizer)  # msbsq: one bit per latent channel
  c.data.update(name="vqlab_photos", image_size=32, min_crop=32, max_crop=128, in_memory=True,
                threads=2, prefetch=64)
  c.train.update(steps=2000, batch_size=32, lr=1e-3, disc_lr=2e-4, ema_decay=0.0)
  c.loss.update(perceptual_weight=0.0, disc_start=1500, disc_weight=0.1)
  c.disc.update(width=32, n_layers=2)
  c.log.update(every=25, image_every=250, checkpoint_every=500, eval_examples=512)
  if "runlocal" in variants:
    # f4 with msvq: its last scale (8) is the 32 / 4 latent grid
    multiscale = "msvq" in variants or "msbsq" in variants
    shrink_for_runlocal(c, dict(SHAPE, channels=8, channel_mult=(1, 2, 2) if multiscale
                                else (1, 2), z_channels=16, embed_dim=16))
  if "digits" in variants:  # the built-in MNIST digits, with labels: class-conditional chains
    c.model.shape = dict(c.model.shape, in_channels=1)
    # decoded batch by batch (behind the prefetch): decoding all 4,500 first costs ~7 s
    c.data.update(name="vqlab_digits", min_crop=0, max_crop=0, flip=False, in_memory=False)
  return c
