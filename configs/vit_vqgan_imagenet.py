"""ViT-VQGAN "Base" on ImageNet (Yu et al. 2021, table 1 / appendix): 256 px, 8x8 patches
(32x32 tokens), 8,192 factorized codes of 32 dims, l2-normalised (cosine) lookup; L2
1.0 + LPIPS 0.1 + adversarial 0.1 (a PatchGAN here, not the paper's StyleGAN
discriminator) + commitment 0.25; Adam(0.9, 0.99), weight decay 1e-4, lr 1e-4 with 5k
linear warmup and cosine decay, batch 256, 500k steps.

  vqlab train --config configs/vit_vqgan_imagenet.py --workdir runs/vit \\
    --config.data.data_dir=gs://your-bucket/tfds --config.loss.lpips_weights=lpips_vgg16.npz
"""

from configs.common import parse_arg, quantizer_spec, shrink_for_runlocal, tokenizer_config
from vqlab.models.vit_vqgan import BASE


def get_config(arg: str | None = None):
  variants = parse_arg(arg)
  shape = {k: getattr(BASE, k) for k in BASE.__dataclass_fields__}
  quantizer = quantizer_spec("vq", codebook_size=8192, code_dim=32, metric="cosine",
                             beta=0.25)
  c = tokenizer_config("vit", shape, quantizer)
  c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                image_size=256, min_crop=256, max_crop=512, flip=True)
  c.train.update(steps=500_000, batch_size=256, lr=1e-4, disc_lr=1e-4, b1=0.9, b2=0.99,
                 weight_decay=1e-4, warmup_steps=5000, schedule="cosine")
  c.loss.update(recon="l2", perceptual_weight=0.1, adaptive_weight=False, disc_weight=0.1,
                disc_start=0)
  c.mesh.update(data=-1, fsdp=8)  # 8-way FSDP inside each group of data replicas
  c.log.update(every=100, image_every=5000, checkpoint_every=5000, eval_examples=50_000)
  if "runlocal" in variants:
    shrink_for_runlocal(c, dict(shape, image_size=32, patch_size=4, width=64, depth=2,
                                heads=4, latent_dim=32))
    c.model.quantizer.args.update(codebook_size=256, code_dim=8)
    c.mesh.update(data=-1, fsdp=1)
  return c
