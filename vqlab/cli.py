"""The `vqlab` command: `vqlab <verb> --config configs/<job>.py --workdir DIR [--config.x=...]`."""

from __future__ import annotations

import importlib
import sys

# verb -> (module, the kind of run it trains or None, help)
JOBS = {
    "train": ("vqlab.train.runs", None, "train the job a config is for (image tokenizer, audio "
              "codec, token generator, quantizer study); resumes from its workdir"),
    "eval": ("vqlab.train.tokenizer_eval", None, "reconstruct a split with a trained tokenizer "
             "or codec and report its metrics"),
    "tokens": ("vqlab.train.export_tokens", None, "export a dataset's tokens to array_record "
               "files"),
    "convert": ("vqlab.convert", None, "convert published weights (var, lpips, inception) to "
                "vqlab's .npz files"),
    "codec": ("vqlab.train.runs", "codec", "= train, for an audio codec config"),
    "generate": ("vqlab.train.runs", "generator", "= train, for a token generator config"),
    "study": ("vqlab.train.runs", "study", "= train, for a quantizer study config"),
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
  main_fn(args, expect) if expect else main_fn(args)


if __name__ == "__main__":
  main()
