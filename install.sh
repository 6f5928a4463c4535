#!/usr/bin/env bash
# Create ./.venv and install Medical SAM3 with every optional part (server, DICOM SEG, GUI, training, tests).
# Torch is installed first on its own so that an already satisfied torch is kept (CPU wheel where one is at hand);
# set TORCH_SPEC to choose another build, e.g. TORCH_SPEC="torch --index-url <your CUDA index>". The range is
# pyproject.toml's requirement (torch>=2.4) capped at the newest release the test suite has been run with.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-"torch>=2.4,<2.14"}
.venv/bin/python -m pip install --quiet -e ".[all]"
echo "Installed into $(pwd)/.venv"
