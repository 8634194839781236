#!/usr/bin/env bash
# Sets up .venv (see tools/setup_env.sh) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=1 bash tools/setup_env.sh
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests "$@"
