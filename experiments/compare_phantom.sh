#!/usr/bin/env bash
# The federated GIN paper's comparison (every method x local / centralized / federated) on the phantom
# federations, default budget, seed 0. Resumable: rerun to finish an interrupted grid.
# none and GIN first (the paper's main contrast), then the rest of the grid in the same folder.
# Tables: runs/compare/<task>/grid/compare.md (copied into docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for task in ${TASKS:-abdomen heart}; do
  "$PY" -m fedxmodal compare --data "runs/compare/$task/data" --task "$task" --out "runs/compare/$task/grid" \
    --methods none gin
  "$PY" -m fedxmodal compare --data "runs/compare/$task/data" --task "$task" --out "runs/compare/$task/grid"
done
