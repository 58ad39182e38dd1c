#!/usr/bin/env bash
# FedCoWPro's numbers (docs/results.md): one-shot Dice of FedCoWPro and its baselines
# (FedAvg of SSL-ALPNet, FedAvg of CoWPro, each site alone, centralized, untrained encoder, raw
# intensities) on the abdominal phantom and on the real TotalSegmentator CT/MR pair, settings 1 and
# 2, seeds 0 1 2, same-modality and cross-modality supports; then FedGIN (supervised, for scale) on
# the same sites; then the tables (experiments/fedcowpro_summary.py).
# Usage: bash experiments/fedcowpro.sh [OUT_DIR] [--smoke]      (--smoke: tiny phantom, seed 0, 1 round
#        x 2 steps, every local/centralized cell and one federated one: proves the pipeline; its numbers
#        mean nothing). ROUNDS / STEPS (default 20 rounds x 25 steps of 4 episodes) set the budget of every cell.
# A finished cell is skipped on a rerun (delete OUT/<data>/results/<cell>.json to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fedcowpro}
SMOKE=${2:-}
PY=${PY:-.venv/bin/python}
export FEDXMODAL_NUM_THREADS=${FEDXMODAL_NUM_THREADS:-1}
ROUNDS=${ROUNDS:-20}; STEPS=${STEPS:-25}  # 500 steps x 4 episodes per cell (per site when federated)

if [ "$SMOKE" = "--smoke" ]; then
  [ -d "$OUT/phantom/data/ct-site" ] || $PY -m fedxmodal demo-data --out "$OUT/phantom/data" --n-train 2 --n-val 1 --n-test 1 --quiet
  # every method x setting x local/centralized, the floors; one federated cell (one simulator run)
  nice -n 5 $PY experiments/fedcowpro_oneshot.py --data "$OUT/phantom/data" --out "$OUT/phantom" --smoke \
      --seeds 0 --settings 1 2 --regimes centralized local
  nice -n 5 $PY experiments/fedcowpro_oneshot.py --data "$OUT/phantom/data" --out "$OUT/phantom" --smoke \
      --seeds 0 --settings 1 --regimes federated --methods fedcowpro --floors
  $PY experiments/fedcowpro_summary.py "$OUT/phantom"
  exit 0
fi

# 1. abdominal phantom: 6 training, 2 validation, 3 test volumes per site
[ -d "$OUT/phantom/data/ct-site" ] || $PY -m fedxmodal demo-data --out "$OUT/phantom/data" --quiet
nice -n 5 $PY experiments/fedcowpro_oneshot.py --data "$OUT/phantom/data" --out "$OUT/phantom" \
    --rounds "$ROUNDS" --local-steps "$STEPS"
# 2. the real CT/MR pair: one volume per modality, split into axial slabs (training / validation /
#    test); the support is the site's validation slab (or a training slab holding the structure), the
#    query its test slab: support and query come from the SAME patient (optimistic; said in docs/results.md)
[ -d "$OUT/totalseg/data/ct-site" ] || $PY -m fedxmodal totalseg-pair --out "$OUT/totalseg/data"
nice -n 5 $PY experiments/fedcowpro_oneshot.py --data "$OUT/totalseg/data" --out "$OUT/totalseg" \
    --rounds "$ROUNDS" --local-steps "$STEPS"
# 3. for scale: supervised FedGIN on the same sites (it uses the labels), its test Dice in results/fedgin.md
for d in phantom totalseg; do
  [ -f "$OUT/$d/fedgin/results/fedgin.json" ] || $PY -m fedxmodal demo --data "$OUT/$d/data" --workdir "$OUT/$d/fedgin" --rounds 30
done
$PY experiments/fedcowpro_summary.py "$OUT/phantom"
$PY experiments/fedcowpro_summary.py "$OUT/totalseg"
