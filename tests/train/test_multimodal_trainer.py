"""The unified text + image + speech trainer on the digits chain and the speech chain's
codec: runlocal trains, evaluates every task and resumes; a short run lowers every
task's loss; the sharded step equals one device's; bad configs fail before the
workdir."""

import json
import os

import numpy as np
import pytest

from configs import multimodal_quickstart
from vqlab.data import paired, spoken, text
from vqlab.data.tokens import TokenSource
from vqlab.train import multimodal as trainer
from vqlab.train import multimodal_sample
from vqlab.train import runs
from vqlab.train.common import read_jsonl


def _config(chain, arg="runlocal", codec=None):
  c = multimodal_quickstart.get_config(arg)
  workdir, tokens = chain["vq"]
  c.update(tokenizer_workdir=workdir, tokens_dir=tokens, eval_tokens_dir=tokens)
  if codec is not None:
    c.update(codec_workdir=codec)
    c.speech.levels = 2  # of the speech chain's 3 levels of 64 codes
  return c


# Show-o's run is text <-> image only (no codec): it covers that path and the finished
# run's re-evaluation; the causal run covers speech (Show-o's step with speech: the
# sharded test)
@pytest.mark.parametrize("arg", ["runlocal", "showo,text_image,runlocal"])
def test_runlocal_trains_evaluates_and_resumes(arg, chain, speech_chain, tmp_path):
  speech = "text_image" not in arg
  c = _config(chain, arg, speech_chain[0] if speech else None)
  assert runs.kind(c) == "multimodal"
  summary = trainer.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  vocab = summary["vocab_size"]
  # 8 specials + the run's BPE + 1,024 image codes (+ 2 levels of 64 speech codes); an
  # untrained model is about uniform over them
  tok = text.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert vocab == 8 + tok.vocab_size + 1024 + (2 * 64 if speech else 0)
  for key in ("loss", "text_loss", "image_loss") + (("audio_loss",) if speech else ()):
    assert abs(rows[0][key] - np.log(vocab)) < 1.0, (key, rows[0][key])
  assert summary["image_to_text/examples"] == 8
  examples = json.load(open(tmp_path / "captions.json"))
  assert len(examples["image_to_text"]) == 8
  assert all(isinstance(r["caption"], str) for r in examples["image_to_text"])
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  if speech:
    # the longest spoken caption is kept with the run (a saved run's model needs no clips)
    saved = json.load(open(tmp_path / trainer.SPEECH_FILE))
    assert saved["levels"] == 2 and 0 < saved["frames"] * 2 + 2 < summary["sequence_length"]
    assert saved["sequence_length"] == summary["sequence_length"]
    assert summary["speech_to_text/examples"] == 10 and len(examples["speech_to_text"]) == 10
    for key in ("speech_to_text/caption_accuracy", "text_to_speech/self_accuracy",
                "text_to_speech/sphinx_accuracy", "text_to_speech/sphinx_accuracy@espeak",
                "text_to_speech/sphinx_accuracy@codec"):
      assert 0.0 <= summary[key] <= 1.0, key
    assert [r["label"] for r in examples["text_to_speech"]] == list(range(10))
    for y in range(10):  # a generated spoken caption per digit, at the codec's rate
      assert os.path.exists(tmp_path / "audio" / f"text_to_speech_{y}.wav")
  else:
    assert "audio_loss" not in summary and "speech_to_text/caption_accuracy" not in summary
    assert not os.path.exists(tmp_path / trainer.SPEECH_FILE)
    # finished: evaluated again, nothing retrained
    again = trainer.train(c, str(tmp_path))
    assert again["loss"] == summary["loss"]
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))
            if "loss" in r] == [1, 2]
  assert json.load(open(tmp_path / "config.json"))["model"]["mask"] == (
      "show-o" if "showo" in arg else "causal")


@pytest.mark.slow  # a run, then every sampler compiled again for new batch shapes
def test_every_task_from_a_saved_run(chain, speech_chain, tmp_path):
  """UnifiedModel and `vqlab sample` on a finished run: every task, seeded."""
  c = _config(chain, codec=speech_chain[0])
  c.eval.update(caption_examples=0, speech_examples=0)
  c.speech.update(templates=(0,))
  workdir = tmp_path
  trainer.train(c, str(workdir))
  model = trainer.UnifiedModel(str(workdir))
  assert model.step == 2 and model.sample_rate == 16000
  assert model.job.speech is None  # the captions were not spoken again
  saved = json.load(open(workdir / trainer.SPEECH_FILE))
  assert model.job.speech_frames == saved["frames"]
  assert model.job.length == saved["sequence_length"]  # the training documents' length
  asked = ["a handwritten seven", "the digit 3"]
  images = model.text_to_image(asked, seed=0)
  assert images.shape == (2, 32, 32, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(model.text_to_image(asked, seed=0), images)
  assert not np.array_equal(model.text_to_image(asked, seed=1), images)
  said = model.image_to_text(images, seed=0)
  assert len(said) == 2 and said == model.image_to_text(images, seed=0)
  waves = model.text_to_speech(asked, seed=0)
  hop = model.job.codec.hop
  assert len(waves) == 2 and all(len(w) % hop == 0 and len(w) <= model.job.speech_frames * hop
                                 for w in waves)
  clip = spoken.spoken_captions(spoken.caption_voices(1), (0,), 22050)[7]["audio"]
  assert len(model.speech_to_text([clip], rate=22050, seed=0)) == 1
  assert model.speech_to_image([clip], rate=22050, seed=0).shape == (1, 32, 32, 1)
  assert model.sample_images(3, seed=0).shape == (3, 32, 32, 1)
  # the command line: files written, captions printed
  out = workdir / "asked"
  png = multimodal_sample.run(str(workdir), "text_to_image", asked[0], count=2, out=str(out))
  assert png == [str(out / "text_to_image.png")] and os.path.exists(png[0])
  with pytest.raises(ValueError, match="prompt: image_to_text needs one"):
    multimodal_sample.run(str(workdir), "image_to_text", "")


def test_a_short_run_lowers_every_task_loss(chain, speech_chain, tmp_path):
  c = _config(chain, codec=speech_chain[0])
  c.train.update(steps=30, lr=1e-2, batch_size=24)
  c.sample.every = 1000
  c.eval.update(caption_examples=0, speech_examples=0)
  c.log.update(every=1, checkpoint_every=1000)
  trainer.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  # each task's nats per token over the steps that drew it: the first 5 and the last 5
  for key in ["text_loss", "image_loss", "audio_loss"] + [f"{t}_loss" for t in paired.TASKS]:
    drawn = [r[key] for r in rows if r[key] > 0]
    first, last = np.mean(drawn[:5]), np.mean(drawn[-5:])
    assert last < first - 1.0, (key, drawn)


def test_sharded_step_matches_one_device(chain, speech_chain, sharded_steps_match):
  c = _config(chain, "showo,runlocal", speech_chain[0])  # Show-o's masks with speech
  c.train.update(batch_size=8)
  job = trainer.MultimodalJob(c, "")
  job.load()
  graphdef, state = job.init_state()
  source = TokenSource(c.tokens_dir)
  transform = job.transform()
  rng = np.random.default_rng(0)
  batches = []
  for start in (0, 8):
    docs = [transform.random_map(source[i], rng) for i in range(start, start + 8)]
    batches.append({k: np.stack([d[k] for d in docs]) for k in ("ids", "weights", "task")})
  spec = job.step_spec()
  step = lambda state, batch, _: trainer.train_step(state, batch, graphdef=graphdef, spec=spec)
  sharded_steps_match(step, state, batches, {"data": 4, "fsdp": 2},
                      ("loss", "text_loss", "image_loss", "audio_loss"), min_fsdp_size=256)


def test_bad_configs_fail_before_the_workdir(chain, tmp_path):
  workdir = tmp_path / "run"
  for field, value, match in (("model.mask", "bidirectional", "model.mask: expected one of"),
                              ("sample.schedule", "cubic", "schedule: expected one of"),
                              ("train.tasks", {"text_to_sound": 1.0}, "tasks: expected names"),
                              ("codec_workdir", "", "codec_workdir: the tasks"),
                              ("speech.templates", (1, 3), "the evaluation template"),
                              ("train.drop_prompt", 1.0, "drop_prompt"),
                              ("loss.text", -1.0, "loss.text"),
                              ("tokens_dir", "", "tokens_dir: expected a path")):
    c = _config(chain, codec="/nonexistent")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=match):
      trainer.train(c, str(workdir))
    assert not workdir.exists()
