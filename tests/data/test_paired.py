"""Paired text + image documents: each task's layout decodes back to its caption and
image, the loss weights follow the predicted modality, tasks and prompt drops come at
their rates, and the documents do not depend on the process count."""

import numpy as np
import pytest

from vqlab.data import paired, text
from vqlab.data.pipeline import iterate
from vqlab.models import multimodal


@pytest.fixture(scope="module")
def setup():
  tok = text.train_bpe(text.all_captions(), 300)
  captions = paired.caption_table(tok)
  vocab = multimodal.Vocabulary(text=tok.vocab_size, image=64)
  return tok, captions, vocab


def _source(n=40):
  rng = np.random.default_rng(0)
  return [{"indices": rng.integers(0, 64, (4, 4)).astype(np.int32), "label": np.int32(i % 10)}
          for i in range(n)]


def test_each_task_decodes_to_its_caption_and_image(setup):
  tok, captions, vocab = setup
  length = paired.sequence_length(vocab, captions, 16)
  transform = paired.PairedDocuments(vocab, captions, length, {"text_to_image": 1.0,
                                                               "image_to_text": 1.0},
                                     drop_prompt=0.2, weights={"text": 0.5, "image": 2.0})
  rng = np.random.default_rng(0)
  seen = {}
  for element in _source():
    out = transform.random_map(element, rng)
    ids, weights = out["ids"], out["weights"]
    assert ids.shape == weights.shape == (length,)
    segments = vocab.decode(ids)
    image = [t for m, t in segments if m == "image"]
    np.testing.assert_array_equal(image[0], element["indices"].reshape(-1))
    words = [tok.decode(t) for m, t in segments if m == "text"]
    kind = paired.TASKS[out["task"]]
    order = [m for m, _ in segments]
    if kind == "image_to_text":
      assert order == ["image", "text"]
    else:
      assert order in (["text", "image"], ["image"])  # a dropped prompt: the image alone
    if words:
      assert text.named_digit(words[0]) == element["label"]
    seen[(kind, len(order))] = seen.get((kind, len(order)), 0) + 1
    kinds = vocab.modalities(ids)
    want = np.select([ids == multimodal.PAD, kinds == multimodal.TEXT,
                      kinds == multimodal.IMAGE], [0.0, 0.5, 2.0], 1.0)
    np.testing.assert_array_equal(weights, want)
  assert set(seen) == {("image_to_text", 2), ("text_to_image", 2), ("text_to_image", 1)}


def test_task_and_drop_rates_and_process_split(setup):
  _, captions, vocab = setup
  length = paired.sequence_length(vocab, captions, 16)
  transform = paired.PairedDocuments(vocab, captions, length, {"text_to_image": 3.0,
                                                               "image_to_text": 1.0},
                                     drop_prompt=0.5, weights={})
  rng = np.random.default_rng(1)
  draws = [transform.random_map(e, rng) for e in _source(400)]
  tasks = np.array([d["task"] for d in draws])
  assert 0.68 < np.mean(tasks == 0) < 0.82  # 3 : 1
  dropped = [d["ids"][1] == multimodal.BOI for d, t in zip(draws, tasks) if t == 0]
  assert 0.4 < np.mean(dropped) < 0.6
  one = next(iterate(paired.paired_dataset(_source(), transform, batch_size=8, seed=3),
                     threads=0))
  halves = [next(iterate(paired.paired_dataset(_source(), transform, batch_size=4, seed=3,
                                               process_index=p, process_count=2), threads=0))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["ids"] for h in halves]), one["ids"])


def test_bad_task_settings_are_named(setup):
  _, captions, vocab = setup
  with pytest.raises(ValueError, match="tasks: expected names from"):
    paired.PairedDocuments(vocab, captions, 40, {"text_to_speech": 1.0}, 0.1, {})
  with pytest.raises(ValueError, match="drop_prompt: expected in"):
    paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 1.0}, 1.0, {})
  with pytest.raises(ValueError, match="positive sum"):
    paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 0.0}, 0.1, {})
  unlabelled = paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 1.0}, 0.1, {})
  with pytest.raises(ValueError, match="have no labels"):
    unlabelled.random_map({"indices": np.zeros((4, 4), np.int32)}, np.random.default_rng(0))
  with pytest.raises(ValueError, match="length: the document needs"):
    paired.document(vocab, "text_to_image", captions[7][2], np.zeros(16, np.int32), 10)
