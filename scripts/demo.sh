#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, run the whole demo study on CPU, and
# write the HTML report. Outputs: results/tables/, results/figures/, results/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --profile profiles/local "$@"
snakemake --profile profiles/local --report results/report.html "$@"
echo "[demo] tables: results/tables/  figure: results/figures/richness_vs_f1.png  report: results/report.html"
