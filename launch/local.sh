#!/usr/bin/env bash
# Run a vqlab job on this machine, setting up a local virtualenv first if needed.
#   bash launch/local.sh study --config configs/quantizer_study.py --workdir runs/study
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/vqlab ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi
if [ "${1:-}" = codec ]; then
  bash launch/install_speech.sh  # the built-in speech needs espeak-ng and the recordings
fi
exec .venv/bin/vqlab "$@"
