#!/usr/bin/env bash
# The FedDA paper's numbers (docs/results.md, FedDA): every method federated (nvflare simulator), same
# network / budget / seeds, on the phantom abdomen and heart and (TOTALSEG=1) the real CT/MR pair;
# the adversarial-weight-0 control; the alignment probes; then the summary tables.
#   bash experiments/fedda_phantom.sh [OUT]            # default budget (12 rounds x 1 local epoch), seeds 0 1 2
#   QUICK=1 SEEDS=0 TASKS=abdomen METHODS="fedda none" bash experiments/fedda_phantom.sh runs/fedda-smoke   # smoke
# Resumable: finished cells are skipped (compare), so rerun to finish an interrupted grid.
#   TOTALSEG=1 TASKS= bash experiments/fedda_phantom.sh [OUT]   # only the real CT/MR pair (OUT/totalseg)
#   ROUNDS=30 EPOCHS=5 TOTALSEG=1 TASKS= bash experiments/fedda_phantom.sh runs/fedda_long   # a larger budget
#     (the real pair has ~28 CT / 12 MR training slices: at compare's 12 x 1 nothing is learned there)
# Layout: OUT/<name>/seed<k>/{main,adv0}/ (compare grids), OUT/<name>/data (the sites); name = the
# phantom task, or totalseg.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fedda}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}
TASKS=${TASKS-abdomen heart}  # (set but empty: no phantom task)
METHODS=${METHODS:-fedda fedda_cyclic fedda_gin none gin fedprox dsbn}
Q="${QUICK:+--quick} ${ROUNDS:+--rounds $ROUNDS} ${EPOCHS:+--local-epochs $EPOCHS}"
run_task() {  # name task data-dir
  local name=$1 task=$2 data=$3
  for seed in $SEEDS; do
    "$PY" -m fedxmodal compare --data "$data" --task "$task" $Q --regimes federated --seed "$seed" \
      --methods $METHODS --out "$OUT/$name/seed$seed/main"
    "$PY" -m fedxmodal compare --data "$data" --task "$task" $Q --regimes federated --seed "$seed" \
      --methods fedda --method-args '{"fedda": {"adv_weight": 0.0}}' --out "$OUT/$name/seed$seed/adv0"
    "$PY" experiments/fedda_probes.py --data "$data" "$OUT/$name/seed$seed/main" "$OUT/$name/seed$seed/adv0" \
      ${PROBE_STEPS:+--steps $PROBE_STEPS}
  done
}
for task in $TASKS; do
  run_task "$task" "$task" "$OUT/$task/data"   # an empty data folder gets the phantom (seed 0, tiny with QUICK)
done
if [ -n "${TOTALSEG:-}" ]; then  # the real TotalSegmentator CT/MR pair in ../shared (abdominal structures)
  [ -d "$OUT/totalseg/data" ] || "$PY" -m fedxmodal totalseg-pair --out "$OUT/totalseg/data"
  run_task totalseg abdomen "$OUT/totalseg/data"
fi
"$PY" experiments/summarize_fedda.py "$OUT" | tee "$OUT/summary.md"
