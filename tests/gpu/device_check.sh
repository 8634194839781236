#!/usr/bin/env bash
# One prepared check of the GPU path for a lent accelerator (about 8 minutes at most):
# GPU tests, fused softmax vs torch vs SDPA, 1.3B bf16 MFU, fp16 dynamic loss scaling.
# Results: $OUT/device_check.md. On a CPU: DRY_RUN=1 (or --dry-run) runs the same steps tiny.
#   bash tests/gpu/device_check.sh            # on the device machine ($OUT set by the tool)
#   DRY_RUN=1 OUT=/tmp/check bash tests/gpu/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec timeout 480 "$PYTHON" tests/gpu/device_check.py "$@"
