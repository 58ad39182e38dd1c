#!/usr/bin/env bash
# The data factory's phase-1 numbers (docs/results.md, "Data factory"): the federated conditional
# GAN on the 3-domain phantom (ct-site, mr-site, mr-t1-site; cect-site written too, it joins only
# phase 2), the same without the domain key (ablation), and on the real TotalSegmentator CT + MR
# pair with the phantom's third domain (mr-t1-site). Each run: quality.png (SWD per site over
# rounds), samples.png, morph.png, summary.json, simulator.log (wall time).
#   bash experiments/factory_phase1.sh [OUT]                  # ROUNDS=20 STEPS=50 SEEDS=0
#   ROUNDS=2 STEPS=4 bash experiments/factory_phase1.sh /tmp/factory-smoke   # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/factory}
PY=${PY:-.venv/bin/python}
ROUNDS=${ROUNDS:-20}
STEPS=${STEPS:-50}
SEEDS=${SEEDS:-0}
[ -f "$OUT/phantom/data/mr-t1-site/dataset.json" ] || "$PY" -m fedxmodal demo-data --factory --out "$OUT/phantom/data" --quiet
if [ ! -f "$OUT/totalseg/data/mr-t1-site/dataset.json" ]; then
  "$PY" -m fedxmodal totalseg-pair --out "$OUT/totalseg/data"
  "$PY" -m fedxmodal demo-data --sites mr-t1-site --out "$OUT/totalseg/data" --quiet
fi
for seed in $SEEDS; do
  "$PY" -m fedxmodal factory run --data "$OUT/phantom/data" --out "$OUT/phantom/key/seed$seed" \
    --rounds "$ROUNDS" --local-steps "$STEPS" --seed "$seed"
  "$PY" -m fedxmodal factory run --data "$OUT/phantom/data" --out "$OUT/phantom/nokey/seed$seed" \
    --rounds "$ROUNDS" --local-steps "$STEPS" --seed "$seed" --no-key
  "$PY" -m fedxmodal factory run --data "$OUT/totalseg/data" --out "$OUT/totalseg/key/seed$seed" \
    --rounds "$ROUNDS" --local-steps "$STEPS" --seed "$seed"
done
"$PY" experiments/summarize_factory.py "$OUT" | tee "$OUT/summary.md"
