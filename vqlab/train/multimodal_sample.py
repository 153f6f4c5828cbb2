"""`vqlab sample`: any task of a trained unified model (vqlab.train.multimodal), from the
command line.

  vqlab sample --workdir runs/multimodal --task text_to_image --prompt "a handwritten seven"
  vqlab sample --workdir runs/multimodal --task image_to_text --prompt digit.png
  vqlab sample --workdir runs/multimodal --task text_to_speech --prompt "the digit 3" --count 2
  vqlab sample --workdir runs/multimodal --task speech_to_text --prompt said.wav
  vqlab sample --workdir runs/multimodal --task speech_to_image --prompt said.wav
  vqlab sample --workdir runs/multimodal --task image --count 10   # no prompt at all

Text prompts are typed; image prompts are image files (resized to the tokenizer's size,
grey or colour as it was trained), speech prompts wav files. Images and speech are written
under --out (default WORKDIR/samples), text printed.
"""

from __future__ import annotations

import os

import numpy as np

from vqlab.data import paired, speech
from vqlab.train.common import run_app

TASKS = paired.TASKS + ("image",)


def _image(path: str, size: int, channels: int) -> np.ndarray:
  from PIL import Image
  image = Image.open(path).convert("L" if channels == 1 else "RGB").resize((size, size))
  return np.asarray(image, np.uint8).reshape(size, size, channels)


def run(workdir: str, task: str, prompt: str, count: int = 1, out: str | None = None,
        seed: int = 0) -> list[str]:
  """The task's outputs: the captions, or the paths of the images / wav files written."""
  from vqlab.train.multimodal import UnifiedModel
  from vqlab.train.common import labeled_grid
  if task not in TASKS:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  if task != "image" and not prompt:
    raise ValueError(f"prompt: {task} needs one (a caption, or an image / wav file)")
  model = UnifiedModel(workdir)
  out = out or os.path.join(workdir, "samples")
  source = paired.TASK_MODALITIES.get(task, (None, "image"))[0]
  if source == "image":
    size, channels = int(model.job.tok.image_size), int(model.job.tok.channels)
    prompts = [_image(prompt, size, channels)] * count
  elif source == "audio":
    wave, rate = speech.read_wav(prompt)
    prompts = [wave] * count
  else:
    prompts = [prompt] * count
  if task == "image":
    made = model.sample_images(count, seed)
  elif task in ("text_to_image", "speech_to_image"):
    made = (model.text_to_image(prompts, seed) if source == "text"
            else model.speech_to_image(prompts, rate, seed))
  elif task == "text_to_speech":
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, wave in enumerate(model.text_to_speech(prompts, seed)):
      paths.append(os.path.join(out, f"text_to_speech_{i}.wav"))
      speech.write_wav(paths[-1], wave, model.sample_rate)
    return paths
  else:
    return (model.image_to_text(np.stack(prompts), seed) if source == "image"
            else model.speech_to_text(prompts, rate, seed))
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"{task}.png")
  labeled_grid([(prompt if task != "image" else "no prompt", made)]).save(path)
  return [path]


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("workdir", None, "A unified multimodal run's workdir.")
  flags.DEFINE_enum("task", None, list(TASKS), "What to do.")
  flags.DEFINE_string("prompt", "", "A caption, or an image / wav file.")
  flags.DEFINE_integer("count", 1, "Samples to draw.")
  flags.DEFINE_string("out", None, "Where images / speech go (default WORKDIR/samples).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.mark_flags_as_required(["workdir", "task"])

  def body(f):
    for line in run(f.workdir, f.task, f.prompt, f.count, f.out, f.seed):
      print(line)

  run_app(argv, body)
