#!/usr/bin/env bash
# The data factory's phase-2 numbers (docs/results.md, "Data factory, phase 2"): `factory adapt` at
# SEEDS with a phase-1 factory (experiments/factory_phase1.sh's seed-0 runs), on the 3+1-domain
# phantom and on the real CT/MR pair (+ the phantom's mr-t1-site and the late cect-site), then the
# baselines (experiments/factory_baselines.py) at the same seeds and labelled slices: at phase 2's
# own budget (STEPS source steps + STEPS fine-tuning steps) and with 5x the source steps, then the
# tables (experiments/summarize_factory_phase2.py -> OUT/<data>/summary.md) and what each branch of
# the adapted targets scores alone (experiments/factory_branches.py -> OUT/<data>/branches.md).
#   bash experiments/factory_phase2.sh [OUT] [PHASE1]   # runs/factory2 runs/factory; STEPS=200 SEEDS="0 1 2"
#   STEPS=4 SEEDS=0 bash experiments/factory_phase2.sh /tmp/f2-smoke runs/factory    # smoke
# Each adapt run starts 4 site processes at 1 thread (~9 min per seed at 200 steps on 2 cores);
# run nothing else beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/factory2}
P1=${2:-runs/factory}
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-200}
SEEDS=${SEEDS:-0 1 2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$P1/phantom/key/seed0/checkpoints/factory/FL_global_model.pt" ] \
  || { echo "no phase-1 factory under $P1 (run experiments/factory_phase1.sh $P1 first)" >&2; exit 2; }
[ -f "$P1/totalseg/data/cect-site/dataset.json" ] \
  || "$PY" -m fedxmodal demo-data --sites cect-site --out "$P1/totalseg/data" --quiet
TARGETS="mr-site mr-t1-site cect-site"
factory() {  # phase 1's seed-0 global model with its job (the generator's settings)
  echo "--factory-model $P1/$1/key/seed0/checkpoints/factory/FL_global_model.pt --job $P1/$1/key/seed0/jobs/factory"
}
for seed in $SEEDS; do
  [ -f "$OUT/phantom/adapt/seed$seed/dice.json" ] || "$PY" -m fedxmodal factory adapt \
    $(factory phantom) \
    --data "$P1/phantom/data" --source ct-site --targets $TARGETS --seed "$seed" --steps "$STEPS" \
    --out "$OUT/phantom/adapt/seed$seed"
  # the real MR site is one volume cut into slabs: two labelled training slabs, hence --allow-fewer
  [ -f "$OUT/totalseg/adapt/seed$seed/dice.json" ] || "$PY" -m fedxmodal factory adapt \
    $(factory totalseg) \
    --data "$P1/totalseg/data" --source ct-site --targets $TARGETS --seed "$seed" --steps "$STEPS" --allow-fewer \
    --out "$OUT/totalseg/adapt/seed$seed"
done
for data in phantom totalseg; do
  fewer=$([ $data = totalseg ] && echo --allow-fewer || true)
  for src in "$STEPS" $((5 * STEPS)); do
    "$PY" experiments/factory_baselines.py --data "$P1/$data/data" --source ct-site --targets $TARGETS \
      --seeds $SEEDS --steps "$src" --finetune-steps "$STEPS" $fewer --out "$OUT/$data/baselines_$src"
  done
  "$PY" experiments/summarize_factory_phase2.py --adapt "$OUT/$data/adapt" \
    --baselines "$OUT/$data/baselines_$STEPS" "$OUT/$data/baselines_$((5 * STEPS))" --out "$OUT/$data/summary.md"
  "$PY" experiments/factory_branches.py --adapt "$OUT/$data/adapt" --data "$P1/$data/data" | tee "$OUT/$data/branches.md"
done
