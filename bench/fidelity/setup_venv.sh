#!/usr/bin/env bash
# Builds the separate environment the fidelity check needs (NOT the project's own venv, never used by CI):
# Meta's native `sam3` wheel needs torchvision, which must match the torch beside it (torch 2.14.1, torchvision 0.29.1).
# Usage: bench/fidelity/setup_venv.sh [VENV_DIR]   (default .venv-fidelity in the current folder)
set -euo pipefail
VENV="${1:-.venv-fidelity}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
# sam3 pins huggingface-hub<2 and numpy<2.4, which conflict with transformers 5.23; its code runs with the newer ones.
"$VENV/bin/pip" install -q --no-deps sam3==0.1.4
"$VENV/bin/pip" install -q timm ftfy iopath einops pycocotools psutil regex tqdm transformers==5.23.0 safetensors numpy
echo "ready: $VENV/bin/python bench/fidelity/fidelity.py"
