"""Notebooks are executed so they never rot."""

import pathlib

import pytest

from conftest import COMPILE_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# The notebooks that train for minutes: the image tokenizer's (the README's main job) runs
# in CI's slow step; the codec, generation, video and unified-model ones (minutes each,
# their trainers are CI's in tests/train) are run by hand (-m manual); the others run in
# the default run.
LONG = {"image_tokenizer.ipynb": pytest.mark.slow, "multimodal.ipynb": pytest.mark.manual,
        "audio_codec.ipynb": pytest.mark.manual,
        "generation.ipynb": pytest.mark.manual, "video_tokenizer.ipynb": pytest.mark.manual}
NOTEBOOKS = [pytest.param(p, marks=LONG[p.name]) if p.name in LONG else p
             for p in sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # the kernel is a fresh process with one device, compiled like the tests (conftest.py)
  monkeypatch.setenv("XLA_FLAGS", COMPILE_FLAGS)
  nb = nbformat.read(path, as_version=4)
  # No per-cell wall-clock limit: a busy CI machine made the codec notebook's training
  # cell pass 300 s; a hung kernel still fails the whole run, not this test alone.
  nbclient.NotebookClient(nb, timeout=None, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
