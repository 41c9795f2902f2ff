#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, then run the whole test suite (unit tests,
# the end-to-end workflow on the micro config, and the Slurm integration test where it can start a
# cluster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
# Two workers: one core idles in single-process tests and while the Slurm plugin polls. loadgroup
# keeps the tests of each shared workflow run on one worker (tests/conftest.py).
exec python -m pytest -ra -n 2 --dist loadgroup "$@"
