"""One token model for text and images (Chameleon / Emu3 early fusion) on the built-in
digits and their captions:

  vqlab train --config configs/vqgan_quickstart.py:digits --workdir runs/digits
  vqlab tokens --workdir runs/digits --out runs/digits/tokens --split train
  vqlab tokens --workdir runs/digits --out runs/digits/test_tokens --split test
  vqlab multimodal --config configs/multimodal_quickstart.py --workdir runs/multimodal \\
    --config.tokenizer_workdir=runs/digits --config.tokens_dir=runs/digits/tokens \\
    --config.eval_tokens_dir=runs/digits/test_tokens

Each training document is text -> image (`<bos> caption <boi> image <eoi> <eos>`, the
caption dropped at train.drop_prompt) or image -> text (`<bos> <boi> image <eoi> caption
<eos>`), drawn per example at train.tasks' weights; the text tokenizer is a byte-level
BPE of text.vocab_size ids trained on the captions and saved with the run. The summary
holds text -> image class accuracy / digits FID (the digits classifier on images made
from each digit's caption) and image -> text caption accuracy (held-out digits).
`:runlocal`: a 2-step smoke run.
"""

import ml_collections

from configs.common import parse_arg
from vqlab import parallel


def get_config(arg: str | None = None):
  args = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dry_run = False  # compile the step for the mesh, print memory and FLOPs, train nothing
  c.profile_steps = ()  # (first, last): a jax.profiler trace of those steps (TensorBoard)
  c.tokenizer_workdir = ""  # a digits image tokenizer run (its decoder draws the images)
  c.tokens_dir = ""  # its exported training tokens (with labels)
  c.eval_tokens_dir = ""  # its exported held-out tokens: image -> text is scored on them
  c.text = ml_collections.ConfigDict(dict(vocab_size=320))  # BPE ids (>= 256 byte symbols)
  c.model = ml_collections.ConfigDict(dict(
      width=192, depth=4, heads=6, mlp_ratio=4.0, norm="rms", mlp="swiglu", qk_norm="none",
      dropout=0.0, remat="none",
      mask="causal"))  # attention over the sequence: "causal" (Chameleon / Emu3)
  c.train = ml_collections.ConfigDict(dict(
      steps=2000, batch_size=32, lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.05,
      warmup_steps=100, schedule="constant", grad_clip=1.0, ema_decay=0.0,
      compute_dtype="float32", grad_accum_steps=1, nonfinite="stop", max_skips=20,
      tasks={"text_to_image": 1.0, "image_to_text": 1.0},  # relative weights
      drop_prompt=0.1))  # text -> image documents without their caption (guidance)
  c.loss = ml_collections.ConfigDict(dict(text=1.0, image=1.0))  # per-modality weights
  c.sample = ml_collections.ConfigDict(dict(every=500, num=40, cfg_scale=2.0,
                                            temperature=1.0, top_k=0))
  # text -> image: this many class-balanced samples scored by the digits classifier;
  # image -> text: captions of this many held-out digits (eval_tokens_dir)
  c.eval = ml_collections.ConfigDict(dict(digits_examples=500, caption_examples=500,
                                          batch_size=50))
  c.data = ml_collections.ConfigDict(dict(threads=2, prefetch=64, workers=0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, min_fsdp_size=2**12,
                                          rules=parallel.DEFAULT_RULES))
  c.log = ml_collections.ConfigDict(dict(every=50, checkpoint_every=500, keep_checkpoints=3))
  if "runlocal" in args:
    c.model.update(width=32, depth=2, heads=4, mlp_ratio=2.0)
    c.train.update(steps=2, batch_size=8, warmup_steps=1)
    c.sample.update(every=2, num=10)
    c.eval.update(digits_examples=0, caption_examples=8, batch_size=8)
    c.log.update(every=1, checkpoint_every=2)
  return c
