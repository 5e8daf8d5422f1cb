#!/usr/bin/env bash
# Create .venv and install agentnas with its test tools. Idempotent.
# On a machine without a GPU, torch 2.13.0 is pinned first so pip takes the CPU build
# where one is available instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        .venv/bin/python -m pip install -q torch
    else
        .venv/bin/python -m pip install -q torch==2.13.0
    fi
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "agentnas installed in .venv ($(.venv/bin/agentnas --help >/dev/null && echo ok))"
