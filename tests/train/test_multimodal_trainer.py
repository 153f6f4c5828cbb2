"""The unified text + image trainer on the digits chain: runlocal trains, evaluates and
resumes; a short run lowers the loss of both modalities; the sharded step equals one
device's; bad configs fail before the workdir."""

import json
import os

import numpy as np
import pytest

from configs import multimodal_quickstart
from vqlab.data import text
from vqlab.data.tokens import TokenSource
from vqlab.train import multimodal as trainer
from vqlab.train import runs
from vqlab.train.common import read_jsonl


def _config(chain, arg="runlocal"):
  c = multimodal_quickstart.get_config(arg)
  workdir, tokens = chain["vq"]
  c.update(tokenizer_workdir=workdir, tokens_dir=tokens, eval_tokens_dir=tokens)
  return c


@pytest.mark.parametrize("arg", ["runlocal", "showo,runlocal"])
def test_runlocal_trains_evaluates_and_resumes(arg, chain, tmp_path):
  c = _config(chain, arg)
  assert runs.kind(c) == "multimodal"
  summary = trainer.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  vocab = summary["vocab_size"]
  # 8 specials + the run's BPE + 1,024 codes; an untrained model is about uniform over them
  tok = text.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert vocab == 8 + tok.vocab_size + 1024
  for key in ("loss", "text_loss", "image_loss"):
    assert abs(rows[0][key] - np.log(vocab)) < 0.5, (key, rows[0][key])
  assert summary["image_to_text/examples"] == 8
  captions = json.load(open(tmp_path / "captions.json"))
  assert len(captions) == 8 and all(isinstance(r["caption"], str) for r in captions)
  assert os.path.exists(tmp_path / "images" / "samples_0000002.png")
  again = trainer.train(c, str(tmp_path))  # finished: evaluated again, nothing retrained
  assert again["loss"] == summary["loss"]
  assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r] == [1, 2]
  assert json.load(open(tmp_path / "config.json"))["model"]["mask"] == (
      "show-o" if "showo" in arg else "causal")


def test_a_short_run_lowers_the_text_and_image_losses(chain, tmp_path):
  c = _config(chain)
  c.train.update(steps=30, lr=1e-2, batch_size=16)
  c.sample.every = 1000
  c.eval.update(caption_examples=0)
  c.log.update(every=5, checkpoint_every=1000)
  trainer.train(c, str(tmp_path))
  rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  for key in ("text_loss", "image_loss"):
    first, last = rows[0][key], np.mean([r[key] for r in rows[-2:]])
    assert last < first - 1.0, (key, [r[key] for r in rows])


def test_sharded_step_matches_one_device(chain, sharded_steps_match):
  c = _config(chain)
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
    batches.append({k: np.stack([d[k] for d in docs]) for k in ("ids", "weights")})
  spec = trainer.StepSpec(0.0, 1, job.vocab.span("text"), job.vocab.span("image"))
  step = lambda state, batch, _: trainer.train_step(state, batch, graphdef=graphdef, spec=spec)
  sharded_steps_match(step, state, batches, {"data": 4, "fsdp": 2},
                      ("loss", "text_loss", "image_loss"), min_fsdp_size=256)


def test_bad_configs_fail_before_the_workdir(chain, tmp_path):
  workdir = tmp_path / "run"
  for field, value, match in (("model.mask", "bidirectional", "model.mask: expected one of"),
                              ("sample.schedule", "cubic", "schedule: expected one of"),
                              ("train.tasks", {"text_to_speech": 1.0}, "tasks: expected names"),
                              ("train.drop_prompt", 1.0, "drop_prompt"),
                              ("loss.text", -1.0, "loss.text"),
                              ("tokens_dir", "", "tokens_dir: expected a path")):
    c = _config(chain)
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=match):
      trainer.train(c, str(workdir))
    assert not workdir.exists()
