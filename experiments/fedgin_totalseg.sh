#!/usr/bin/env bash
# FedGIN on the real TotalSegmentator pair: the CT as one site, the MR as the other. Each volume is
# split into disjoint axial slabs (validation and test in the middle of the organ-bearing range,
# training the rest; see `python -m fedxmodal totalseg-pair --help`).
# Usage: bash experiments/fedgin_totalseg.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fedgin_totalseg}
PY=.venv/bin/python
$PY -m fedxmodal totalseg-pair --out "$OUT/data"
$PY -m fedxmodal demo --data "$OUT/data" --workdir "$OUT" --rounds 30 --local-epochs 5 --seed 0
