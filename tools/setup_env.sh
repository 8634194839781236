#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs
# everything the project, its demo and its tests need. Idempotent: a second run only
# checks that the requirements are satisfied.
#
# How torch is chosen:
#   - TORCH_SPEC (e.g. "torch==2.5.1+cu124") and TORCH_INDEX_URL, when set, are used as given.
#   - otherwise, if nvidia-smi finds a GPU, the default PyPI torch (a CUDA build) is installed;
#   - otherwise the CPU build torch==2.13.0 is installed. Where no local wheel of it exists, set
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
WITH_TEST=${WITH_TEST:-0}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec="$TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch"
    else
        spec="torch==2.13.0"
    fi
    echo "[setup] installing $spec"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${PIP[@]}" install "$spec" --index-url "$TORCH_INDEX_URL"
    else
        "${PIP[@]}" install "$spec"
    fi
fi

echo "[setup] installing requirements and the megatron package (editable)"
"${PIP[@]}" install -r requirements.txt
if [ "$WITH_TEST" = "1" ]; then
    "${PIP[@]}" install -r requirements-test.txt
fi
"${PIP[@]}" install --no-deps -e .
"$VENV/bin/python" -c "import torch, deepspeed, megatron; print('[setup] torch', torch.__version__, '| deepspeed', deepspeed.__version__)" 2>&1 | grep '^\[setup\]'
