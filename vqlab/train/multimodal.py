"""The unified multimodal trainer: one decoder-only transformer over text and image
tokens in one sequence (early fusion: Chameleon, arXiv 2405.09818; Emu3, arXiv
2409.18869), trained on the built-in digits and their captions.

  vqlab train --config configs/vqgan_quickstart.py:digits --workdir runs/digits
  vqlab tokens --workdir runs/digits --out runs/digits/tokens --split train
  vqlab tokens --workdir runs/digits --out runs/digits/test_tokens --split test
  vqlab train --config configs/multimodal_quickstart.py --workdir runs/multimodal \\
    --config.tokenizer_workdir=runs/digits --config.tokens_dir=runs/digits/tokens \\
    --config.eval_tokens_dir=runs/digits/test_tokens

The text tokenizer is a byte-level BPE trained on the captions (vqlab.data.text) and
saved with the run (tokenizer.json); the vocabulary puts text and the image tokenizer's
codes behind offsets with `<boi>` / `<eoi>` (vqlab.models.multimodal). Each training
document is one task, drawn per example (vqlab.data.paired): text -> image (the caption
dropped at `train.drop_prompt`, for classifier-free guidance) or image -> text. The loss
is next-token cross-entropy over every id, weighted per modality (`loss.text`,
`loss.image`).

Evaluation, on held-out digits: text -> image (the fixed caption of each digit, guided)
scored by the digits classifier (class accuracy, digits FID, precision / recall: the
generator's metrics); image -> text: the caption generated for each held-out digit's
tokens names the right digit (caption accuracy).
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
from vqlab.data import paired, text
from vqlab.data.tokens import TokenSource
from vqlab.models import multimodal, sampling
from vqlab.models.multimodal import BOI, BOS, EOS, MASK, PAD
from vqlab.nn import precision
from vqlab.nn.transformer import TransformerShape
from vqlab.train import evaluators, loop, runs
from vqlab.train.common import (accumulated_value_and_grad, ema_update, make_optimizer,
                                save_image_grid, to_pixels)

SHAPE_FIELDS = [f.name for f in dataclasses.fields(TransformerShape)]
TOKENIZER_FILE = "tokenizer.json"


def check_config(config: ml_collections.ConfigDict) -> None:
  loop.check_train_config(config)
  for name in ("tokenizer_workdir", "tokens_dir"):
    if not config[name]:
      raise ValueError(f"{name}: expected a path (a digits tokenizer run and its exported "
                       "tokens; see configs/multimodal_quickstart.py), got ''")
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
  mask: str = "causal"


def train_step(state, batch, *, graphdef, spec: StepSpec):
  """Every target weighted by its modality's loss weight (`batch["weights"]`, 0 at
  `<pad>`). "causal" (Chameleon / Emu3): next-token cross-entropy over the whole document.
  "show-o" (Show-o, arXiv 2408.12528): the image tokens of text -> image documents are
  replaced by `<mask>` at a ratio drawn per document (MaskGIT's cosine schedule) and
  predicted where they stand, under the Show-o attention; everything else that is not an
  image token is predicted next-token."""
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
    masked = (image & (batch["task"][:, None] == paired.TASKS.index("text_to_image"))
              & (jax.random.uniform(k_mask, ids.shape) < ratio))
    inputs["ids"] = jnp.where(masked, MASK, ids)
    next_image = jnp.concatenate([image[:, 1:], jnp.zeros_like(image[:, :1])], 1)
    inputs["next_weights"] = jnp.where(next_image, 0.0, next_weights)
    inputs["self_weights"] = jnp.where(masked, weights, 0.0)
  inputs["targets"] = ids
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
      for name, span in (("text", spec.text_span), ("image", spec.image_span)):
        where = jnp.where(in_span(target, span), w > 0, False).astype(jnp.float32)
        aux[f"{name}_nll_sum"] = aux.get(f"{name}_nll_sum", 0.0) + jnp.sum(nll * where)
        aux[f"{name}_count"] = aux.get(f"{name}_count", 0.0) + jnp.sum(where)
    return loss, aux

  (loss, aux), grads = accumulated_value_and_grad(loss_fn, model, inputs, spec.grad_accum_steps)
  optimizer.update(model, grads)
  ema = ema_update(state["ema"], nnx.state(model, nnx.Param), spec.ema_decay)
  metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.global_norm(grads)}
  for name in ("text", "image"):  # nats per token of each modality
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


def make_samplers(graphdef, tok_graphdef, vocab: multimodal.Vocabulary, spec: SampleSpec):
  """jit functions: text_to_image(state, tok_state, prompts, key) -> (tokens, images in
  [-1, 1]); image_to_text(state, prompts, key) -> generated ids (`<pad>` after `<eos>`)."""
  image_ids = jnp.asarray(multimodal.allowed_ids(vocab, "image"))
  text_ids = jnp.asarray(multimodal.allowed_ids(vocab, "text", specials=(EOS,)))

  @jax.jit
  def text_to_image(state, tok_state, prompts, key):
    model = runs.eval_model(graphdef, state)
    uncond = jnp.tile(jnp.array([[BOS, BOI]], jnp.int32), (prompts.shape[0], 1))
    guided = dict(uncond=uncond if spec.cfg_scale != 1 else None, cfg_scale=spec.cfg_scale,
                  temperature=spec.temperature, top_k=spec.top_k)
    if spec.mask == "show-o":
      tokens = multimodal.sample_image_masked(model, prompts, key, image_tokens=spec.image_tokens,
                                              steps=spec.steps, schedule=spec.schedule, **guided)
    else:
      tokens = multimodal.sample(model, prompts, key, steps=spec.image_tokens,
                                 allowed=image_ids, **guided) - vocab.image_offset
    tok = nnx.merge(tok_graphdef, tok_state)
    return tokens, tok.decode(tokens.reshape(-1, *spec.token_shape))

  @jax.jit
  def image_to_text(state, prompts, key):
    model = runs.eval_model(graphdef, state)
    return multimodal.sample(model, prompts, key, steps=spec.caption_steps, allowed=text_ids,
                             stop=EOS, temperature=spec.temperature, top_k=spec.top_k,
                             mask=spec.mask)

  return text_to_image, image_to_text


class MultimodalJob(loop.Job):
  postfix = ("loss", "text_loss", "image_loss")

  def check(self):
    check_config(self.config)

  def load(self):
    """The image tokenizer and its tokens (labelled), the text tokenizer, the vocabulary."""
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
    self.text = text_tokenizer(c)
    self.vocab = multimodal.Vocabulary(text=self.text.vocab_size,
                                       image=int(self.tok.quantizer.codebook_size))
    self.captions = paired.caption_table(self.text)
    self.token_shape = tuple(int(n) for n in np.shape(self.source[0]["indices"]))
    self.image_tokens = math.prod(self.token_shape)
    self.length = paired.sequence_length(self.vocab, self.captions, self.image_tokens)

  def init_state(self):
    return init_state(self.config, self.vocab)

  def transform(self):
    c = self.config
    return paired.PairedDocuments(self.vocab, self.captions, self.length, dict(c.train.tasks),
                                  c.train.drop_prompt, dict(c.loss))

  def train_data(self, batch_size):
    return paired.paired_dataset(self.source, self.transform(), batch_size=batch_size,
                                 seed=self.config.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count())

  def compile(self, graphdef, shardings):
    c = self.config
    spec = StepSpec(c.train.ema_decay, c.train.grad_accum_steps, self.vocab.span("text"),
                    self.vocab.span("image"), c.model.mask)
    fn = functools.partial(train_step, graphdef=graphdef, spec=spec)
    return {None: loop.jit_step(fn, c, shardings, self.mesh)}

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

  def caption_prompts(self, labels) -> np.ndarray:
    """`<bos> caption <boi>` of each label's evaluation caption, left-padded."""
    return left_pad([np.concatenate([[BOS], self.vocab.encode(
        "text", self.captions[int(y)][text.EVAL_TEMPLATE]), [BOI]]).astype(np.int32)
        for y in np.asarray(labels)])

  def image_prompts(self, indices: np.ndarray) -> np.ndarray:
    """`<bos> <boi> image <eoi>` of each image's tokens."""
    return np.stack([np.concatenate([[BOS], self.vocab.encode("image", i)]).astype(np.int32)
                     for i in indices])

  def periodic(self, graphdef):
    c, s = self.config, self.config.sample
    tok_graphdef, self.tok_state = nnx.split(self.tok)
    longest = max(len(t) for row in self.captions for t in row)
    spec = SampleSpec(self.image_tokens, self.token_shape, longest + 1, s.cfg_scale,
                      s.temperature, s.top_k, c.model.mask, s.steps, s.schedule)
    self.text_to_image, self.image_to_text = make_samplers(graphdef, tok_graphdef,
                                                           self.vocab, spec)
    per_class = max(1, s.num // 10)
    labels = np.repeat(np.arange(10), per_class)

    def samples(state, step):
      _, images = self.text_to_image(state, self.tok_state, jnp.asarray(
          self.caption_prompts(labels)), jax.random.key(c.seed + step))
      pixels = to_pixels(images)
      rows = [(text.caption(k), pixels[k * per_class:(k + 1) * per_class]) for k in range(10)]
      save_image_grid(self.writer, os.path.join(self.workdir, "images",
                                                f"samples_{step:07d}.png"), step, "samples",
                      rows)

    return [(s.every, samples)]

  def captions_of(self, state, indices: np.ndarray, key) -> list[str]:
    ids = np.asarray(self.image_to_text(state, jnp.asarray(self.image_prompts(indices)), key))
    out = []
    for row in ids:
      row = row[:np.argmax(row == EOS)] if np.any(row == EOS) else row[row != PAD]
      out.append(self.text.decode(row[row != PAD] - self.vocab.text_offset))
    return out

  def evaluate(self, graphdef, state):
    c = self.config
    summary = {k: float(v) for k, v in self.last_metrics.items()}
    summary["vocab_size"] = self.vocab.size
    if c.eval.digits_examples:  # text -> image, scored by the digits classifier
      fn = lambda labels, key: self.text_to_image(state, self.tok_state, jnp.asarray(
          self.caption_prompts(labels)), key)[1]
      measured = evaluators.digits_sample_metrics(fn, 10, c.eval.digits_examples,
                                                  c.eval.batch_size, c.seed)
      summary.update({f"text_to_image/{k}": v for k, v in measured.items()})
    if self.eval_source is not None and c.eval.caption_examples:  # image -> text
      n = min(c.eval.caption_examples, len(self.eval_source))
      records = [self.eval_source[i] for i in range(n)]
      named, examples = [], []
      for start in range(0, n, c.eval.batch_size):
        batch = records[start:start + c.eval.batch_size]
        said = self.captions_of(state, np.stack([r["indices"] for r in batch]),
                                jax.random.key(c.seed + 5 + start))
        named += [text.named_digit(s) == int(r["label"]) for s, r in zip(said, batch)]
        examples += [{"label": int(r["label"]), "caption": s} for s, r in zip(said, batch)]
      summary["image_to_text/caption_accuracy"] = float(np.mean(named))
      summary["image_to_text/examples"] = n
      if self.main_process:
        with open(os.path.join(self.workdir, "captions.json"), "w") as f:
          json.dump(examples, f, indent=1)
    self.writer.write(c.train.steps, {k: v for k, v in summary.items()
                                      if isinstance(v, float) and "/" in k})
    return summary

  def describe(self, summary):
    parts = [f"loss {summary.get('loss', float('nan')):.4f} (text "
             f"{summary.get('text_loss', float('nan')):.3f}, image "
             f"{summary.get('image_loss', float('nan')):.3f} nats/token)"]
    if "text_to_image/class_accuracy" in summary:
      parts.append(f"text -> image class accuracy "
                   f"{summary['text_to_image/class_accuracy']:.1%}, digits FID "
                   f"{summary['text_to_image/digits_fid']:.2f}")
    if "image_to_text/caption_accuracy" in summary:
      parts.append(f"image -> text caption accuracy "
                   f"{summary['image_to_text/caption_accuracy']:.1%}")
    return "multimodal: " + "; ".join(parts)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train (or resume) in `workdir`; with `config.dry_run` only compile and report."""
  return loop.train_job(MultimodalJob(config, workdir))
