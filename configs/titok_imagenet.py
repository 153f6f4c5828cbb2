"""TiTok on ImageNet at 256 px (Yu et al. 2024, https://arxiv.org/abs/2406.07550, sec. 4.1
and appendix; the settings of bytedance/1d-tokenizer's TiTok configs).

Sizes: `:l32` (TiTok-L-32, default), `:b64`, `:s128`; patches of 16 (a 16x16 grid), VQ with
4,096 l2-normalised codes of 12 dims, commitment 0.25.

Two stages (the paper's recipe):
- stage 1 (default): the decoder predicts the codes of a trained f16 2D tokenizer (the paper
  uses MaskGIT's VQGAN) under cross-entropy; AdamW(0.9, 0.99), weight decay 1e-4, lr 1e-4
  with 10k warmup and cosine decay, batch 256 (32 per GPU on 8), EMA, clip 1.0, 1M steps:
    vqlab train --config configs/titok_imagenet.py:l32 --workdir runs/titok_l32_s1 \\
      --config.model.proxy.teacher=runs/vqgan_f16 --config.data.data_dir=gs://bucket/tfds
- `:stage2`: from the stage-1 run, only the decoders, on pixels: L2 + perceptual 0.1 +
  GAN 0.01 from step 20k with LeCam 0.001, quantizer loss off, b2 0.999, 5k warmup,
  500k steps (`--config.model.proxy.init_from=runs/titok_l32_s1`).
- `:single` (and `:runlocal`): one stage on pixels (TA-TiTok's recipe, arXiv 2501.07730): L1 + perceptual +
  GAN + quantizer loss, no teacher.

Differences: the perceptual loss is LPIPS-VGG (the paper's stage 2 adds ConvNeXt-S
features); the cosine schedule decays to 0 (the reference ends at 1e-5).
"""

import ml_collections

from configs.common import parse_arg, quantizer_spec, shrink_for_runlocal, tokenizer_config
from configs.titok_quickstart import proxy_settings
from vqlab.models.titok import TITOK_B_64, TITOK_L_32, TITOK_S_128


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("l32", "b64", "s128", "stage2", "single"))
  size = TITOK_S_128 if "s128" in variants else TITOK_B_64 if "b64" in variants else TITOK_L_32
  shape = {k: getattr(size, k) for k in size.__dataclass_fields__}
  shape.update(image_size=256, patch_size=16, token_dim=12, channels=3)
  quantizer = quantizer_spec("vq", codebook_size=4096, metric="cosine", beta=0.25)
  c = tokenizer_config("titok", shape, quantizer)
  c.model.proxy = ml_collections.ConfigDict(dict(teacher="", stage=1, init_from=""))
  c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                image_size=256, min_crop=256, max_crop=512, flip=True)
  c.train.update(steps=1_000_000, batch_size=256, lr=1e-4, disc_lr=1e-4, b1=0.9, b2=0.99,
                 weight_decay=1e-4, warmup_steps=10_000, schedule="cosine", grad_clip=1.0,
                 ema_decay=0.999)
  c.loss.update(perceptual_weight=0.1, adaptive_weight=False, disc_weight=0.01,
                disc_start=20_000, lecam_weight=0.001)
  c.mesh.update(data=-1, fsdp=8)
  c.log.update(every=100, image_every=5000, checkpoint_every=5000, eval_examples=50_000)
  # runlocal: the single-stage recipe on the photos (the stages need a teacher run)
  single = "single" in variants or "runlocal" in variants
  if single and "stage2" in variants:
    raise ValueError("config arg: ':single' / ':runlocal' have no stages; ':stage2' is the "
                     "proxy recipe's")
  if not single:
    proxy_settings(c, 2 if "stage2" in variants else 1)
  if "stage2" in variants:
    c.train.update(steps=500_000, b2=0.999, warmup_steps=5000)
  if "runlocal" in variants:
    shrink_for_runlocal(c, dict(shape, image_size=32, patch_size=4, width=32, depth=1,
                                heads=2, num_tokens=16))
    c.model.quantizer.args.update(codebook_size=64)
    c.train.update(ema_decay=0.0)
    c.mesh.update(data=-1, fsdp=1)
  return c
