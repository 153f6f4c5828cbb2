"""The unified multimodal trainer: one decoder-only transformer over text, image and
speech tokens in one sequence (early fusion: Chameleon, arXiv 2405.09818; Emu3, arXiv
2409.18869; AnyGPT, arXiv 2402.12226), trained on the built-in digits, their captions,
and the captions spoken by espeak-ng.

The commands that make its inputs and train it: configs/multimodal_quickstart.py.

The text tokenizer is a byte-level BPE trained on the captions (vqlab.data.text) and
saved with the run (tokenizer.json); the vocabulary puts text, the image tokenizer's codes
and the codec's first `speech.levels` levels behind offsets with `<boi>` / `<eoi>`,
`<boa>` / `<eoa>` (vqlab.models.multimodal). The spoken captions (vqlab.data.spoken) are
synthesised and coded once per start, for the training voices and the held-out ones.
Each training document is one task, drawn per example (vqlab.data.paired); the loss is
next-token cross-entropy over every id, weighted per modality (`loss.text`, `.image`,
`.audio`).

Evaluation: text -> image (the fixed caption of each digit, guided) scored by the digits
classifier (class accuracy, digits FID: the generator's metrics); image -> text: the
caption generated for each held-out digit names it; on held-out voices, speech -> text
(the caption names the spoken digit), speech -> image (class accuracy), and text ->
speech, recognised by the model itself (its own speech -> text) and by PocketSphinx
under a closed grammar of the captions' words, next to PocketSphinx's score on the
held-out espeak-ng speech and on its codec resynthesis. `UnifiedModel` runs every task on
a finished run (notebooks, `vqlab sample`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vqlab import parallel
from vqlab.data import paired, speech, spoken, text
from vqlab.data.tokens import TokenSource
from vqlab.eval import speech_recognition
from vqlab.models import audio_codec, multimodal, sampling
from vqlab.models.multimodal import BOA, BOI, BOS, EOA, EOS, MASK, PAD
from vqlab.nn import precision
from vqlab.nn.transformer import TransformerShape
from vqlab.train import evaluators, loop, runs
from vqlab.train.common import (accumulated_value_and_grad, ema_update, make_optimizer,
                                save_image_grid, to_pixels, to_unit)

SHAPE_FIELDS = [f.name for f in dataclasses.fields(TransformerShape)]
TOKENIZER_FILE = "tokenizer.json"
SPEECH_FILE = "speech.json"  # the longest spoken caption, so a saved run loads without them
IMAGE_TARGET_TASKS = tuple(i for i, t in enumerate(paired.TASKS)
                           if paired.TASK_MODALITIES[t][1] == "image")


def check_config(config: ml_collections.ConfigDict) -> None:
  loop.check_train_config(config)
  for name in ("tokenizer_workdir", "tokens_dir"):
    if not config[name]:
      raise ValueError(f"{name}: expected a path (a digits tokenizer run and its exported "
                       "tokens; see configs/multimodal_quickstart.py), got ''")
  spoken_tasks = [t for t in paired.SPEECH_TASKS if config.train.tasks.get(t, 0.0) > 0]
  if spoken_tasks and not config.codec_workdir:
    raise ValueError(f"codec_workdir: the tasks {spoken_tasks} need an audio codec run "
                     "(vqlab codec), got ''; or set their train.tasks weights to 0 "
                     "(configs/multimodal_quickstart.py:text_image)")
  if config.codec_workdir:
    sp = config.speech
    if sp.levels < 1 or sp.train_voices < 1 or sp.held_out_voices < 1:
      raise ValueError(f"speech: expected levels, train_voices, held_out_voices >= 1, got "
                       f"{sp.levels}, {sp.train_voices}, {sp.held_out_voices}")
    if text.EVAL_TEMPLATE not in sp.templates:
      raise ValueError(f"speech.templates: expected the evaluation template "
                       f"{text.EVAL_TEMPLATE} among them, got {tuple(sp.templates)}")
    for t in sp.templates:
      text.caption(0, int(t))
  if config.model.mask not in multimodal.MASKS:
    raise ValueError(f"model.mask: expected one of {multimodal.MASKS}, got "
                     f"{config.model.mask!r}")
  sampling.mask_schedule(0.0, config.sample.schedule)
  for name, value in config.loss.items():
    if value < 0:
      raise ValueError(f"loss.{name}: expected >= 0, got {value}")
  if config.sample.cfg_scale < 0:
    raise ValueError(f"sample.cfg_scale: expected >= 0, got {config.sample.cfg_scale}")
  paired.task_probabilities(dict(config.train.tasks), config.train.drop_prompt)


def text_tokenizer(config: ml_collections.ConfigDict) -> text.TextTokenizer:
  """The run's text tokenizer: a byte-level BPE of `text.vocab_size` ids on the captions."""
  return text.train_bpe(text.all_captions(), config.text.vocab_size)


def build_model(config: ml_collections.ConfigDict, vocab: multimodal.Vocabulary
                ) -> multimodal.UnifiedGenerator:
  shape = TransformerShape(**{k: config.model[k] for k in SHAPE_FIELDS if k in config.model})
  return multimodal.UnifiedGenerator(shape, vocab, rngs=nnx.Rngs(config.seed))


def init_state(config: ml_collections.ConfigDict, vocab: multimodal.Vocabulary):
  model = precision.set_compute_dtype(build_model(config, vocab), config.train.compute_dtype)
  optimizer = nnx.Optimizer(model, make_optimizer(config, config.train.lr), wrt=nnx.Param)
  graphdef, nnx_state = nnx.split((model, optimizer))
  ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if config.train.ema_decay else {}
  state = jax.tree.map(lambda x: jnp.array(x, copy=True), {"nnx": nnx_state, "ema": ema})
  return graphdef, {**state, "rng": jax.random.key(config.seed + 11)}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  ema_decay: float
  grad_accum_steps: int
  text_span: tuple[int, int]
  image_span: tuple[int, int]
  audio_span: tuple[int, int] = (0, 0)  # no audio in the vocabulary: empty
  mask: str = "causal"

  @property
  def spans(self) -> dict[str, tuple[int, int]]:
    return {"text": self.text_span, "image": self.image_span, "audio": self.audio_span}


def train_step(state, batch, *, graphdef, spec: StepSpec):
  """Every target weighted by its modality's loss weight (`batch["weights"]`, 0 at
  `<pad>`). "causal" (Chameleon / Emu3): next-token cross-entropy over the whole document.
  "show-o" (Show-o, arXiv 2408.12528): the image tokens of documents whose target is the
  image (text -> image, speech -> image) are replaced by `<mask>` at a ratio drawn per
  document (MaskGIT's cosine schedule) and predicted where they stand, under the Show-o
  attention; everything else that is not an image token is predicted next-token. Metrics:
  nats per token of each modality and of each task's documents."""
  model, optimizer = nnx.merge(graphdef, state["nnx"])
  rng, k_ratio, k_mask = jax.random.split(state["rng"], 3)
  ids, weights = batch["ids"], batch["weights"]
  in_span = lambda x, span: (x >= span[0]) & (x < span[1])
  image = in_span(ids, spec.image_span)
  # target t + 1 of position t (nothing after the last)
  next_ids = jnp.concatenate([ids[:, 1:], jnp.full_like(ids[:, :1], PAD)], 1)
  next_weights = jnp.concatenate([weights[:, 1:], jnp.zeros_like(weights[:, :1])], 1)
  inputs = {"ids": ids, "next_ids": next_ids}
  if spec.mask == "causal":
    inputs["next_weights"], inputs["self_weights"] = next_weights, jnp.zeros_like(weights)
  else:  # everything random is drawn for the whole batch, before any micro-batch split
    ratio = sampling.mask_schedule(jax.random.uniform(k_ratio, (ids.shape[0], 1)))
    makes_image = jnp.isin(batch["task"], jnp.array(IMAGE_TARGET_TASKS))[:, None]
    masked = image & makes_image & (jax.random.uniform(k_mask, ids.shape) < ratio)
    inputs["ids"] = jnp.where(masked, MASK, ids)
    next_image = jnp.concatenate([image[:, 1:], jnp.zeros_like(image[:, :1])], 1)
    inputs["next_weights"] = jnp.where(next_image, 0.0, next_weights)
    inputs["self_weights"] = jnp.where(masked, weights, 0.0)
  inputs["targets"], inputs["task"] = ids, batch["task"]
  total = jnp.maximum(jnp.sum(inputs["next_weights"]) + jnp.sum(inputs["self_weights"]), 1.0)

  def loss_fn(model, x):
    logits, _ = model(x["ids"], multimodal.attention_levels(x["ids"], model.vocab, spec.mask),
                      multimodal.positions_of(x["ids"]))
    aux = {"accuracy": 0.0}
    loss = 0.0
    for target, w in ((x["next_ids"], x["next_weights"]), (x["targets"], x["self_weights"])):
      if spec.mask == "causal" and target is x["targets"]:
        continue  # no masked positions: skip the second cross-entropy
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, target)
      hit = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
      loss = loss + jnp.sum(nll * w) / total
      aux["accuracy"] = aux["accuracy"] + jnp.sum(hit * w) / total
      # per modality: sums here, divided by their counts after accumulation
      groups = {name: in_span(target, span) for name, span in spec.spans.items()}
      groups.update({task: (x["task"] == k)[:, None] for k, task in enumerate(paired.TASKS)})
      for name, group in groups.items():
        where = jnp.where(group, w > 0, False).astype(jnp.float32)
        aux[f"{name}_nll_sum"] = aux.get(f"{name}_nll_sum", 0.0) + jnp.sum(nll * where)
        aux[f"{name}_count"] = aux.get(f"{name}_count", 0.0) + jnp.sum(where)
    return loss, aux

  (loss, aux), grads = accumulated_value_and_grad(loss_fn, model, inputs, spec.grad_accum_steps)
  optimizer.update(model, grads)
  ema = ema_update(state["ema"], nnx.state(model, nnx.Param), spec.ema_decay)
  metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.global_norm(grads)}
  # nats per token of each modality, and of each task's documents (0 where the batch has
  # none: a task's mean over steps is over the steps that drew it)
  names = [m for m, span in spec.spans.items() if span[1] > span[0]] + list(paired.TASKS)
  for name in names:
    metrics[f"{name}_loss"] = aux[f"{name}_nll_sum"] / jnp.maximum(aux[f"{name}_count"], 1.0)
  return {"nnx": nnx.state((model, optimizer)), "ema": ema, "rng": rng}, metrics


def left_pad(rows: list[np.ndarray]) -> np.ndarray:
  """Prompts of different lengths as one (B, P) array, `<pad>` on the left."""
  width = max(map(len, rows))
  return np.stack([np.concatenate([np.full(width - len(r), PAD, np.int32), r]) for r in rows])


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  image_tokens: int
  token_shape: tuple[int, ...]
  caption_steps: int
  cfg_scale: float
  temperature: float
  top_k: int
  mask: str = "causal"
  steps: int = 16  # "show-o": MaskGIT decoding steps of an image
  schedule: str = "cosine"
  speech_steps: int = 0  # ids of the longest speech (frames x levels) and its <eoa>


def make_samplers(graphdef, tok_graphdef, vocab: multimodal.Vocabulary, spec: SampleSpec):
  """jit functions, any prompt (left-padded `<bos> ... `):
  image(state, tok_state, prompts ending in <boi>, key) -> (codes, images in [-1, 1]);
  text(state, prompts, key) -> generated ids (`<pad>` after `<eos>`);
  speech(state, prompts ending in <boa>, key) -> generated ids (`<pad>` after `<eoa>`).
  Image and speech are guided against the prompt without its condition (`<bos> <boi>`,
  `<bos> <boa>`)."""
  image_ids = jnp.asarray(multimodal.allowed_ids(vocab, "image"))
  text_ids = jnp.asarray(multimodal.allowed_ids(vocab, "text", specials=(EOS,)))
  guidance = dict(cfg_scale=spec.cfg_scale, temperature=spec.temperature, top_k=spec.top_k)

  def unconditional(prompts, begin):
    if spec.cfg_scale == 1:
      return None
    return jnp.tile(jnp.array([[BOS, begin]], jnp.int32), (prompts.shape[0], 1))

  @jax.jit
  def image(state, tok_state, prompts, key):
    model = runs.eval_model(graphdef, state)
    uncond = unconditional(prompts, BOI)
    if spec.mask == "show-o":
      tokens = multimodal.sample_image_masked(model, prompts, key, image_tokens=spec.image_tokens,
                                              steps=spec.steps, schedule=spec.schedule,
                                              uncond=uncond, **guidance)
    else:
      tokens = multimodal.sample(model, prompts, key, steps=spec.image_tokens,
                                 allowed=image_ids, uncond=uncond, mask=spec.mask,
                                 **guidance) - vocab.image_offset
    tok = nnx.merge(tok_graphdef, tok_state)
    return tokens, tok.decode(tokens.reshape(-1, *spec.token_shape))

  @jax.jit
  def caption(state, prompts, key):
    model = runs.eval_model(graphdef, state)
    return multimodal.sample(model, prompts, key, steps=spec.caption_steps, allowed=text_ids,
                             stop=EOS, temperature=spec.temperature, top_k=spec.top_k,
                             mask=spec.mask)

  @jax.jit
  def speech(state, prompts, key):
    model = runs.eval_model(graphdef, state)
    return multimodal.sample(model, prompts, key, steps=spec.speech_steps,
                             allowed=jnp.asarray(multimodal.allowed_audio(vocab)), stop=EOA,
                             uncond=unconditional(prompts, BOA), mask=spec.mask, **guidance)

  return {"image": image, "text": caption, "speech": speech}


@functools.partial(jax.jit, static_argnames=("graphdef", "levels"))
def _encode_speech(state, audio, *, graphdef, levels):
  return nnx.merge(graphdef, state).encode(audio).indices[..., :levels]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode_speech(state, codes, *, graphdef):
  """Codes (B, F, l) of a codec's first l levels -> waveforms (B, F hop)."""
  codec = nnx.merge(graphdef, state)
  missing = codec.num_levels - codes.shape[-1]  # levels not carried: skipped (-1)
  full = jnp.concatenate([codes, jnp.full((*codes.shape[:2], missing), -1, codes.dtype)], -1)
  return codec.decode(full)[..., 0]


def speech_codes(codec, waves: list[np.ndarray], levels: int, batch_size: int = 32
                 ) -> list[np.ndarray]:
  """Each waveform's codes (frames, levels) by the codec's first `levels` levels; one
  padded shape for all (the codec is causal: padding after a clip changes none of its
  frames)."""
  graphdef, state = nnx.split(codec)
  longest = max(len(w) for w in waves)
  out = []
  for start in range(0, len(waves), batch_size):
    chunk = waves[start:start + batch_size]
    audio = np.zeros((batch_size, longest), np.float32)
    for i, w in enumerate(chunk):
      audio[i, :len(w)] = w
    codes = np.asarray(_encode_speech(state, jnp.asarray(audio), graphdef=graphdef,
                                      levels=levels))
    if np.any(codes < 0):
      raise ValueError("codec: non-finite latents (index -1); refusing a diverged codec")
    out += [codes[i, :audio_codec.num_frames(len(w), codec.hop)] for i, w in enumerate(chunk)]
  return out


def speech_waves(codec, codes: list[np.ndarray], frames: int) -> list[np.ndarray]:
  """Codes (f, l) of each clip -> its waveform, one padded shape of `frames` for all
  (longer if a clip is)."""
  if not codes:
    return []
  graphdef, state = nnx.split(codec)
  frames = max([frames, 1] + [len(c) for c in codes])
  batch = np.full((len(codes), frames, codes[0].shape[-1]), -1, np.int32)  # -1: skipped
  for i, c in enumerate(codes):
    batch[i, :len(c)] = c
  waves = np.asarray(_decode_speech(state, jnp.asarray(batch), graphdef=graphdef))
  return [waves[i, :len(c) * codec.hop] for i, c in enumerate(codes)]


class MultimodalJob(loop.Job):
  postfix = ("loss", "text_loss", "image_loss", "audio_loss")

  def check(self):
    check_config(self.config)

  def load(self, saved: bool = False):
    """The image tokenizer and its tokens (labelled), the text tokenizer, the codec and
    the spoken captions' codes (training and held-out voices), the vocabulary. `saved`:
    a finished run's model only (UnifiedModel): the run's own text tokenizer, and no
    captions spoken (the longest one's frames and the documents' length are the run's
    SPEECH_FILE)."""
    c = self.config
    self.source = TokenSource(c.tokens_dir)
    self.tok, step, ident = runs.load_token_model_of(c.tokenizer_workdir)
    runs.check_tokens_match(self.source.meta, self.tok, step, ident, c.tokenizer_workdir)
    if self.source.meta.get("modality", "image") != "image" or "label" not in self.source[0]:
      raise ValueError(f"tokens_dir: expected labelled image tokens (the built-in digits' "
                       f"export), got {self.source.meta.get('modality', 'image')} tokens"
                       f"{'' if 'label' in self.source[0] else ' without labels'}")
    self.eval_source = TokenSource(c.eval_tokens_dir) if c.eval_tokens_dir else None
    if self.eval_source is not None:
      runs.check_tokens_match(self.eval_source.meta, self.tok, step, ident,
                              c.tokenizer_workdir)
    saved_text = os.path.join(self.workdir, TOKENIZER_FILE)
    self.text = (text.load_tokenizer(saved_text) if saved and os.path.exists(saved_text)
                 else text_tokenizer(c))
    self.captions = paired.caption_table(self.text)
    self.token_shape = tuple(int(n) for n in np.shape(self.source[0]["indices"]))
    self.image_tokens = math.prod(self.token_shape)
    self.codec, self.speech, self.held_out, self.saved_length = None, None, [], None
    audio = {}
    if c.codec_workdir:
      self.load_speech(saved)
      audio = dict(audio_codes=int(self.codec.quantizer.codebook_size),
                   audio_levels=int(c.speech.levels))
    self.vocab = multimodal.Vocabulary(text=self.text.vocab_size,
                                       image=int(self.tok.quantizer.codebook_size), **audio)
    # a saved run's documents held its spoken captions, which were not loaded now
    self.length = self.saved_length or paired.sequence_length(
        self.captions, self.image_tokens, self.speech, int(c.speech.levels))

  def load_speech(self, saved: bool = False):
    """The codec, and every spoken caption (the training voices' and the held-out
    voices') as its codes."""
    c, sp = self.config, self.config.speech
    if runs.kind(runs.load_config_of(c.codec_workdir, ("codec",))) != "codec":
      raise ValueError(f"codec_workdir: expected an audio codec run, got {c.codec_workdir!r}")
    self.codec, _, _ = runs.load_token_model_of(c.codec_workdir)
    if sp.levels > self.codec.num_levels:
      raise ValueError(f"speech.levels: the codec has {self.codec.num_levels} levels, got "
                       f"{sp.levels}")
    saved_speech = os.path.join(self.workdir, SPEECH_FILE)
    if saved and os.path.exists(saved_speech):
      with open(saved_speech) as f:
        saved_file = json.load(f)
      self.speech_frames = int(saved_file["frames"])
      self.saved_length = saved_file.get("sequence_length")  # absent in older runs
      return
    rate, templates = self.codec.sample_rate, tuple(int(t) for t in sp.templates)
    said = spoken.spoken_captions(spoken.caption_voices(sp.train_voices), templates, rate)
    self.speech = paired.speech_table(said, speech_codes(self.codec, [u["audio"] for u in said],
                                                         sp.levels))
    self.held_out = spoken.spoken_captions(spoken.caption_voices(sp.held_out_voices, True),
                                           templates, rate)
    for u, codes in zip(self.held_out, speech_codes(self.codec, [u["audio"] for u in
                                                                 self.held_out], sp.levels)):
      u["codes"] = codes
    self.speech_frames = max(max(len(u) for v in self.speech.values() for u in v),
                             max(len(u["codes"]) for u in self.held_out))

  def init_state(self):
    return init_state(self.config, self.vocab)

  def transform(self):
    c = self.config
    return paired.PairedDocuments(self.vocab, self.captions, self.length, dict(c.train.tasks),
                                  c.train.drop_prompt, dict(c.loss), self.speech)

  def train_data(self, batch_size):
    return paired.paired_dataset(self.source, self.transform(), batch_size=batch_size,
                                 seed=self.config.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count())

  def step_spec(self) -> StepSpec:
    c = self.config
    audio = self.vocab.span("audio")
    return StepSpec(c.train.ema_decay, c.train.grad_accum_steps, self.vocab.span("text"),
                    self.vocab.span("image"), audio, c.model.mask)

  def compile(self, graphdef, shardings):
    fn = functools.partial(train_step, graphdef=graphdef, spec=self.step_spec())
    return {None: loop.jit_step(fn, self.config, shardings, self.mesh)}

  def units(self, batch):
    return {"tokens": batch["ids"].size}

  def abstract_batch(self):
    example = self.transform().random_map(self.source[0], np.random.default_rng(0))
    data = parallel.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((self.config.train.batch_size, *np.shape(v)),
                                    np.asarray(v).dtype, sharding=data)
            for k, v in example.items()}

  def started(self, graphdef, state):
    """The run keeps its text tokenizer; a resumed run's must encode as this one does."""
    path = os.path.join(self.workdir, TOKENIZER_FILE)
    if os.path.exists(path):
      saved = text.load_tokenizer(path)
      if [saved.encode(s).tolist() for s in text.all_captions()] != [
          self.text.encode(s).tolist() for s in text.all_captions()]:
        raise ValueError(f"text tokenizer: {path} encodes the captions differently from the "
                         "one trained now (another `tokenizers` version?); nothing was "
                         "changed")
    elif self.main_process:
      self.text.save(path)
    if self.speech is not None and self.main_process:
      with open(os.path.join(self.workdir, SPEECH_FILE), "w") as f:
        json.dump({"frames": int(self.speech_frames), "levels": int(self.config.speech.levels),
                   "sequence_length": int(self.length)}, f)

  # ------------------------------------------------------------------ prompts

  def caption_prompts(self, labels, begin: int = BOI) -> np.ndarray:
    """`<bos> caption <boi>` (or `<boa>`) of each label's evaluation caption, left-padded."""
    return left_pad([np.concatenate([[BOS], self.vocab.encode(
        "text", self.captions[int(y)][text.EVAL_TEMPLATE]), [begin]]).astype(np.int32)
        for y in np.asarray(labels)])

  def image_prompts(self, indices: np.ndarray) -> np.ndarray:
    """`<bos> <boi> image <eoi>` of each image's tokens."""
    return np.stack([np.concatenate([[BOS], self.vocab.encode("image", i)]).astype(np.int32)
                     for i in indices])

  def speech_prompts(self, codes: list[np.ndarray], then: tuple[int, ...] = ()) -> np.ndarray:
    """`<bos> <boa> speech <eoa>` (then `then`, e.g. `<boi>`) of each clip's codes,
    left-padded."""
    return left_pad([np.concatenate([[BOS], self.vocab.encode("audio", c), then]
                                    ).astype(np.int32) for c in codes])

  def texts_of(self, ids: np.ndarray) -> list[str]:
    out = []
    for row in np.asarray(ids):
      row = row[:np.argmax(row == EOS)] if np.any(row == EOS) else row[row != PAD]
      out.append(self.text.decode(row[row != PAD] - self.vocab.text_offset))
    return out

  def periodic(self, graphdef):
    c, s = self.config, self.config.sample
    tok_graphdef, self.tok_state = nnx.split(self.tok)
    longest = max(len(t) for row in self.captions for t in row)
    speech_steps = self.speech_frames * c.speech.levels + 1 if self.codec is not None else 0
    spec = SampleSpec(self.image_tokens, self.token_shape, longest + 1, s.cfg_scale,
                      s.temperature, s.top_k, c.model.mask, s.steps, s.schedule, speech_steps)
    self.samplers = make_samplers(graphdef, tok_graphdef, self.vocab, spec)
    per_class = max(1, s.num // 10)
    labels = np.repeat(np.arange(10), per_class)

    def samples(state, step):
      _, images = self.samplers["image"](state, self.tok_state, jnp.asarray(
          self.caption_prompts(labels)), jax.random.key(c.seed + step))
      pixels = to_pixels(images)
      rows = [(text.caption(k), pixels[k * per_class:(k + 1) * per_class]) for k in range(10)]
      save_image_grid(self.writer, os.path.join(self.workdir, "images",
                                                f"samples_{step:07d}.png"), step, "samples",
                      rows)

    return [(s.every, samples)]

  # ------------------------------------------------------------------ evaluation

  def in_batches(self, items: list, fn) -> list:
    n = self.config.eval.batch_size
    return [y for start in range(0, len(items), n) for y in fn(items[start:start + n], start)]

  def evaluate(self, graphdef, state):
    c = self.config
    summary = {k: float(v) for k, v in self.last_metrics.items()}
    summary["vocab_size"], summary["sequence_length"] = self.vocab.size, self.length
    image, caption = self.samplers["image"], self.samplers["text"]
    if c.eval.digits_examples:  # text -> image, scored by the digits classifier
      fn = lambda labels, key: image(state, self.tok_state, jnp.asarray(
          self.caption_prompts(labels)), key)[1]
      measured = evaluators.digits_sample_metrics(fn, 10, c.eval.digits_examples,
                                                  c.eval.batch_size, c.seed)
      summary.update({f"text_to_image/{k}": v for k, v in measured.items()})
    examples = {}
    if self.eval_source is not None and c.eval.caption_examples:  # image -> text
      records = [self.eval_source[i] for i in range(min(c.eval.caption_examples,
                                                        len(self.eval_source)))]
      said = self.in_batches(records, lambda batch, start: self.texts_of(caption(
          state, jnp.asarray(self.image_prompts(np.stack([r["indices"] for r in batch]))),
          jax.random.key(c.seed + 5 + start))))
      named = [text.named_digit(t) == int(r["label"]) for t, r in zip(said, records)]
      summary["image_to_text/caption_accuracy"] = float(np.mean(named))
      summary["image_to_text/examples"] = len(records)
      examples["image_to_text"] = [{"label": int(r["label"]), "caption": t}
                                   for t, r in zip(said, records)]
    if self.codec is not None and c.eval.speech_examples:
      self.evaluate_speech(state, summary, examples)
    if self.main_process and examples:
      with open(os.path.join(self.workdir, "captions.json"), "w") as f:
        json.dump(examples, f, indent=1)
    self.writer.write(c.train.steps, {k: v for k, v in summary.items()
                                      if isinstance(v, float) and "/" in k})
    return summary

  def evaluate_speech(self, state, summary, examples):
    """On the held-out voices: speech -> text caption accuracy, speech -> image class
    accuracy; text -> speech: the digit recognised in the generated speech by the model
    itself (speech -> text) and by PocketSphinx (a closed grammar of the captions' words),
    with PocketSphinx's score on the held-out espeak-ng speech and on its codec
    resynthesis as the ceilings."""
    c = self.config
    n = min(c.eval.speech_examples, len(self.held_out))
    held = [self.held_out[i] for i in np.random.default_rng(c.seed + 7).permutation(
        len(self.held_out))[:n]]
    caption = self.samplers["text"]
    heard = lambda codes, seed: self.in_batches(codes, lambda batch, start: self.texts_of(
        caption(state, jnp.asarray(self.speech_prompts(batch)), jax.random.key(seed + start))))
    said = heard([u["codes"] for u in held], c.seed + 9)
    summary["speech_to_text/caption_accuracy"] = float(np.mean(
        [text.named_digit(t) == u["label"] for t, u in zip(said, held)]))
    summary["speech_to_text/examples"] = n
    examples["speech_to_text"] = [{"label": u["label"], "spoken": u["text"], "caption": t}
                                  for t, u in zip(said, held)]
    if c.eval.digits_examples:  # speech -> image: a held-out clip of each label asked for
      by_label = {y: [u for u in self.held_out if u["label"] == y] for y in range(10)}
      rng = np.random.default_rng(c.seed + 8)

      def fn(labels, key):
        clips = [by_label[int(y)][rng.integers(len(by_label[int(y)]))]["codes"]
                 for y in np.asarray(labels)]
        return self.samplers["image"](state, self.tok_state, jnp.asarray(
            self.speech_prompts(clips, (BOI,))), key)[1]

      measured = evaluators.digits_sample_metrics(fn, 10, c.eval.digits_examples,
                                                  c.eval.batch_size, c.seed)
      summary.update({f"speech_to_image/{k}": v for k, v in measured.items()})
    # text -> speech: each digit's evaluation caption, as many times as fits n
    labels = np.arange(max(n // 10, 1) * 10) % 10
    ids = self.in_batches(list(labels), lambda batch, start: list(np.asarray(
        self.samplers["speech"](state, jnp.asarray(self.caption_prompts(batch, BOA)),
                                jax.random.key(c.seed + 13 + start)))))
    made = [multimodal.audio_codes_of(self.vocab, row) for row in ids]
    spoken_back = heard([m if len(m) else np.zeros((1, c.speech.levels), np.int32)
                         for m in made], c.seed + 17)
    summary["text_to_speech/self_accuracy"] = float(np.mean(
        [text.named_digit(t) == y for t, y in zip(spoken_back, labels)]))
    summary["text_to_speech/mean_seconds"] = float(np.mean([len(m) for m in made])
                                                   / self.codec.frame_rate)
    waves = speech_waves(self.codec, made, self.speech_frames)
    record = [{"label": int(y), "model_heard": t} for y, t in zip(labels, spoken_back)]
    if speech_recognition.available():
      words = sorted({w for t in self.held_out for w in speech_recognition.normalize_text(
          t["text"].replace("handwritten", "hand written")) if w not in text.DIGIT_WORDS})
      recognizer = speech_recognition.Recognizer(speech_recognition.phrase_grammar(
          text.DIGIT_WORDS, words))
      rate = self.codec.sample_rate
      names = lambda heard, y: text.DIGIT_WORDS[y] in heard.split()
      found = lambda wave, y: names(recognizer.transcribe(wave, rate), y)
      for r, w in zip(record, waves):
        r["sphinx_heard"] = recognizer.transcribe(w, rate) if len(w) else ""
      summary["text_to_speech/sphinx_accuracy"] = float(np.mean(
          [names(r["sphinx_heard"], r["label"]) for r in record]))
      refs = [u for u in held if u["template"] == text.EVAL_TEMPLATE]
      resynth = speech_waves(self.codec, [u["codes"] for u in refs], self.speech_frames)
      summary["text_to_speech/sphinx_accuracy@espeak"] = float(np.mean(
          [found(u["audio"], u["label"]) for u in refs]))
      summary["text_to_speech/sphinx_accuracy@codec"] = float(np.mean(
          [found(w, u["label"]) for w, u in zip(resynth, refs)]))
    examples["text_to_speech"] = record
    if self.main_process:
      os.makedirs(os.path.join(self.workdir, "audio"), exist_ok=True)
      for y in range(10):  # the first generated clip of each digit
        speech.write_wav(os.path.join(self.workdir, "audio", f"text_to_speech_{y}.wav"),
                         waves[int(np.argmax(labels == y))], self.codec.sample_rate)

  def describe(self, summary):
    parts = [f"loss {summary.get('loss', float('nan')):.4f} (" + ", ".join(
        f"{m} {summary[f'{m}_loss']:.3f}" for m in ("text", "image", "audio")
        if f"{m}_loss" in summary) + " nats/token)"]
    for key, label in (("text_to_image/class_accuracy", "text -> image class accuracy"),
                       ("image_to_text/caption_accuracy", "image -> text caption accuracy"),
                       ("speech_to_text/caption_accuracy", "speech -> text caption accuracy"),
                       ("speech_to_image/class_accuracy", "speech -> image class accuracy"),
                       ("text_to_speech/self_accuracy", "text -> speech heard by the model"),
                       ("text_to_speech/sphinx_accuracy", "by PocketSphinx")):
      if key in summary:
        parts.append(f"{label} {summary[key]:.1%}")
    if "text_to_image/digits_fid" in summary:
      parts.append(f"text -> image digits FID {summary['text_to_image/digits_fid']:.2f}")
    return "multimodal: " + "; ".join(parts)


class UnifiedModel:
  """A trained unified run, every task one call (notebooks, `vqlab sample`):

    m = UnifiedModel("runs/multimodal")
    images = m.text_to_image(["a handwritten seven"] * 4)   # uint8 (4, H, W, C)
    m.image_to_text(images)                                  # ["a handwritten seven", ...]
    waves = m.text_to_speech(["the digit 3"])                # float32 at m.sample_rate
    m.speech_to_text(waves), m.speech_to_image(waves), m.sample_images(8)

  Speech in is any waveform at `rate` (resampled, cut to the speech, loudness-normalised
  as the training captions are); images in are uint8 at the tokenizer's size. Sampling
  follows the run's `sample` settings (guidance scale, temperature, top-k)."""

  def __init__(self, workdir: str, step: int | None = None):
    config = runs.load_config(workdir)
    if runs.kind(config) != "multimodal":
      raise ValueError(f"workdir: expected a unified multimodal run, got a "
                       f"{runs.kind(config)} run in {workdir!r}")
    self.job = job = MultimodalJob(config, workdir)
    job.load(saved=True)
    self.config, graphdef, self.state, self.step = runs.restore(
        workdir, step, init_state=lambda _: job.init_state())
    job.periodic(graphdef)  # the samplers; nothing is written
    self.samplers = job.samplers
    tok_graphdef, _ = nnx.split(job.tok)
    self._encode_images = jax.jit(lambda state, x: nnx.merge(tok_graphdef, state).encode(
        to_unit(x)).indices)
    self.sample_rate = job.codec.sample_rate if job.codec is not None else None
    self._calls = 0

  def _key(self, seed: int | None):
    self._calls += 1
    return jax.random.key(self._calls if seed is None else seed)

  def _prompts(self, captions, begin) -> np.ndarray:
    return left_pad([np.concatenate([[BOS], self.job.vocab.encode(
        "text", self.job.text.encode(c)), [begin]]).astype(np.int32) for c in captions])

  def _speech(self, waves, rate) -> list[np.ndarray]:
    if self.job.codec is None:
      raise ValueError("speech: this run was trained without a codec (codec_workdir)")
    rate = rate or self.sample_rate
    clips = [spoken.prepare(np.asarray(w), rate, self.sample_rate) for w in waves]
    return speech_codes(self.job.codec, clips, int(self.config.speech.levels))

  def _images(self, prompts, seed) -> np.ndarray:
    return to_pixels(self.samplers["image"](self.state, self.job.tok_state,
                                            jnp.asarray(prompts), self._key(seed))[1])

  def text_to_image(self, captions: list[str], seed: int | None = None) -> np.ndarray:
    return self._images(self._prompts(captions, BOI), seed)

  def sample_images(self, count: int, seed: int | None = None) -> np.ndarray:
    """Images drawn with no prompt at all (`<bos> <boi>`)."""
    return self._images(np.tile(np.array([[BOS, BOI]], np.int32), (count, 1)), seed)

  def image_to_text(self, images: np.ndarray, seed: int | None = None) -> list[str]:
    codes = np.asarray(self._encode_images(self.job.tok_state, jnp.asarray(images)))
    codes = codes.reshape(len(codes), -1)
    return self.job.texts_of(self.samplers["text"](
        self.state, jnp.asarray(self.job.image_prompts(codes)), self._key(seed)))

  def text_to_speech(self, captions: list[str], seed: int | None = None
                     ) -> list[np.ndarray]:
    """Waveforms at `sample_rate` (empty where the model ended the speech at once)."""
    if self.job.codec is None:
      raise ValueError("speech: this run was trained without a codec (codec_workdir)")
    ids = np.asarray(self.samplers["speech"](self.state, jnp.asarray(
        self._prompts(captions, BOA)), self._key(seed)))
    made = [multimodal.audio_codes_of(self.job.vocab, row) for row in ids]
    return speech_waves(self.job.codec, made, self.job.speech_frames)

  def speech_to_text(self, waves, rate: int | None = None, seed: int | None = None
                     ) -> list[str]:
    prompts = self.job.speech_prompts(self._speech(waves, rate))
    return self.job.texts_of(self.samplers["text"](self.state, jnp.asarray(prompts),
                                                   self._key(seed)))

  def speech_to_image(self, waves, rate: int | None = None, seed: int | None = None
                      ) -> np.ndarray:
    return self._images(self.job.speech_prompts(self._speech(waves, rate), (BOI,)), seed)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; with `config.dry_run` only compile and report."""
  return loop.train_job(MultimodalJob(config, workdir))
