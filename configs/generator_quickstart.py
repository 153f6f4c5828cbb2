"""Token generators on the quickstart tokenizer's tokens (the chain of the README):

  vqlab train --config configs/vqgan_quickstart.py --workdir runs/quickstart
  vqlab tokens --workdir runs/quickstart --out runs/quickstart/tokens --split train --examples 4096
  vqlab generate --config configs/generator_quickstart.py:raster --workdir runs/gen \\
    --config.tokenizer_workdir=runs/quickstart --config.tokens_dir=runs/quickstart/tokens

`:raster` (LlamaGen-style next token), `:maskgit` (masked), `:var` (next scale; needs a
tokenizer trained with `configs/vqgan_quickstart.py:msvq`). The built-in photos have no
labels: one class, so guidance contrasts the class with the null class. `:delay` models
an audio codec's speech tokens (MusicGen's delay pattern) and continues prompts:

  vqlab codec --config configs/audio_codec.py --workdir runs/codec
  vqlab tokens --workdir runs/codec --out runs/codec/tokens --split train --examples 2400
  vqlab tokens --workdir runs/codec --out runs/codec/prompts --split synth_test
  vqlab generate --config configs/generator_quickstart.py:delay --workdir runs/speech_gen \
    --config.tokenizer_workdir=runs/codec --config.tokens_dir=runs/codec/tokens \
    --config.sample.prompts_dir=runs/codec/prompts

`:video` (with `:raster`) models a video tokenizer's clip tokens (3D RoPE) and continues
held-out clips from their first latent frame (frame prediction; sample.prompt_frames=0
samples whole clips):

  vqlab train --config configs/video_quickstart.py --workdir runs/video
  vqlab tokens --workdir runs/video --out runs/video/tokens --split train
  vqlab tokens --workdir runs/video --out runs/video/prompts --split test --examples 64
  vqlab generate --config configs/generator_quickstart.py:raster,video --workdir runs/video_gen \
    --config.tokenizer_workdir=runs/video --config.tokens_dir=runs/video/tokens \
    --config.sample.prompts_dir=runs/video/prompts

Heads for tokens one softmax cannot hold (with `:raster`): `:rq` (RQ-Transformer's depth
transformer over the levels of a residual / grouped tokenizer, e.g. from
`configs/vqgan_quickstart.py:rvq`; with `:audio` over an audio codec's frames, 1D RoPE,
continuing prompts as `:delay` does), `:bitwise` (Infinity's bitwise head for LFQ / BSQ
tokens, e.g. from `configs/vqgan_quickstart.py:lfq`), `:factorized` (Open-MAGVIT2's
sub-tokens: 6 bits, then the rest); `:delay` also models an image tokenizer's residual
levels (MusicGen's delay pattern over raster steps, the cheaper alternative to `:rq`). `:maskgit,bitwise` is MaskBit's masked bit modelling
of LFQ / BSQ tokens (two groups of bits per token); `:var,bitwise` Infinity's bitwise
next-scale model on a tokenizer from `configs/vqgan_quickstart.py:msbsq`.

`:digits` (e.g. `:raster,digits`) is the class-conditional chain on the built-in digits:
a tokenizer from `configs/vqgan_quickstart.py:digits`, its tokens, 10 classes; the sample
grid has one row per class and the summary the digits classifier's FID, class accuracy,
precision and recall (vqlab/eval/digits.py). Add `,runlocal` for a 2-step smoke run.
"""

from configs.common import generator_config, parse_arg, shrink_generator_for_runlocal

PARADIGMS = ("raster", "var", "maskgit", "delay")


def get_config(arg: str | None = None):
  variants = parse_arg(arg, known=("digits", "video", "audio", "rq", "bitwise", "factorized"),
                       one_of=PARADIGMS)
  chosen = [p for p in PARADIGMS if p in variants]
  c = generator_config(chosen[0])
  c.model.update(width=192, depth=4, heads=6, num_classes=1)
  c.train.update(steps=1500, batch_size=32, lr=1e-3, warmup_steps=100)
  c.sample.update(every=500, num=16, cfg_scale=1.5, top_k=100)
  c.log.update(every=50, checkpoint_every=500)
  if chosen[0] == "delay":  # 2 s clips: 100 frames + 7 delay steps; no guidance (one class)
    c.sample.update(num=4, cfg_scale=1.0, top_k=50, prompt_frames=25)
  if "rq" in variants:
    c.model.head = "depth"
  if "bitwise" in variants:
    c.model.head = "bitwise"
  if "factorized" in variants:
    c.model.update(head="depth", sub_token_bits=(6,))
  if "audio" in variants:  # 1D positions over frames; continue held-out utterances
    c.model.positions = "rope1d"
    c.sample.update(num=4, cfg_scale=1.0, top_k=50, prompt_frames=25)
  if "video" in variants:  # one class; continue 8 held-out clips from their first latent frame
    c.model.positions = "rope3d"
    c.sample.update(num=8, cfg_scale=1.0, top_k=50, prompt_frames=1)
  if "digits" in variants:  # 10 classes; a sample grid of one row per class
    c.model.num_classes = 10
    c.sample.update(num=100, cfg_scale=1.5)
  if "runlocal" in variants:
    shrink_generator_for_runlocal(c)
    if "video" in variants or "audio" in variants:
      c.sample.num = 2
    if "digits" in variants:
      c.sample.num = 20
      c.eval.digits_examples = 40
  return c
