#!/usr/bin/env bash
# The measured numbers of docs/results.md (FedGIN, the federated GIN paper's method), on the abdominal phantom.
# Same data, seed, network, optimiser (the job spec's batch size and learning rate), GIN variant and
# budget for every row: FedGIN runs 30 rounds x 2 local epochs (60 passes over each site's slices);
# every non-federated row trains 60 epochs.
# Usage: [SEED=k] bash experiments/fedgin_phantom.sh [OUT_DIR]   (about 20 minutes per seed on 2 CPU cores)
#   SEED (default 0) seeds the phantom and the training; 3 seeds: for k in 0 1 2; do SEED=$k bash
#   experiments/fedgin_phantom.sh runs/fedgin_phantom/seed$k; done, then
#   python experiments/summarize_fedgin.py runs/fedgin_phantom/seed0 runs/fedgin_phantom/seed1 runs/fedgin_phantom/seed2
# A cell whose results already exist is skipped (delete its folder to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fedgin_phantom}
SEED=${SEED:-0}
PY=.venv/bin/python
GIN=${GIN:-'{"shared_across_batch": false}'}  # per-sample GIN, as in jobs/specs/fedgin.json
# the federated job's optimiser, for the rows trained without NVFlare
OPTIM=$($PY -c 'import json; t = json.load(open("jobs/specs/fedgin.json"))["client_args"]["train"]; print("--batch-size", t["batch_size"], "--lr", t["lr"])')
mkdir -p "$OUT"
# 1. FedGIN in nvflare simulator (writes the phantom to $OUT/data).
[ -f "$OUT/fedgin/results/fedgin.json" ] || $PY -m fedxmodal demo --workdir "$OUT/fedgin" --seed "$SEED"
DATA="$OUT/fedgin/data"
# 2. Centralized GIN on the pooled sites (the federated/centralized ratio's denominator).
[ -f "$OUT/centralized_gin/results.json" ] || $PY -m fedxmodal train --regime centralized --sites "$DATA/ct-site" "$DATA/mr-site" --method gin \
    --method-args "$GIN" --epochs 60 --seed "$SEED" $OPTIM --out "$OUT/centralized_gin"
# 3. CT-only, without and with GIN, tested on CT and on the unseen MR.
for m in none gin; do
  [ -f "$OUT/ct_only_$m/results.json" ] || OMP_NUM_THREADS=1 $PY -m fedxmodal train --regime local --sites "$DATA/ct-site" \
      --eval-sites "$DATA/ct-site" "$DATA/mr-site" --method $m --method-args "$([ $m = gin ] && echo "$GIN" || echo '{}')" \
      --epochs 60 --seed "$SEED" $OPTIM --out "$OUT/ct_only_$m" &
done
wait
echo "results: $OUT/*/results.json, $OUT/fedgin/results/fedgin.md"
