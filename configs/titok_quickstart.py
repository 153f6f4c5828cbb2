"""Quickstart: TiTok, a 1D tokenizer (Yu et al. 2024, https://arxiv.org/abs/2406.07550), on
the built-in photographs, trained on a CPU.

  vqlab train --config configs/titok_quickstart.py --workdir runs/titok

32x32 crops as configs/vqgan_quickstart.py, patches of 4 (an 8x8 grid of mask tokens),
encoder and decoder ViTs 128 wide, 4 blocks each, K = 32 latent tokens (`:k64`, `:k128`)
of 12 dims quantized as the 2D quickstart's (an EMA codebook of 1,024 codes, k-means init,
dead-code restarts). Single stage (TA-TiTok's recipe): the decoder outputs pixels, trained with L1 +
quantizer loss and, for the last quarter, the PatchGAN as the 2D quickstart.

Variants:
- `:ordered`: tail-token drop on half the training examples (FlexTok / One-D-Piece), so
  any prefix of the K tokens decodes (`vqlab eval` reports quality at each k).
- `:proxy`: TiTok's two-stage recipe. Stage 1 predicts a trained 2D tokenizer's codes (8x8
  grid: the f4 VQGAN quickstart):
    vqlab train --config configs/vqgan_quickstart.py --workdir runs/quickstart
    vqlab train --config configs/titok_quickstart.py:proxy --workdir runs/titok_s1 \\
      --config.model.proxy.teacher=runs/quickstart
  Stage 2 fine-tunes TiTok's decoder and the teacher's on pixels from stage 1:
    vqlab train --config configs/titok_quickstart.py:proxy,stage2 --workdir runs/titok_s2 \\
      --config.model.proxy.init_from=runs/titok_s1
- `:digits`: the built-in MNIST digits (labelled: the generators' chain), squared error.
"""

import ml_collections

from configs.common import parse_arg, quantizer_spec, tokenizer_config

SHAPE = dict(image_size=32, patch_size=4, width=128, depth=4, heads=4, mlp_ratio=4,
             num_tokens=32, token_dim=12, channels=3, decoder="pixels", tail_drop=0.0,
             remat="none")


def proxy_settings(c: ml_collections.ConfigDict, stage: int) -> None:
  """TiTok's two stages: 1, cross-entropy on the teacher's codes (quantizer weight 1);
  2, the decoders on pixels (L2 + perceptual + GAN as the paper's stage 2, quantizer loss
  off: encoder and quantizer are frozen)."""
  c.model.shape = dict(c.model.shape, decoder="proxy")
  c.model.proxy.stage = stage
  if stage == 1:
    c.loss.update(proxy_weight=1.0, recon_weight=0.0, perceptual_weight=0.0, disc_weight=0.0)
  else:
    c.loss.update(proxy_weight=0.0, recon="l2", quantizer_weight=0.0)


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("k64", "k128", "ordered", "proxy", "stage2", "digits"))
  tokens = 128 if "k128" in variants else 64 if "k64" in variants else 32
  # the 2D quickstart's quantizer, so that 1D vs 2D compares the tokenizers alone (TiTok's
  # learned cosine codebook used 35 of 1,024 codes here: configs/titok_imagenet.py keeps it)
  quantizer = quantizer_spec("vq", codebook_size=1024, codebook="ema", kmeans_init=True,
                             dead_code_threshold=0.5)
  c = tokenizer_config("titok", dict(SHAPE, num_tokens=tokens), quantizer)
  # the two-stage recipe: a teacher tokenizer's run (stage 1), the stage-1 run (stage 2)
  c.model.proxy = ml_collections.ConfigDict(dict(teacher="", stage=1, init_from=""))
  c.data.update(name="vqlab_photos", image_size=32, min_crop=32, max_crop=128, in_memory=True,
                threads=2, prefetch=64)
  c.train.update(steps=2000, batch_size=32, lr=1e-3, disc_lr=2e-4, b1=0.9, b2=0.99,
                 warmup_steps=100, schedule="cosine", grad_clip=1.0, ema_decay=0.0)
  c.loss.update(perceptual_weight=0.0, disc_start=1500, disc_weight=0.1)
  c.disc.update(width=32, n_layers=2)
  c.log.update(every=25, image_every=250, checkpoint_every=500, eval_examples=512)
  if "ordered" in variants:
    c.model.shape = dict(c.model.shape, tail_drop=0.5)
  if "stage2" in variants and "proxy" not in variants:
    raise ValueError("config arg: 'stage2' is the second stage of ':proxy' (:proxy,stage2)")
  if "proxy" in variants:
    proxy_settings(c, 2 if "stage2" in variants else 1)
  if "digits" in variants:
    c.model.shape = dict(c.model.shape, channels=1)
    c.data.update(name="vqlab_digits", min_crop=0, max_crop=0, flip=False, in_memory=False)
    # L1's median on mostly-black digits is black: a trial stayed under the mean digit's
    # PSNR (11.5 vs 12.8 dB at 300 steps); squared error does not (as the video quickstart)
    c.loss.recon = "l2"
  if "runlocal" in variants:
    c.model.shape = dict(c.model.shape, width=32, depth=1, heads=2)
    c.model.quantizer.args.update(codebook_size=64)
    c.data.update(prefetch=16)
    c.train.update(steps=2, batch_size=8, warmup_steps=1)
    c.loss.update(disc_start=1)
    c.disc.update(width=16)
    c.log.update(every=1, image_every=2, checkpoint_every=2, eval_examples=16)
  return c
