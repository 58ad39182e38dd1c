#!/usr/bin/env bash
# Does CPU bfloat16 cost Dice? FedGIN on the abdominal phantom in the simulator, mixed precision
# (the default) vs float32 (--fp32), seeds 0 1 2 (phantom and run seed alike), ROUNDS rounds x 2
# local epochs (default 10), the same data for both precisions.
#   bash experiments/precision_fedgin.sh runs/precision     # ~15 min on an idle 2-core CPU
#   python experiments/summarize_precision.py runs/precision
set -euo pipefail
OUT=${1:-runs/precision}; ROUNDS=${ROUNDS:-10}; SEEDS=${SEEDS:-"0 1 2"}
PY=${PY:-.venv/bin/python}
for seed in $SEEDS; do
  data=$OUT/data_seed$seed
  [ -f $data/mr-site/dataset.json ] || $PY -m fedxmodal demo-data --out $data --seed $seed --quiet
  for mode in mixed fp32; do
    dir=$OUT/${mode}_seed$seed
    if [ -f $dir/results/fedgin.json ]; then echo "$dir: done earlier"; continue; fi
    extra=""; if [ $mode = fp32 ]; then extra="--fp32"; fi
    $PY -m fedxmodal demo --workdir $dir --seed $seed --rounds $ROUNDS --data $data $extra
  done
done
