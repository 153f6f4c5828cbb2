"""The house rules that keep vqlab easy to extend, checked on the source: trainers are
siblings, the library layers never reach up into train/ or data/, config variants are
checked, and a run's kind is read from its config."""

import ast
import os

import pytest

import vqlab
from vqlab.train import runs

PACKAGE = os.path.dirname(vqlab.__file__)
TRAINERS = {"tokenizer", "codec", "generator", "quantizer_study", "export_tokens",
            "tokenizer_eval", "sweep", "speech_units"}


def _imports(path):
  """Every module name a file imports (absolute, as written)."""
  tree = ast.parse(open(path).read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def _modules(subpackage):
  root = os.path.join(PACKAGE, subpackage)
  return [os.path.join(root, f) for f in sorted(os.listdir(root)) if f.endswith(".py")]


def test_no_trainer_imports_another():
  for path in _modules("train"):
    own = os.path.basename(path)[:-3]
    reached = {n.split(".")[2] for n in _imports(path)
               if n.startswith("vqlab.train.") and n.count(".") >= 2}
    assert not (reached & TRAINERS) - {own}, (path, reached & TRAINERS)


@pytest.mark.parametrize("layer", ["models", "losses", "eval", "quantizers", "nn"])
def test_library_layers_never_import_train_or_data(layer):
  for path in _modules(layer):
    bad = sorted(n for n in _imports(path)
                 if n.split(".")[:2] in (["vqlab", "train"], ["vqlab", "data"]))
    assert not bad, (path, bad)


def test_a_misspelled_config_variant_fails_with_the_known_ones():
  from configs import (audio_codec, generator_quickstart, quantizer_study, vit_vqgan_imagenet,
                       vqgan_quickstart)
  with pytest.raises(ValueError, match=r"unknown variant 'msvqq'.*'runlocal', 'msvq'"):
    vqgan_quickstart.get_config("msvqq,runlocal")
  with pytest.raises(ValueError, match=r"unknown variant 'encodek'.*'encodec', 'dac'"):
    audio_codec.get_config("encodek")
  with pytest.raises(ValueError, match="unknown variant 'runlocl'"):
    quantizer_study.get_config("runlocl")
  with pytest.raises(ValueError, match="unknown variant 'b16'"):
    vit_vqgan_imagenet.get_config("b16")
  with pytest.raises(ValueError, match="expected exactly one of"):
    generator_quickstart.get_config("raster,var")
  # the known ones still build, and the variant does what it names
  assert vqgan_quickstart.get_config("msvq,runlocal").model.quantizer.kind == "msvq"
  assert vqgan_quickstart.get_config(" runlocal ").train.steps == 2


def test_a_runs_kind_is_read_from_its_config():
  from configs import (audio_codec, generator_quickstart, quantizer_study, vqgan_quickstart)
  assert runs.kind(vqgan_quickstart.get_config()) == "tokenizer"
  assert runs.kind(audio_codec.get_config()) == "codec"
  assert runs.kind(generator_quickstart.get_config("delay")) == "generator"
  assert runs.kind(quantizer_study.get_config()) == "study"
  from configs import speech_units
  assert runs.kind(speech_units.get_config()) == "units"
  with pytest.raises(ValueError, match="kind: expected one of"):
    runs.trainer("video")


def test_test_modules_have_unique_basenames():
  # tests/ has no __init__.py, so pytest imports each file under its bare name: two
  # files called test_x.py in different folders make collection fail for one of them.
  tests = os.path.dirname(__file__)
  seen = {}
  for folder, _, files in os.walk(tests):
    for f in files:
      if f.startswith("test_") and f.endswith(".py"):
        seen.setdefault(f, []).append(os.path.relpath(os.path.join(folder, f), tests))
  assert not {f: p for f, p in seen.items() if len(p) > 1}
