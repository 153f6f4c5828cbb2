"""Quickstart: a small causal 3D video tokenizer (MAGVIT-v2's shape) on the built-in
Moving MNIST, trained on a CPU in about 25 minutes.

  vqlab train --config configs/video_quickstart.py --workdir runs/video

Clips of 9 frames (random temporal crops of the 20), downsampled from 64x64 to 32x32 (a
CPU budget: 64x64 steps take 5x longer; `--config.data.image_size=64
--config.model.shape.resolution=64` trains the standard size), f4 in space and 4x in
time: 3 x 8 x 8 tokens a clip (the first frame alone, then one latent frame per 4), LFQ with
2^10 codes (MAGVIT-v2's quantizer, entropy loss), squared error + quantizer loss, a 3D
PatchGAN with the adaptive weight for the last quarter; evaluated on held-out clips made from the test
digits against repeating the first frame. The same model tokenizes single images (1-frame
clips). `:fsq` swaps in FSQ (Cosmos' quantizer) at 1,000 codes.

Squared error, not VQGAN's L1: 92% of Moving MNIST's pixels are black, and L1's
median-seeking optimum is a black frame (an L1 run was near black-frame PSNR, 14.5 vs
14.7 dB, after 400 steps; the squared-error run drew the digits by step 300).
"""

from configs.common import parse_arg, quantizer_spec, tokenizer_config

SHAPE = dict(channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
             temporal_downsample=(True, True), embed_dim=10, resolution=32,
             in_channels=1, norm_groups=8, adaptive_norm=True)


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("fsq",))
  quantizer = quantizer_spec("lfq", bits=10)
  shape = dict(SHAPE)
  if "fsq" in variants:  # Cosmos' quantizer: 8 * 5 * 5 * 5 = 1,000 implicit codes
    quantizer = quantizer_spec("fsq", levels=(8, 5, 5, 5))
    shape["embed_dim"] = 4
  c = tokenizer_config("causal3d", shape, quantizer)
  c.data.update(name="vqlab_moving_mnist", image_size=32, num_frames=9, flip=False,
                in_memory=True, threads=2, prefetch=64)
  c.train.update(steps=1500, batch_size=8, lr=1e-3, disc_lr=2e-4, ema_decay=0.0)
  c.loss.update(recon="l2", perceptual_weight=0.0, disc_start=1100, disc_weight=0.1)
  c.disc.update(width=16, n_layers=2)
  c.log.update(every=25, image_every=250, checkpoint_every=500, eval_examples=128)
  if "runlocal" in variants:  # seconds: 32x32 frames, 5-frame clips, a few steps
    c.model.shape = dict(shape, channels=8, norm_groups=4)
    c.data.update(num_frames=5)
    c.train.update(steps=2, batch_size=8)
    c.loss.update(disc_start=1)
    c.disc.update(width=8)
    c.log.update(every=1, image_every=2, checkpoint_every=2, eval_examples=8)
  return c
