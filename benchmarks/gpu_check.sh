#!/usr/bin/env bash
# The GPU check with the project's venv: benchmarks/gpu_check.py with the same arguments.
#   benchmarks/gpu_check.sh --out-json gpu_check.json                      # one GPU
#   benchmarks/gpu_check.sh --tiny --device cpu --out-json /tmp/tiny.json  # CPU, tiny LLaVA
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=python3
if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; fi
exec "$PYTHON" "$REPO/benchmarks/gpu_check.py" "$@"
