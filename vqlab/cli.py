"""The `vqlab` command: `vqlab <verb> --config configs/<job>.py --workdir DIR [--config.x=...]`."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

# verb -> (module, the kind of run it trains or None, help)
JOBS = {
    "train": ("vqlab.train.runs", None, "train the job a config is for (image tokenizer, audio "
              "codec, token generator, quantizer study); resumes from its workdir"),
    "eval": ("vqlab.train.tokenizer_eval", None, "reconstruct a split with a trained tokenizer "
             "or codec and report its metrics"),
    "tokens": ("vqlab.train.export_tokens", None, "export a dataset's tokens to array_record "
               "files"),
    "convert": ("vqlab.convert", None, "convert published weights (var, lpips, inception, "
                "hubert, i3d) to vqlab's .npz files"),
    "codec": ("vqlab.train.runs", "codec", "= train, for an audio codec config"),
    "generate": ("vqlab.train.runs", "generator", "= train, for a token generator config"),
    "study": ("vqlab.train.runs", "study", "= train, for a quantizer study config"),
    "units": ("vqlab.train.runs", "units", "= train, for a speech-units config (k-means units "
              "of speech features, scored against phonemes)"),
    "multimodal": ("vqlab.train.runs", "multimodal", "= train, for a unified text + image + "
                   "speech model config"),
    "sample": ("vqlab.train.multimodal_sample", None, "any task of a trained unified model "
               "(text -> image, image -> text, text -> speech, speech -> text / image)"),
    "sweep": ("vqlab.train.sweep", None, "run an ablation (configs/ablations/): a base job "
              "over variants and seeds; tables, plots and claim verdicts"),
}


def usage() -> str:
  lines = ["usage: vqlab <verb> --config CONFIG [--workdir DIR] [--config.field=value ...]", "",
           "verbs:"]
  lines += [f"  {name:8s} {help_}" for name, (_, _, help_) in JOBS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  verb = argv[1]
  if verb not in JOBS:
    print(f"vqlab: unknown verb {verb!r}; expected one of {sorted(JOBS)}\n\n{usage()}",
          file=sys.stderr)
    sys.exit(2)
  module, expect, _ = JOBS[verb]
  if verb != "convert":
    from vqlab import distributed
    distributed.initialize()  # multi-process jobs join here, before any computation
  main_fn = importlib.import_module(module).main
  args = [f"vqlab {verb}"] + argv[2:]
  try:
    main_fn(args, expect) if expect else main_fn(args)
  except (*_expected_errors(), AttributeError) as e:
    if os.environ.get("VQLAB_TRACEBACK") or (isinstance(e, AttributeError)
                                            and not _in_config_flags(e)):
      raise
    print(f"vqlab {verb}: {type(e).__name__}: {message(e)}\n(VQLAB_TRACEBACK=1 shows the "
          "traceback)", file=sys.stderr)
    sys.exit(1)


def _expected_errors() -> tuple[type[BaseException], ...]:
  """What bad input and faults raise (checked configs and arguments, files, checkpoints,
  divergence, a busy workdir): one message, not a traceback."""
  from absl import flags
  return (ValueError, KeyError, OSError, FloatingPointError, RuntimeError, flags.Error)


def _in_config_flags(e: BaseException) -> bool:
  """An AttributeError raised while parsing `--config.field=value`: an unknown field."""
  return any("config_flags" in frame.filename for frame in traceback.extract_tb(e.__traceback__))


def message(e: BaseException) -> str:
  """The words of an error: a KeyError's own text (not its repr), the cause of a config
  file that failed to load, ml_collections' did-you-mean of a misspelled field."""
  if isinstance(e, AttributeError):
    return "config: no such field in an override --config.<field>=...: " + \
        str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  cause = e.__cause__ or e.__context__
  if cause is not None and ("earlier failure" in str(text) or not str(text).strip()):
    return message(cause)
  if isinstance(cause, (KeyError, AttributeError)) and "Did you mean" in str(cause):
    return f"{text}: {message(cause)}"
  return str(text).strip()


if __name__ == "__main__":
  main()
