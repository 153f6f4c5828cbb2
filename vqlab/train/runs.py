"""Open a finished (or running) run from its workdir: what kind of job made it, its
config, its checkpoint restored and placed, the trained model with its evaluation weights,
and the datasets it was trained on.

  model = runs.load_tokenizer("runs/quickstart")     # image tokenizer, eval mode
  codec = runs.load_codec("runs/codec")
  generator, tok = runs.load_generator("runs/gen")

A run's kind is read from its config.json; the state template comes from the job that
wrote it (the one place here that names the trainers, resolved when a run of that kind is
opened, so no trainer imports another). Every trainer's state is {"nnx": (model, ...),
"ema"?: the model's parameter EMA, ...}: `eval_model` applies the EMA, once, here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vqlab import parallel
from vqlab.checkpoint import Checkpointer, checksums
from vqlab.data import splits
from vqlab.train import loop

# kind -> the trainer module that writes such runs (its `init_state(config)` is the template)
TRAINERS = {
    "tokenizer": "vqlab.train.tokenizer",
    "codec": "vqlab.train.codec",
    "generator": "vqlab.train.generator",
    "study": "vqlab.train.quantizer_study",
    "units": "vqlab.train.speech_units",  # no checkpoint: one pass, summary.json at the end
    "multimodal": "vqlab.train.multimodal",
}


def kind(config: ml_collections.ConfigDict) -> str:
  """The job a config is for, from the fields only it has."""
  if "paradigm" in config:
    return "generator"
  if "text" in config:
    return "multimodal"
  if "quantizers" in config:
    return "study"
  if "units" in config:
    return "units"
  if "sample_rate" in config.get("data", {}):
    return "codec"
  return "tokenizer"


def trainer(kind_: str):
  """The trainer module of a kind (imported on first use)."""
  if kind_ not in TRAINERS:
    raise ValueError(f"kind: expected one of {sorted(TRAINERS)}, got {kind_!r}")
  return importlib.import_module(TRAINERS[kind_])


def train(config: ml_collections.ConfigDict, workdir: str):
  """Train (or resume) whatever job `config` is for: `vqlab train`."""
  return trainer(kind(config)).train(config, workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir: expected a run (config.json) in {workdir!r}")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_run(workdir: str, state: dict, step: int | None = None) -> tuple[int, dict]:
  """(step, state) of a run's checkpoint (default the latest) into the template `state`."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"workdir: expected checkpoints in {workdir!r}, found none")
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    step, restored, _ = ckpt.restore(loop.to_checkpoint(state), step)
  finally:
    ckpt.close()
  floats = [(jax.tree_util.keystr(p), x) for p, x in
            jax.tree_util.tree_leaves_with_path(restored) if jnp.issubdtype(x.dtype, jnp.inexact)]
  bad = [p for (p, _), ok in zip(floats, jax.device_get([loop.leaf_is_finite(x)
                                                         for _, x in floats])) if not ok]
  if bad:
    raise ValueError(f"checkpoint {step} of {workdir!r} holds non-finite values in "
                     f"{len(bad)} arrays ({', '.join(bad[:3])}): not a usable model")
  return step, loop.from_checkpoint(state, restored)


def restore(workdir: str, step: int | None = None, mesh=None,
            init_state: Callable | None = None):
  """(config, graphdef, state, step) of a run's checkpoint (default the latest), its
  template from `init_state(config)` (default: its trainer's), placed on `mesh`
  (default: every device, parameters replicated)."""
  config = load_config(workdir)
  mesh = mesh or parallel.make_mesh({"data": -1})
  graphdef, state = (init_state or trainer(kind(config)).init_state)(config)
  state = parallel.put(state, parallel.state_shardings(state, mesh))
  step, state = restore_run(workdir, state, step)
  return config, graphdef, state, step


def eval_model(graphdef, state) -> nnx.Module:
  """The trained model (first of the state's modules) in eval mode, with the EMA
  parameters when the run kept them. Works inside `jax.jit`."""
  model = nnx.merge(graphdef, state["nnx"])[0]
  if state.get("ema"):
    nnx.update(model, state["ema"])
  model.eval()
  return model


def load_config_of(workdir: str, kinds: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A run's config, checked to be of one of `kinds`."""
  config = load_config(workdir)
  found = kind(config)
  if found not in kinds:
    raise ValueError(f"workdir: expected a run of {' or '.join(kinds)}, got a {found} run "
                     f"in {workdir!r}")
  return config


def _load(workdir: str, kinds: tuple[str, ...], step: int | None):
  load_config_of(workdir, kinds)
  _, graphdef, state, _ = restore(workdir, step)
  return eval_model(graphdef, state)


def load_tokenizer(workdir: str, step: int | None = None):
  """The image or video tokenizer of a run: `model.encode(x).indices` for images (or clips)
  x in [-1, 1], `model.decode(indices)`."""
  return _load(workdir, ("tokenizer",), step)


def load_codec(workdir: str, step: int | None = None):
  """The audio codec of a run: `codec.encode(wav).indices`, `codec.decode(indices,
  length)`, `codec.stream_encode(...)`."""
  return _load(workdir, ("codec",), step)


def load_token_model(workdir: str, step: int | None = None):
  """The tokenizer of a run, image or audio."""
  return _load(workdir, ("tokenizer", "codec"), step)


def fingerprint(state: dict) -> str:
  """A short hash of a state's contents (its arrays' checksums): which checkpoint it is,
  wherever the run was copied to. Exported tokens name their tokenizer by it."""
  sums = checksums(loop.to_checkpoint(state))
  return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]


def load_token_model_of(workdir: str, step: int | None = None):
  """(tokenizer in eval mode, its step, its `fingerprint`) of an image tokenizer or codec
  run."""
  load_config_of(workdir, ("tokenizer", "codec"))
  _, graphdef, state, step = restore(workdir, step)
  return eval_model(graphdef, state), step, fingerprint(state)


def check_tokens_match(meta: dict, tok, step: int, ident: str, workdir: str) -> None:
  """Tokens (their tokens.json `meta`) must come from this tokenizer checkpoint: decoding
  another's codes with it gives images of nothing, silently."""
  made_by = (f"tokens of {meta.get('tokenizer_workdir')!r} at step {meta.get('step')}")
  if meta.get("tokenizer_fingerprint", ident) != ident:
    raise ValueError(f"tokens_dir: {made_by} (fingerprint {meta['tokenizer_fingerprint']}), "
                     f"but tokenizer_workdir {workdir!r} is another model (step {step}, "
                     f"fingerprint {ident}); export tokens with this tokenizer (vqlab tokens)")
  want = {"codebook_size": int(tok.quantizer.codebook_size)}
  if meta.get("modality") == "audio":
    want["levels"] = int(tok.num_levels)
  else:  # exports before token_shape have latent_size only; 1D tokenizers token_shape only
    if "latent_size" in meta or len(tok.token_shape) == 2:
      want["latent_size"] = int(tok.token_shape[0])
    if "token_shape" in meta:
      want["token_shape"] = [int(n) for n in tok.token_shape]
  bad = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k, v) != v}
  if bad:
    raise ValueError(f"tokens_dir: {made_by} do not fit tokenizer_workdir {workdir!r}: "
                     + ", ".join(f"{k} {a} in the tokens, {b} in the tokenizer"
                                 for k, (a, b) in bad.items()))


def load_generator(workdir: str, step: int | None = None):
  """(generator in eval mode with EMA weights when kept, its tokenizer) of a run."""
  from vqlab.data.tokens import TokenSource
  config = load_config(workdir)
  tok = load_token_model(config.tokenizer_workdir)
  meta = TokenSource(config.tokens_dir).meta
  init = lambda c: trainer("generator").init_state(c, tok, meta)
  _, graphdef, state, _ = restore(workdir, step, init_state=init)
  return eval_model(graphdef, state), tok


def datasets(config: ml_collections.ConfigDict, split: str, **kwargs):
  """A split of the dataset a tokenizer or codec run was trained on, as its trainer
  reads it (kwargs of `vqlab.data.splits.image_split` / `video_split` / `audio_split`)."""
  found = kind(config)
  if found == "codec":
    return splits.audio_split(config, split, **kwargs)
  if found == "tokenizer":
    return splits.tokenizer_split(config, split, **kwargs)
  raise ValueError(f"config: expected a tokenizer or codec run's config, got a {found} run's")


def main(argv: list[str], expect: str | None = None) -> None:
  """`vqlab train --config FILE[:variants] --workdir DIR [--config.x=...]`: the job the
  config is for. `expect` (the aliases `vqlab codec`, `generate`, `study`) checks it."""
  from vqlab.train.common import config_main

  def checked(config, workdir):
    found = kind(config)
    if expect and found != expect:
      raise ValueError(f"config: expected a {expect} config for this command, got a {found} "
                       "config (`vqlab train` trains any job)")
    return train(config, workdir)

  config_main(argv, checked, "configs/<name>.py[:variant,...][,runlocal]")
