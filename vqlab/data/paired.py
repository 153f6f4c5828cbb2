"""Paired sequences for the unified model, made on the fly from a digits tokenizer's
exported tokens (vqlab.data.tokens), the digits' captions (text.py) and, with a codec,
the captions spoken by espeak-ng and coded by it (spoken.py).

Each example becomes one task's document over the unified vocabulary
(vqlab.models.multimodal), `<bos> prompt target <eos>`:
- text -> image: `<bos> caption <boi> image <eoi> <eos>`;
- image -> text: `<bos> <boi> image <eoi> caption <eos>`;
- text -> speech: `<bos> caption <boa> speech <eoa> <eos>`;
- speech -> text: `<bos> <boa> speech <eoa> caption <eos>`;
- speech -> image: `<bos> <boa> speech <eoa> <boi> image <eoi> <eos>`.
Where the target is an image or speech, the prompt is left out with probability
`drop_prompt` (`<bos> <boi> image <eoi> <eos>`): the unconditional model that
classifier-free guidance contrasts with (Chameleon / Emu3 drop the prompt the same way).
Captions are drawn over all templates (speech: over the spoken templates and voices), so
a digit is named in words and numerals. Every position gets the loss weight of the
modality of the id it predicts (specials 1, `<pad>` 0): the model learns every token of
the sequence, as Chameleon does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from vqlab.data import text
from vqlab.data.pipeline import ProcessRows, check_batching
from vqlab.models import multimodal

# task -> (the prompt's modality, the target's)
TASK_MODALITIES = {"text_to_image": ("text", "image"), "image_to_text": ("image", "text"),
                   "text_to_speech": ("text", "audio"), "speech_to_text": ("audio", "text"),
                   "speech_to_image": ("audio", "image")}
TASKS = tuple(TASK_MODALITIES)
SPEECH_TASKS = tuple(t for t, m in TASK_MODALITIES.items() if "audio" in m)


def caption_table(tokenizer: text.TextTokenizer) -> list[list[np.ndarray]]:
  """[label][template] -> the caption's text ids."""
  return [[tokenizer.encode(text.caption(label, t)) for t in range(len(text.TEMPLATES))]
          for label in range(10)]


def document(vocab: multimodal.Vocabulary, task: str, prompt, target, length: int
             ) -> np.ndarray:
  """One task's padded document from its prompt's tokens (None: the prompt dropped) and
  its target's: caption ids, image codes, or speech codes (frames, levels)."""
  if task not in TASK_MODALITIES:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  source, goal = TASK_MODALITIES[task]
  if prompt is None and goal == "text":
    raise ValueError(f"{task}: the caption is the target; the prompt cannot be dropped")
  segments = ([] if prompt is None else [(source, prompt)]) + [(goal, target)]
  return vocab.document(segments, length)


def loss_weights(vocab: multimodal.Vocabulary, ids: np.ndarray,
                 weights: Mapping[str, float]) -> np.ndarray:
  """Per id: the weight of its modality (`weights["text"]`, `["image"]`, ...), 1 for the
  specials, 0 for `<pad>`."""
  kinds = vocab.modalities(ids)
  table = np.array([1.0] + [weights.get(m, 1.0) for m in multimodal.MODALITIES], np.float32)
  return np.where(ids == multimodal.PAD, 0.0, table[kinds]).astype(np.float32)


def sequence_length(captions: list[list[np.ndarray]], image_tokens: int,
                    speech: dict | None = None, levels: int = 1) -> int:
  """The longest document any task makes: `<bos>`, the longest prompt and target (each
  image or speech span with its brackets), `<eos>`."""
  sizes = {"text": max(len(c) for row in captions for c in row), "image": image_tokens + 2}
  if speech:
    sizes["audio"] = max(len(u) for voices in speech.values() for u in voices) * levels + 2
  return 2 + max(sizes[a] + sizes[b] for a, b in TASK_MODALITIES.values()
                 if a in sizes and b in sizes)


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


def speech_table(utterances: list[dict], codes: list[np.ndarray]) -> dict:
  """{(label, template): [speech codes (frames, levels) of each voice]} of spoken
  captions (vqlab.data.spoken) and their codes, in the utterances' order."""
  table = {}
  for u, c in zip(utterances, codes):
    table.setdefault((int(u["label"]), int(u["template"])), []).append(np.asarray(c))
  return table


class PairedDocuments(grain.transforms.RandomMap):
  """{"indices", "label"} -> {"ids": (length,), "weights": (length,), "task": int32,
  "label": int32}. `speech` (`speech_table`): the spoken captions' codes, needed by the
  speech tasks; their caption is the spoken one."""

  def __init__(self, vocab: multimodal.Vocabulary, captions: list[list[np.ndarray]],
               length: int, task_probs: Mapping[str, float], drop_prompt: float,
               weights: Mapping[str, float], speech: dict | None = None):
    self.vocab, self.captions, self.length = vocab, captions, length
    self.probs, self.drop_prompt = task_probabilities(task_probs, drop_prompt), drop_prompt
    self.weights, self.speech = dict(weights), speech or {}
    wanted = [t for t, p in zip(TASKS, self.probs) if p > 0 and t in SPEECH_TASKS]
    if wanted and not self.speech:
      raise ValueError(f"tasks: {wanted} need spoken captions (a codec: codec_workdir)")
    if self.speech and vocab.audio_codes == 0:
      raise ValueError("speech: the vocabulary has no audio tokens")
    self.spoken = {label: sorted(t for y, t in self.speech if y == label)
                   for label in range(10)}
    if self.speech and not all(self.spoken.values()):
      raise ValueError("speech: expected spoken captions of every digit")

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if "label" not in element:
      raise ValueError("paired data: the exported tokens have no labels (export a labelled "
                       "dataset, e.g. the built-in digits)")
    task = TASKS[int(rng.choice(len(TASKS), p=self.probs))]
    label = int(element["label"])
    source, goal = TASK_MODALITIES[task]
    if "audio" in (source, goal):  # a spoken caption: its template, one of its voices
      template = self.spoken[label][int(rng.integers(len(self.spoken[label])))]
      voices = self.speech[(label, template)]
      tokens = {"audio": voices[int(rng.integers(len(voices)))]}
    else:
      template, tokens = int(rng.integers(len(text.TEMPLATES))), {}
    tokens.update(text=self.captions[label][template], image=element["indices"])
    prompt = tokens[source]
    if goal != "text" and rng.random() < self.drop_prompt:
      prompt = None
    ids = document(self.vocab, task, prompt, tokens[goal], self.length)
    return {"ids": ids, "weights": loss_weights(self.vocab, ids, self.weights),
            "task": np.int32(TASKS.index(task)), "label": np.int32(label)}


def paired_dataset(source, transform: PairedDocuments, *, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Shuffled, repeated batches of paired documents from exported tokens."""
  check_batching(batch_size, process_index, process_count)
  # drawn per global element, so the documents do not depend on the process count
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ProcessRows(ds.random_map(transform, seed=seed), batch_size, process_index,
                   process_count)
  return ds.batch(batch_size, drop_remainder=True)
