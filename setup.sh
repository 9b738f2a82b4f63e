#!/usr/bin/env bash
# Create .venv at the repository root and install SFR Segmenter with everything its tests need.
# torch/torchvision are pinned to the versions this project is developed and tested with; on a
# GPU machine, install the torch build for your CUDA first and drop the pin with SFR_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${SFR_TORCH:-}" != "skip" ]; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q -e ".[sam,lite,test]"
.venv/bin/sfr --version
