"""The phoneme probe separates an informative token stream from a random one."""

import numpy as np
import pytest

from vqlab.eval import probe


def _speech_like(rng, utterances=40, frames=120, num_labels=12):
  """Label runs of 2-8 frames (phonemes), per utterance."""
  out = []
  for _ in range(utterances):
    lab = np.repeat(rng.integers(0, num_labels, frames), rng.integers(2, 9, frames))[:frames]
    out.append(lab.astype(np.int32))
  return out


def test_informative_tokens_beat_random_ones():
  rng = np.random.default_rng(0)
  num_labels, vocab = 12, 32
  train, held = _speech_like(rng), _speech_like(rng, utterances=10)
  # tokens: each label split over codes (several codes per phoneme), 10% of frames noise
  table = rng.permutation(vocab) % num_labels  # code -> label
  codes_of = [np.flatnonzero(table == y) for y in range(num_labels)]

  def informative(labels):
    t = np.array([rng.choice(codes_of[y]) for y in labels])
    noise = rng.random(len(t)) < 0.1
    return np.where(noise, rng.integers(0, vocab, len(t)), t)

  def random(labels):
    return rng.integers(0, vocab, len(labels))

  good = probe.phone_error_rate([informative(l) for l in train], train,
                                [informative(l) for l in held], held, vocab, num_labels)
  bad = probe.phone_error_rate([random(l) for l in train], train,
                               [random(l) for l in held], held, vocab, num_labels)
  prior = np.bincount(np.concatenate(held), minlength=num_labels).max() / sum(map(len, held))
  assert good < 0.15  # the noise frames are mostly recovered from their neighbours
  assert bad > 1 - prior - 0.05  # no better than naming the commonest phoneme


def test_context_reads_neighbouring_frames():
  # the token says the phoneme one frame late: a probe with context recovers it exactly
  rng = np.random.default_rng(1)
  train, held = _speech_like(rng), _speech_like(rng, utterances=10)
  late = lambda labels: np.concatenate([[0], labels[:-1]])
  wide = probe.phone_error_rate([late(l) for l in train], train, [late(l) for l in held],
                                held, 12, 12, context=1)
  assert wide < 0.02


def test_mismatched_inputs_are_refused():
  with pytest.raises(ValueError, match="one label per frame"):
    probe.fit([np.zeros(5, int)], [np.zeros(4, int)], 3, 2)
  with pytest.raises(ValueError, match=r"tokens in \[0, 3\)"):
    probe.fit([np.full(4, 7)], [np.zeros(4, int)], 3, 2)
