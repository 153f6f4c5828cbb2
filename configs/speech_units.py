"""Discrete speech units from features by k-means (HuBERT's first-iteration targets, Hsu et
al. 2021, https://arxiv.org/abs/2106.07447; GSLM's de-duplicated units, Lakhotia et al.
2021, https://arxiv.org/abs/2102.01192), scored against espeak-ng's phonemes.

  vqlab units --config configs/speech_units.py --workdir runs/units
  vqlab units --config configs/speech_units.py:logmel --workdir runs/units_logmel

Features of the built-in espeak-ng speech (train split) -> k-means -> a unit per frame;
phone purity, cluster purity and PNMI on the held-out synth_test split (and, as the
floor, for units drawn at random); de-duplicated units exported as token records. About a
minute on 2 CPU cores. Variants: `:logmel` (log-mel instead of MFCC), `:hubert` (a converted
HuBERT's layer 6, GSLM's units: `--config.units.teacher=hubert_base.npz`), `runlocal`.
"""

import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, known=("logmel", "hubert"))
  c = ml_collections.ConfigDict()
  c.seed = 0  # k-means++ seeds and the random-units floor
  c.units = ml_collections.ConfigDict(dict(
      # "mfcc": 13 coefficients + deltas + delta-deltas (HuBERT's 39); "logmel": n_mels
      features="mfcc", n_mels=40, n_fft=400, hop=160,  # 25 ms windows, 100 frames/s
      # features="hubert": a converted HuBERT (`vqlab convert hubert`), its layer (GSLM:
      # base's 6th) at its own 50 frames/s; normalise input as the large models expect
      teacher="", teacher_layer=6, teacher_normalize=False,
      num_units=100,  # HuBERT's first iteration: 100 clusters of MFCC
      kmeans_iters=20, max_train_frames=200_000,  # k-means on at most this many frames
      export_length=64,  # de-duplicated units per exported record (the tail is dropped)
      train_split="train", eval_split="synth_test",
      examples=0))  # utterances of each split (0: all)
  c.data = ml_collections.ConfigDict(dict(
      name="vqlab_speech", data_dir="~/tensorflow_datasets", key="audio", source_rate=0,
      sample_rate=16000, normalize=True, target_dbfs=-20.0))
  if "logmel" in args:
    c.units.features = "logmel"
  if "hubert" in args:  # with --config.units.teacher=hubert_base.npz
    c.units.features = "hubert"
  if "runlocal" in args:
    c.units.update(num_units=16, kmeans_iters=3, max_train_frames=4000, export_length=8)
    c.units.examples = 24
  return c
