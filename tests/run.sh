#!/usr/bin/env bash
# The test command of the README: local virtualenv, install, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[dev,audio,video]"
bash launch/install_speech.sh  # espeak-ng + recordings for the built-in speech
# The reference comparisons (vector-quantize-pytorch, PyTorch's interpolate) need torch.
# 2.13.0 is pinned because a CPU-only build of it is what CI has at hand; any torch >= 2.4
# works. Without torch those tests skip and say so.
.venv/bin/pip install -q "torch==2.13.0" vector-quantize-pytorch \
  || echo "torch not installed: reference-comparison tests will be skipped"
# Slow tests (real subprocesses killed mid-run) are a separate CI step: .ci/run; `manual`
# ones (pyproject markers) are run by hand: pytest -m manual.
.venv/bin/python -m pytest -n 2 -m "not slow and not manual" --durations=30 "$@"
