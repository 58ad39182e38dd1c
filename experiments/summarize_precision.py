"""Mean +- sd over seeds of FedGIN's final-model mean Dice per test modality, mixed precision vs
float32 (runs of experiments/precision_fedgin.sh), and whether the difference exceeds the seed
spread (+-1 sd intervals disjoint, as ``compare --seeds``).

    python experiments/summarize_precision.py runs/precision
"""

import json
import sys
from pathlib import Path

import numpy as np

from fedxmodal.apps.compare_seeds import exceeds_spread

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/precision")
rows = {}
for mode in ("mixed", "fp32"):
    per_site, secs = {}, []
    for run in sorted(root.glob(f"{mode}_seed*/results/fedgin.json")):
        res = json.loads(run.read_text())
        secs.append(res["simulator_seconds"])
        for site, summ in res["models"]["final"].items():
            per_site.setdefault(site, []).append(summ["mean_dice"])
    rows[mode] = ({s: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), len(v))
                   for s, v in per_site.items()}, secs)
sites = sorted(rows["mixed"][0] or rows["fp32"][0])
print("| precision | " + " | ".join(f"{s} mean Dice" for s in sites) + " | simulator s (per run) |")
print("|---|" + "---|" * (len(sites) + 1))
for mode, (stats, secs) in rows.items():
    cells = [f"{stats[s][0]:.3f} +- {stats[s][1]:.3f} (n={stats[s][2]})" if s in stats else "…" for s in sites]
    print(f"| {mode} | " + " | ".join(cells) + f" | {', '.join(f'{t:.0f}' for t in secs)} |")
for s in sites:
    a, b = rows["mixed"][0].get(s), rows["fp32"][0].get(s)
    if a and b:
        print(f"{s}: mixed - fp32 = {a[0] - b[0]:+.3f}; exceeds the seed spread: {exceeds_spread(a, b)}")
