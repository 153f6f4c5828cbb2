"""Built-in datasets as tfds builders, and the grain pipeline over them."""

import grain
import numpy as np
import pytest

from vqlab.data import builtin
from vqlab.data.digits import load_mnist_digits
from vqlab.data.pipeline import (ProcessRows, RandomCropFlip, image_dataset, iterate,
                                  resize_square, token_dataset)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_digits_builder_holds_every_real_digit_once(data_dir):
  train = builtin.load("vqlab_digits", data_dir, "train")
  test = builtin.load("vqlab_digits", data_dir, "test")
  assert (len(train), len(test)) == (4500, 500)
  images, labels = load_mnist_digits()
  seen = {}
  for source in (train, test):
    for i in range(0, len(source), 97):  # a spread of records, checked pixel for pixel
      record = source[i]
      match = np.flatnonzero((images == record["image"]).all(axis=(1, 2, 3)))
      assert len(match) >= 1 and labels[match[0]] == record["label"]
      seen[tuple(match)] = True
  assert len(seen) > 50


def test_photos_builder_keeps_test_photos_out_of_training(data_dir):
  train = builtin.load("vqlab_photos", data_dir, "train")
  test = builtin.load("vqlab_photos", data_dir, "test")
  names = lambda s: {s[i]["name"].decode() if isinstance(s[i]["name"], bytes) else s[i]["name"]
                     for i in range(len(s))}
  assert names(test) == {"skimage/coffee", "matplotlib/grace_hopper.jpg"}
  assert not names(train) & names(test) and len(train) == 8
  photo = test[0]["image"]
  assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[-1] == 3
  assert min(photo.shape[:2]) >= 256


def test_pipeline_is_deterministic_and_resumes_from_its_state(data_dir):
  source = builtin.load("vqlab_photos", data_dir, "train")
  ds = image_dataset(source, batch_size=4, image_size=32, seed=3, min_crop=32, max_crop=256,
                     flip=True)
  it = iter(ds.to_iter_dataset())
  first = [next(it)["image"] for _ in range(3)]
  state = it.get_state()
  after = [next(it)["image"] for _ in range(2)]
  assert first[0].shape == (4, 32, 32, 3) and first[0].dtype == np.uint8
  again = iter(ds.to_iter_dataset())
  np.testing.assert_array_equal(next(again)["image"], first[0])
  resumed = iter(ds.to_iter_dataset())
  resumed.set_state(state)
  for want in after:
    np.testing.assert_array_equal(next(resumed)["image"], want)


def test_processes_split_the_single_process_global_batch(data_dir):
  # shuffled, randomly cropped and flipped: process p holds rows 4p .. 4p + 3
  source = builtin.load("vqlab_digits", data_dir, "test")
  kw = dict(image_size=24, seed=3, min_crop=20, max_crop=28, flip=True)
  whole = iter(image_dataset(source, batch_size=8, **kw))
  parts = [iter(image_dataset(source, batch_size=4, process_index=p, process_count=2, **kw))
           for p in (0, 1)]
  for _ in range(3):
    want = next(whole)["image"]
    for p, it in enumerate(parts):
      np.testing.assert_array_equal(next(it)["image"], want[4 * p:4 * p + 4])
  tokens = [{"indices": np.full((2, 2), i, np.int32), "label": np.int32(i % 3)} for i in range(20)]
  whole = next(iter(token_dataset(tokens, batch_size=6, seed=1)))
  for p in (0, 1):
    part = next(iter(token_dataset(tokens, batch_size=3, seed=1, process_index=p,
                                   process_count=2)))
    np.testing.assert_array_equal(part["tokens"], whole["tokens"][3 * p:3 * p + 3])
  # a finite stream: the last, partial global batch is split the same way
  rows = [ProcessRows(grain.MapDataset.range(10), 2, p, 2) for p in (0, 1)]
  assert [[r[i] for i in range(len(r))] for r in rows] == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7]]


def test_crop_arithmetic_and_bad_input():
  rng = np.random.default_rng(0)
  image = np.arange(64 * 80 * 3, dtype=np.uint32).reshape(64, 80, 3).astype(np.uint8)
  out = RandomCropFlip(16, 16, 16, flip=False).random_map({"image": image}, rng)["image"]
  # a plain crop: some 16x16 window of the image, pixel for pixel
  windows = np.lib.stride_tricks.sliding_window_view(image, (16, 16, 3))[..., 0, :, :, :]
  assert (windows == out).all(axis=(-3, -2, -1)).any()
  with pytest.raises(ValueError, match="min_crop"):
    RandomCropFlip(16, 32, 20, flip=False)
  with pytest.raises(ValueError, match="name"):
    builtin.load("imagenet_mini", "/tmp", "train")


def test_an_image_under_min_crop_gives_its_largest_square_scaled_up():
  # ImageNet holds images under 256 px: a 256..512 crop of one must not stop the run
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
  crop = RandomCropFlip(32, 256, 512, flip=False)
  got = {crop.random_map({"image": image}, np.random.default_rng(s))["image"].tobytes()
         for s in range(40)}
  want = {resize_square(np.ascontiguousarray(image[:, x:x + 20]), 32).tobytes()
          for x in range(11)}
  assert got <= want and len(got) > 3  # every crop one of the 11 squares, scaled to 32


def test_jpeg_photos_are_imagenet_shaped(data_dir):
  train = builtin.load("vqlab_jpeg_photos", data_dir, "train")
  val = builtin.load("vqlab_jpeg_photos", data_dir, "validation")
  assert (len(train), len(val)) == (640, 64)
  records = [train[i] for i in range(640)]
  assert all(r["image"].dtype == np.uint8 and r["image"].shape[2] == 3 for r in records)
  shapes = [r["image"].shape[:2] for r in records]
  rng = np.random.default_rng(0)  # the builder's size generator of the train split
  assert sorted(shapes) == sorted(builtin.imagenet_like_size(rng) for _ in range(640))
  flickr = sum(s in ((375, 500), (500, 375)) for s in shapes) / 640
  small = sum(min(s) < 256 for s in shapes) / 640
  assert 0.6 < flickr < 0.8 and 0.05 < small < 0.3  # 0.7 drawn; some under 256 px
  assert np.bincount([r["label"] for r in records]).tolist() == [80] * 8
  assert {int(val[i]["label"]) for i in range(64)} == {0, 1}  # the two test photos


def test_batches_resume_with_other_worker_counts(data_dir):
  source = builtin.load("vqlab_jpeg_photos", data_dir, "train")
  ds = image_dataset(source, batch_size=4, image_size=64, seed=1, min_crop=256, max_crop=512,
                     flip=True)
  threads = iterate(ds, threads=2, prefetch=8)
  want = [next(threads)["image"] for _ in range(5)]
  assert want[0].shape == (4, 64, 64, 3)
  with pytest.raises(ValueError, match="workers"):
    iterate(ds, workers=-1)
  procs = iterate(ds, threads=1, prefetch=4, workers=2)
  try:
    for w in want[:3]:  # the same stream from two worker processes
      np.testing.assert_array_equal(next(procs)["image"], w)
    state = procs.get_state()
    assert state == {"next_index": 3}
  finally:
    procs.close()
  resumed = iterate(ds, threads=0)  # a run resumed with threads instead of workers
  resumed.set_state(state)
  for w in want[3:]:
    np.testing.assert_array_equal(next(resumed)["image"], w)
  with pytest.raises(ValueError, match="next_index"):
    resumed.set_state({"workers_state": {}})


def test_any_prepared_tfds_dataset_loads_by_name(tmp_path):
  """A tfds dataset that is not built in (here one defined by the test, registered under
  its name like cifar10) loads once prepared in the data dir, and not before."""
  import tensorflow_datasets as tfds

  class VqlabTestSquares(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"image": tfds.features.Image(shape=(8, 8, 1))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(5):
        yield i, {"image": builtin._png(np.full((8, 8), 40 * i, np.uint8))}

  data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    builtin.load("vqlab_test_squares", data_dir, "train")
  VqlabTestSquares(data_dir=data_dir, file_format="array_record").download_and_prepare()
  source = builtin.load("vqlab_test_squares", data_dir, "train")
  assert len(source) == 5
  assert sorted(int(source[i]["image"][0, 0, 0]) for i in range(5)) == [0, 40, 80, 120, 160]
