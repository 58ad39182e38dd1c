#!/usr/bin/env bash
# The small sweep behind FedDA's default adversarial weight (lambda_max of the sigmoid ramp):
# FedDA-joint federated at each weight, seeds and budget as experiments/fedda_phantom.sh; the
# summary compares every weight with FedAvg (run fedda_phantom.sh into the same OUT first for the
# FedAvg rows, or set WITH_FEDAVG=1 to run FedAvg here too).
#   bash experiments/fedda_sweep.sh [OUT]                      # weights 0.001 0.003 0.01, seeds 0 1 2, abdomen
#   QUICK=1 SEEDS=0 WEIGHTS=0.003 bash experiments/fedda_sweep.sh runs/fedda-smoke   # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fedda}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}
TASKS=${TASKS:-abdomen}
WEIGHTS=${WEIGHTS:-0.001 0.003 0.01}
Q=${QUICK:+--quick}
for task in $TASKS; do
  for seed in $SEEDS; do
    [ -z "${WITH_FEDAVG:-}" ] || "$PY" -m fedxmodal compare --data "$OUT/$task/data" --task "$task" $Q \
      --regimes federated --seed "$seed" --methods none --out "$OUT/$task/seed$seed/main"
    for w in $WEIGHTS; do
      "$PY" -m fedxmodal compare --data "$OUT/$task/data" --task "$task" $Q --regimes federated --seed "$seed" \
        --methods fedda --method-args "{\"fedda\": {\"adv_weight\": $w}}" --out "$OUT/$task/seed$seed/w$w"
      "$PY" experiments/fedda_probes.py --data "$OUT/$task/data" "$OUT/$task/seed$seed/w$w" ${PROBE_STEPS:+--steps $PROBE_STEPS}
    done
  done
done
"$PY" experiments/summarize_fedda.py "$OUT" --task $TASKS
