#!/usr/bin/env bash
# docs/privacy.md's table: what each site output filter (differential privacy, NVFlare's
# PercentilePrivacy / SVTPrivacy / ExcludeVars, quantization) costs in Dice and saves in bytes on
# the phantom FedGIN federation. Every row: the FedGIN job of jobs/specs/fedgin.json at the same
# reduced budget (10 rounds instead of 30, x the job's 2 local epochs; weight differences sent;
# output guard on), one
# `nvflare simulator` at a time; the final global model evaluated on both sites' test volumes.
# Usage: bash experiments/privacy_phantom.sh [OUT_DIR] [--rows none,fp16,...] [--rounds N]
#        (about 5-6 minutes per row on 2 busy CPU cores; a finished row is skipped: delete its folder to redo it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/privacy_phantom}
shift || true
nice -n 5 .venv/bin/python experiments/privacy_phantom.py "$OUT" "$@"
