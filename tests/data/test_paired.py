"""Paired text + image + speech documents: each task's layout decodes back to its caption,
image and speech (the spoken caption's template names the same digit), the loss weights
follow the predicted modality, tasks and prompt drops come at their rates, and the
documents do not depend on the process count."""

import numpy as np
import pytest

from vqlab.data import paired, text
from vqlab.data.pipeline import iterate
from vqlab.models import multimodal


@pytest.fixture(scope="module")
def setup():
  tok = text.train_bpe(text.all_captions(), 300)
  captions = paired.caption_table(tok)
  vocab = multimodal.Vocabulary(text=tok.vocab_size, image=64, audio_codes=32, audio_levels=2)
  return tok, captions, vocab


def _speech(templates=(0, 3)):
  """Stand-in codec codes of spoken captions: 2 voices per (label, template), whose codes
  encode (label, template, voice) so a document's speech can be traced to its caption."""
  utterances, codes = [], []
  for label in range(10):
    for t in templates:
      for v in range(2):
        utterances.append({"label": label, "template": t, "voice": v})
        frames = 3 + label % 4 + v
        codes.append(np.stack([np.full(frames, label + 10 * v), np.full(frames, t)], 1))
  return paired.speech_table(utterances, codes)


def _source(n=40):
  rng = np.random.default_rng(0)
  return [{"indices": rng.integers(0, 64, (4, 4)).astype(np.int32), "label": np.int32(i % 10)}
          for i in range(n)]


def test_each_task_decodes_to_its_caption_image_and_speech(setup):
  tok, captions, vocab = setup
  speech = _speech()
  length = paired.sequence_length(captions, 16, speech, levels=2)
  transform = paired.PairedDocuments(vocab, captions, length, dict.fromkeys(paired.TASKS, 1.0),
                                     drop_prompt=0.2, weights={"text": 0.5, "image": 2.0,
                                                               "audio": 3.0}, speech=speech)
  rng = np.random.default_rng(0)
  seen = {}
  for element in _source(400):
    out = transform.random_map(element, rng)
    ids, weights = out["ids"], out["weights"]
    assert ids.shape == weights.shape == (length,)
    segments = vocab.decode(ids)
    kind = paired.TASKS[out["task"]]
    order = [m for m, _ in segments]
    source, goal = paired.TASK_MODALITIES[kind]
    # a dropped prompt leaves the image or speech target alone
    assert order == [source, goal] or (goal != "text" and order == [goal]), (kind, order)
    for m, tokens in segments:
      if m == "image":
        np.testing.assert_array_equal(tokens, element["indices"].reshape(-1))
      elif m == "audio":  # (label + 10 voice, template) per frame
        assert tokens.shape[1] == 2 and np.all(tokens[:, 0] % 10 == element["label"])
        template = int(tokens[0, 1])
        assert template in (0, 3)
        if "text" in order:  # the caption is the one spoken
          said = [tok.decode(t) for mm, t in segments if mm == "text"][0]
          assert said == text.caption(int(element["label"]), template)
      else:
        assert text.named_digit(tok.decode(tokens)) == element["label"]
    seen[(kind, len(order))] = seen.get((kind, len(order)), 0) + 1
    kinds = vocab.modalities(ids)
    want = np.select([ids == multimodal.PAD, kinds == multimodal.TEXT,
                      kinds == multimodal.IMAGE, kinds == multimodal.AUDIO],
                     [0.0, 0.5, 2.0, 3.0], 1.0)
    np.testing.assert_array_equal(weights, want)
  assert set(seen) == {(t, 2) for t in paired.TASKS} | {
      (t, 1) for t in ("text_to_image", "text_to_speech", "speech_to_image")}
  # the longest document fits: the longest speech (7 frames x 2 levels) then the image
  assert length == 2 + (7 * 2 + 2) + (16 + 2)


def test_task_and_drop_rates_and_process_split(setup):
  _, captions, vocab = setup
  length = paired.sequence_length(captions, 16)
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
    paired.PairedDocuments(vocab, captions, 40, {"text_to_sound": 1.0}, 0.1, {})
  with pytest.raises(ValueError, match=r"need spoken captions \(a codec"):
    paired.PairedDocuments(vocab, captions, 40, {"speech_to_text": 1.0}, 0.1, {})
  with pytest.raises(ValueError, match="the caption is the target"):
    paired.document(vocab, "speech_to_text", None, captions[7][2], 40)
  with pytest.raises(ValueError, match="drop_prompt: expected in"):
    paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 1.0}, 1.0, {})
  with pytest.raises(ValueError, match="positive sum"):
    paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 0.0}, 0.1, {})
  unlabelled = paired.PairedDocuments(vocab, captions, 40, {"text_to_image": 1.0}, 0.1, {})
  with pytest.raises(ValueError, match="have no labels"):
    unlabelled.random_map({"indices": np.zeros((4, 4), np.int32)}, np.random.default_rng(0))
  with pytest.raises(ValueError, match="length: the document needs"):
    paired.document(vocab, "text_to_image", captions[7][2], np.zeros(16, np.int32), 10)
  with pytest.raises(ValueError, match="task: expected one of"):
    paired.document(vocab, "image_to_speech", None, np.zeros(16, np.int32), 40)
