"""MAGVIT-v2's video tokenizer on UCF-101 (Yu et al. 2023, https://arxiv.org/abs/2310.05737):
17-frame clips at 128x128 -> 5 x 16 x 16 tokens (f8, 4x in time), LFQ with 2^18 codes.

  vqlab train --config configs/video_ucf101.py --workdir runs/ucf101

UCF-101 through tfds when prepared in `data.data_dir` (`tfds build ucf101 --data_dir ...
--file_format array_record`; Kinetics-600: `--config.data.name=kinetics600`). Sizes as in
MAGVIT-v2 sec. 3.2 / appendix: 128 base channels, multipliers (1, 2, 2, 4), 4 residual
blocks a level, time halved at the last two downsamplings, 18 latent channels; LFQ with
entropy weight 0.1 and commitment 0.25; perceptual 0.1, GAN 0.1 with LeCam 0.001 (the
MAGVIT recipe). What is ours, not the paper's: the 3D PatchGAN (MAGVIT uses a StyleGAN
discriminator), the adaptive GAN weight off (a fixed 0.1), and the optimiser settings
(taming's Adam, b1 0.5 / b2 0.9). `:fsq` is Cosmos' quantizer (FSQ, 8-8-8-5-5-5: 64,000
codes) on the same network.
"""

from configs.common import parse_arg, quantizer_spec, shrink_for_runlocal, tokenizer_config

SHAPE = dict(channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=4,
             temporal_downsample=(False, True, True), embed_dim=18, resolution=128,
             in_channels=3, norm_groups=32, adaptive_norm=True)


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("fsq",))
  quantizer = quantizer_spec("lfq", bits=18, entropy_weight=0.1, commitment_weight=0.25)
  shape = dict(SHAPE)
  if "fsq" in variants:
    quantizer = quantizer_spec("fsq", levels=(8, 8, 8, 5, 5, 5))
    shape["embed_dim"] = 6
  c = tokenizer_config("causal3d", shape, quantizer)
  c.data.update(name="ucf101", image_size=128, num_frames=17, flip=False)
  c.train.update(steps=300_000, batch_size=256, lr=1e-4, disc_lr=1e-4, ema_decay=0.999,
                 compute_dtype="bfloat16")
  c.loss.update(recon="l2", perceptual_weight=0.1, lpips_weights="lpips_vgg16.npz",
                disc_weight=0.1, adaptive_weight=False, disc_start=50_000, lecam_weight=0.001)
  c.disc.update(width=64, n_layers=3)
  c.log.update(every=100, image_every=2000, checkpoint_every=2000, eval_examples=1024)
  if "runlocal" in variants:  # a CPU-sized model on the built-in Moving MNIST
    shrink_for_runlocal(c, dict(shape, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                                temporal_downsample=(True, True), resolution=32,
                                in_channels=1, norm_groups=4))
    c.data.update(name="vqlab_moving_mnist", num_frames=5, min_crop=0, max_crop=0, flip=False)
    c.train.update(compute_dtype="float32")
  return c
