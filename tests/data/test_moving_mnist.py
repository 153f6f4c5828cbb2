"""Moving MNIST from the built-in digits: the motion (straight lines, constant speed,
bounces inside the canvas), determinism, the tfds builder's splits, and the clip pipeline."""

import numpy as np
import pytest

from vqlab.data import builtin
from vqlab.data.digits import load_mnist_digits, split_indices
from vqlab.data.moving_mnist import moving_mnist, trajectories
from vqlab.data.pipeline import video_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_trajectories_move_at_constant_speed_and_bounce_inside():
  rng = np.random.default_rng(0)
  for _ in range(20):
    path = trajectories(rng, 40, 36, 3.6)
    assert path.min() >= 0 and path.max() <= 36
    steps = np.abs(np.diff(path, axis=0))
    # per axis |step| = 3.6 |direction| (rounded positions: +-1), less only at a bounce
    speeds = np.hypot(*np.diff(path, axis=0).T)
    assert np.median(speeds) == pytest.approx(3.6, abs=0.8)
    assert steps.max() <= 5


def test_clips_are_the_digits_moving_and_deterministic():
  images, labels = load_mnist_digits(pad_to=28)
  digits = images[:50, ..., 0]
  clips, chosen = moving_mnist(digits, labels[:50], 6, seed=3)
  again, _ = moving_mnist(digits, labels[:50], 6, seed=3)
  other, _ = moving_mnist(digits, labels[:50], 6, seed=4)
  assert clips.shape == (6, 20, 64, 64, 1) and clips.dtype == np.uint8 and chosen.shape == (6, 2)
  np.testing.assert_array_equal(clips, again)
  assert not np.array_equal(clips, other)
  assert set(chosen.ravel()) <= set(labels[:50])
  # the brightest pixel of every frame is a digit's: digits are drawn, never blurred
  assert clips.max(axis=(2, 3, 4)).min() >= digits.max(axis=(1, 2)).min()
  # each frame holds about two digits' ink (overlaps take the brighter pixel: at most 2x)
  ink = clips.astype(np.float64).sum(axis=(2, 3, 4))
  one_digit = digits.astype(np.float64).sum(axis=(1, 2))
  assert ink.min() >= one_digit.min() and ink.max() <= 2 * one_digit.max()
  with pytest.raises(ValueError, match="size: expected >= 28"):
    moving_mnist(digits, labels[:50], 1, 0, size=20)


def test_builder_splits_use_their_own_digits(data_dir):
  train = builtin.load("vqlab_moving_mnist", data_dir, "train")
  test = builtin.load("vqlab_moving_mnist", data_dir, "test")
  assert (len(train), len(test)) == (2000, 256)
  record = test[0]
  assert record["video"].shape == (20, 64, 64, 1) and record["video"].dtype == np.uint8
  # the test clips are those made of the test digits (tfds stores them shuffled)
  images, labels = load_mnist_digits(pad_to=28)
  rows = split_indices(5000, builtin.DIGITS_TEST_SIZE)[1]
  clips, chosen = moving_mnist(images[rows, ..., 0], labels[rows], 256, seed=1)
  made = {c.tobytes(): i for i, c in enumerate(clips)}
  found = [made.get(test[i]["video"].tobytes()) for i in range(len(test))]
  assert sorted(found) == list(range(256))
  np.testing.assert_array_equal(record["digits"], chosen[found[0]])


def test_clip_pipeline_crops_in_time_and_resizes(data_dir):
  source = builtin.load("vqlab_moving_mnist", data_dir, "test")
  ds = video_dataset(source, batch_size=4, num_frames=9, image_size=32, seed=0, shuffle=False,
                     num_epochs=1, keys=("video", "digits"))
  batch = next(iter(ds))
  assert batch["video"].shape == (4, 9, 32, 32, 1) and batch["video"].dtype == np.uint8
  full = video_dataset(source, batch_size=4, num_frames=20, image_size=64, seed=0,
                       shuffle=False, num_epochs=1)
  np.testing.assert_array_equal(next(iter(full))["video"][0], source[0]["video"])
  # a 9-frame crop is 9 consecutive frames of its clip, area-downsampled 2x
  clip = source[0]["video"].astype(np.float64)
  pooled = clip.reshape(20, 32, 2, 32, 2, 1).mean(axis=(2, 4))
  got = batch["video"][0].astype(np.float64)
  errors = [np.abs(pooled[s:s + 9] - got).max() for s in range(12)]
  assert min(errors) <= 1.0, errors
  again = next(iter(video_dataset(source, batch_size=4, num_frames=9, image_size=32, seed=0,
                                  shuffle=False, num_epochs=1)))
  np.testing.assert_array_equal(again["video"], batch["video"])
  with pytest.raises(ValueError, match="expected >= num_frames=30 frames"):
    next(iter(video_dataset(source, batch_size=1, num_frames=30, image_size=64, seed=0)))
