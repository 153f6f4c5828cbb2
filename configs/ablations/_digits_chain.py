"""The digits chain the generator ablations share (their `prepare` steps, run once into
runs/ablations/digits_chain/): a VQ tokenizer and a VAR multi-scale tokenizer of the
built-in digits (configs/vqgan_quickstart.py:digits, 1,000 steps, no GAN: the generators
only need its codes and decoder), and the tokens of the 4,500 training digits with their
labels; the heads ablation adds a residual VQ (`:rvq`, 4 levels) and an LFQ (`:lfq`, 2^16
codes) tokenizer of the same shape."""

from configs.common import variant

PREPARE_DIR = "../digits_chain"  # beside the sweeps' workdirs, shared by them


TOKENIZERS = {"vq": "digits", "msvq": "msvq,digits", "rvq": "rvq,digits", "lfq": "lfq,digits"}


def prepare(runlocal: bool, tokenizers=("vq", "msvq")) -> list[dict]:
  steps = 2 if runlocal else 1000
  extra = ",runlocal" if runlocal else ""
  tok = {"config.train.steps": steps, "config.loss.disc_start": 10**9,
         "config.log.checkpoint_every": max(steps // 2, 1)}
  out = []
  for name in tokenizers:
    arg = TOKENIZERS[name]
    out.append(dict(name=name, verb="train", args={
        "config": f"configs/vqgan_quickstart.py:{arg}{extra}",
        "workdir": f"{{prepare}}/{name}", **tok}))
    out.append(dict(name=f"{name}_tokens", verb="tokens", args={
        "workdir": f"{{prepare}}/{name}", "out": f"{{prepare}}/{name}_tokens",
        "split": "train", "examples": 64 if runlocal else 4500}))
  return out


def generator(paradigm: str, runlocal: bool, axes: dict, overrides: dict | None = None,
              name: str | None = None, tokenizer: str = "", heads: str = "") -> dict:
  """A variant training `paradigm` (configs/generator_quickstart.py:<paradigm>,digits) on
  the chain's tokens: 128 wide, 4 blocks, 600 steps of 32 sequences; scored on 500
  class-balanced samples (as many as the held-out digits). `tokenizer` picks one of the
  chain's (default: msvq for var, else vq); `heads` adds config variants (e.g. "bitwise")."""
  tok = tokenizer or ("msvq" if paradigm == "var" else "vq")
  base = (f"configs/generator_quickstart.py:{paradigm}{',' + heads if heads else ''},digits"
          + (",runlocal" if runlocal else ""))
  shape = {"eval.digits_examples": 40} if runlocal else {
      "model.width": 128, "model.heads": 4, "train.steps": 600, "train.warmup_steps": 60,
      "sample.every": 10**9, "log.checkpoint_every": 300, "eval.digits_examples": 500}
  return variant(axes, {"tokenizer_workdir": f"{{prepare}}/{tok}",
                        "tokens_dir": f"{{prepare}}/{tok}_tokens", **shape,
                        **(overrides or {})}, name=name, base=base)
