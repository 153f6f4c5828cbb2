"""Semantic distillation of a codec's first level: the first RVQ level is trained to carry
what is said (SpeechTokenizer, Zhang et al. 2023, https://arxiv.org/abs/2308.16692; Mimi,
Défossez et al. 2024, https://arxiv.org/abs/2410.00037).

`phoneme_ctc`: CTC (Graves et al. 2006, https://www.cs.toronto.edu/~graves/icml_2006.pdf)
of per-frame phoneme logits against the phonemes said in the clip: the teacher is a
phonemizer (espeak-ng, for the built-in speech).

`feature_distillation`: the papers' teacher, a self-supervised speech model's features
(HuBERT / WavLM; vqlab.models.hubert runs converted HuBERT checkpoints), matched by the
first level mapped to the teacher's width, SpeechTokenizer's two losses (sec. 3.2):
"time" (their D-axis loss, the one they train with) compares each feature dimension's
trajectory over the frames, "frame" (T-axis) each frame's vector, plus an L1 term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def phoneme_ctc(logits: Array, labels: Array, label_counts: Array, blank_id: int) -> Array:
  """Mean over clips of CTC(-log p(labels | frame logits)) / max(1, label count).

  logits (B, F, classes) over every frame; labels (B, N) int, the first label_counts[b]
  of row b real (the rest padding).
  """
  b, n = labels.shape
  label_paddings = (jnp.arange(n)[None, :] >= label_counts[:, None]).astype(jnp.float32)
  logit_paddings = jnp.zeros(logits.shape[:2], jnp.float32)
  per_clip = optax.ctc_loss(logits.astype(jnp.float32), logit_paddings, labels,
                            label_paddings, blank_id=blank_id)
  return jnp.mean(per_clip / jnp.maximum(label_counts, 1).astype(jnp.float32))


DISTILL_AXES = ("time", "frame")


def feature_distillation(student: Array, teacher: Array, axis: str = "time") -> Array:
  """SpeechTokenizer's distillation loss of student features (B, F, D) against the
  teacher's (B, F', D), over their first min(F, F') frames (a teacher's conv stack gives
  a frame or so fewer than a codec's padded encoder):

  - "time": -mean over (clip, dimension) of log sigmoid(cos(student[:, d], teacher[:, d])),
    the cosine taken over the frames;
  - "frame": mean |student - teacher| - mean over (clip, frame) of log sigmoid(cos), the
    cosine taken over the dimensions.
  """
  if axis not in DISTILL_AXES:
    raise ValueError(f"axis: expected one of {DISTILL_AXES}, got {axis!r}")
  if student.shape[-1] != teacher.shape[-1] or student.shape[0] != teacher.shape[0]:
    raise ValueError(f"student {student.shape} and teacher {teacher.shape}: expected the same "
                     "batch and feature width")
  n = min(student.shape[1], teacher.shape[1])
  s, t = student[:, :n].astype(jnp.float32), jax.lax.stop_gradient(teacher[:, :n]).astype(
      jnp.float32)
  over = 1 if axis == "time" else 2
  cos = jnp.sum(s * t, over) / jnp.maximum(
      jnp.linalg.norm(s, axis=over) * jnp.linalg.norm(t, axis=over), 1e-8)
  loss = -jnp.mean(jax.nn.log_sigmoid(cos))
  if axis == "frame":
    loss = loss + jnp.mean(jnp.abs(s - t))
  return loss
