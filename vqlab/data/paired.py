"""Paired text + image sequences for the unified model, made on the fly from a digits
tokenizer's exported tokens (vqlab.data.tokens) and the digits' captions (text.py).

Each example becomes one task's document over the unified vocabulary
(vqlab.models.multimodal):
- text -> image: `<bos> caption <boi> image <eoi> <eos>`; with probability
  `drop_prompt` the caption is left out (`<bos> <boi> image <eoi> <eos>`), which trains
  the unconditional model classifier-free guidance contrasts with (Chameleon / Emu3 drop
  the prompt the same way);
- image -> text: `<bos> <boi> image <eoi> caption <eos>`.
Captions are drawn over all templates, so a digit is named in words and numerals.
Every position gets the loss weight of the modality of the id it predicts (specials 1,
`<pad>` 0): the model learns every token of the sequence, as Chameleon does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from vqlab.data import text
from vqlab.data.pipeline import ProcessRows, check_batching
from vqlab.models import multimodal

TASKS = ("text_to_image", "image_to_text")


def caption_table(tokenizer: text.TextTokenizer) -> list[list[np.ndarray]]:
  """[label][template] -> the caption's text ids."""
  return [[tokenizer.encode(text.caption(label, t)) for t in range(len(text.TEMPLATES))]
          for label in range(10)]


def document(vocab: multimodal.Vocabulary, task: str, caption_ids: np.ndarray | None,
             image_tokens: np.ndarray, length: int) -> np.ndarray:
  """One task's padded document (`caption_ids` None: the prompt dropped)."""
  caption = [] if caption_ids is None else [("text", caption_ids)]
  image = [("image", image_tokens)]
  if task == "text_to_image":
    return vocab.document(caption + image, length)
  if task == "image_to_text":
    if caption_ids is None:
      raise ValueError("image_to_text: the caption is the target; it cannot be dropped")
    return vocab.document(image + caption, length)
  raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def loss_weights(vocab: multimodal.Vocabulary, ids: np.ndarray,
                 weights: Mapping[str, float]) -> np.ndarray:
  """Per id: the weight of its modality (`weights["text"]`, `["image"]`, ...), 1 for the
  specials, 0 for `<pad>`."""
  kinds = vocab.modalities(ids)
  table = np.array([1.0] + [weights.get(m, 1.0) for m in multimodal.MODALITIES], np.float32)
  return np.where(ids == multimodal.PAD, 0.0, table[kinds]).astype(np.float32)


def sequence_length(vocab: multimodal.Vocabulary, captions: list[list[np.ndarray]],
                    image_tokens: int) -> int:
  """The longest document any task makes: `<bos>`, the longest caption, the bracketed
  image, `<eos>`."""
  del vocab
  return 1 + max(len(c) for row in captions for c in row) + image_tokens + 2 + 1


def task_probabilities(task_probs: Mapping[str, float], drop_prompt: float) -> np.ndarray:
  """The probability of each of TASKS from weights by name; checks the prompt drop rate."""
  unknown = set(task_probs) - set(TASKS)
  if unknown:
    raise ValueError(f"tasks: expected names from {TASKS}, got {sorted(unknown)}")
  probs = np.array([task_probs.get(t, 0.0) for t in TASKS], np.float64)
  if np.any(probs < 0) or probs.sum() <= 0:
    raise ValueError(f"tasks: expected weights >= 0 with a positive sum, got {dict(task_probs)}")
  if not 0 <= drop_prompt < 1:
    raise ValueError(f"drop_prompt: expected in [0, 1), got {drop_prompt}")
  return probs / probs.sum()


class PairedDocuments(grain.transforms.RandomMap):
  """{"indices", "label"} -> {"ids": (length,), "weights": (length,), "task": int32}."""

  def __init__(self, vocab: multimodal.Vocabulary, captions: list[list[np.ndarray]],
               length: int, task_probs: Mapping[str, float], drop_prompt: float,
               weights: Mapping[str, float]):
    self.vocab, self.captions, self.length = vocab, captions, length
    self.probs, self.drop_prompt = task_probabilities(task_probs, drop_prompt), drop_prompt
    self.weights = dict(weights)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if "label" not in element:
      raise ValueError("paired data: the exported tokens have no labels (export a labelled "
                       "dataset, e.g. the built-in digits)")
    task = int(rng.choice(len(TASKS), p=self.probs))
    label = int(element["label"])
    caption = self.captions[label][int(rng.integers(len(text.TEMPLATES)))]
    if TASKS[task] == "text_to_image" and rng.random() < self.drop_prompt:
      caption = None
    ids = document(self.vocab, TASKS[task], caption, element["indices"], self.length)
    return {"ids": ids, "weights": loss_weights(self.vocab, ids, self.weights),
            "task": np.int32(task), "label": np.int32(label)}


def paired_dataset(source, transform: PairedDocuments, *, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Shuffled, repeated batches of paired documents from exported tokens."""
  check_batching(batch_size, process_index, process_count)
  # drawn per global element, so the documents do not depend on the process count
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ProcessRows(ds.random_map(transform, seed=seed), batch_size, process_index,
                   process_count)
  return ds.batch(batch_size, drop_remainder=True)
