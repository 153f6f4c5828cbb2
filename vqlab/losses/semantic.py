"""Semantic distillation of a codec's first level: the first RVQ level is trained to carry
what is said (SpeechTokenizer, Zhang et al. 2023, https://arxiv.org/abs/2308.16692; Mimi,
Défossez et al. 2024, https://arxiv.org/abs/2410.00037).

`phoneme_ctc`: CTC (Graves et al. 2006, https://www.cs.toronto.edu/~graves/icml_2006.pdf)
of per-frame phoneme logits against the phonemes said in the clip: the teacher is a
phonemizer (espeak-ng, for the built-in speech) where the papers use HuBERT / WavLM
features, which cannot be downloaded here.
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
