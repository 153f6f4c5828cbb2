"""taming-transformers' f16 ImageNet VQGAN (Esser et al. 2021): 256 px, 16x16 tokens,
16,384 codes of 256 dims, L1 + LPIPS + codebook loss, hinge PatchGAN from step 250,001
with the adaptive weight (x 0.8), Adam(0.5, 0.9) at taming's 8-GPU learning rate
(4.5e-6 x batch 96).

  vqlab train --config configs/vqgan_imagenet_f16.py --workdir runs/f16 \\
    --config.data.data_dir=gs://your-bucket/tfds --config.loss.lpips_weights=lpips_vgg16.npz
"""

from configs.common import parse_arg, quantizer_spec, shrink_for_runlocal, tokenizer_config
from vqlab.models.vqgan import F16


def get_config(arg: str | None = None):
  variants = parse_arg(arg)
  shape = {k: getattr(F16, k) for k in F16.__dataclass_fields__}
  quantizer = quantizer_spec("vq", codebook_size=16384, beta=0.25)
  c = tokenizer_config("vqgan", shape, quantizer)
  c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                image_size=256, min_crop=256, max_crop=512, flip=True)
  c.train.update(steps=1_000_000, batch_size=96, lr=4.32e-4, disc_lr=4.32e-4)
  c.loss.update(perceptual_weight=1.0, disc_start=250_001, disc_weight=0.8)
  c.mesh.update(data=-1, fsdp=1)
  c.log.update(every=100, image_every=5000, checkpoint_every=5000, eval_examples=50_000)
  if "runlocal" in variants:
    shrink_for_runlocal(c, dict(shape, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attn_resolutions=(16,), z_channels=16, embed_dim=16,
                                resolution=32, norm_groups=8))
    c.model.quantizer.args.codebook_size = 256
  return c
