"""Print the markdown tables of docs/results.md from the runs of experiments/fedgin_phantom.sh.

Usage: python experiments/summarize_fedgin.py [RUN_DIR] [--model final|best]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fedxmodal.metrics.report import dice_table

SITES = (("ct-site", "CT"), ("mr-site", "MR"))


def load(run_dir: Path, model: str) -> dict[str, dict]:
    """row name -> {site: summary} for every run found."""
    runs = {}
    fed = run_dir / "fedgin" / "results" / "fedgin.json"
    if fed.is_file():
        runs["FedGIN (federated, NVFlare simulator)"] = json.loads(fed.read_text())["models"][model]
    for name, sub in (("GIN, centralized (pooled CT + MR)", "centralized_gin"),
                      ("no augmentation, CT only", "ct_only_none"), ("GIN, CT only", "ct_only_gin")):
        res = run_dir / sub / "results.json"
        if res.is_file():
            runs[name] = json.loads(res.read_text())["models"][model]
    return runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", nargs="?", default="runs/fedgin_phantom")
    p.add_argument("--model", choices=("final", "best"), default="final")
    a = p.parse_args()
    runs = load(Path(a.run_dir), a.model)
    if not runs:
        raise SystemExit(f"no results under {a.run_dir}: run experiments/fedgin_phantom.sh first")
    structures = list(next(iter(next(iter(runs.values())).values()))["dice"])
    for site, mod in SITES:
        rows = [(name, by_site[site]) for name, by_site in runs.items() if site in by_site]
        print(f"\n#### {mod} test volumes ({site}), {a.model} models\n")
        print(dice_table(rows, structures))
    fed, cen = runs.get("FedGIN (federated, NVFlare simulator)"), runs.get("GIN, centralized (pooled CT + MR)")
    if fed and cen:
        print("\n#### FedGIN / centralized GIN (mean Dice ratio)\n")
        print("| test modality | FedGIN | centralized | ratio |\n|---|---|---|---|")
        for site, mod in SITES:
            f, c = fed[site]["mean_dice"], cen[site]["mean_dice"]
            print(f"| {mod} | {f:.3f} | {c:.3f} | {f / c if c else math.nan:.2f} |")
    none, gin = runs.get("no augmentation, CT only"), runs.get("GIN, CT only")
    if none and gin:
        print("\n#### CT-only training tested on the unseen MR: GIN's lift per structure\n")
        print("| structure | without GIN | with GIN | change |\n|---|---|---|---|")
        for s in structures + ["mean"]:
            x = none["mr-site"]["mean_dice"] if s == "mean" else none["mr-site"]["dice"][s]
            y = gin["mr-site"]["mean_dice"] if s == "mean" else gin["mr-site"]["dice"][s]
            print(f"| {s} | {x:.3f} | {y:.3f} | {y - x:+.3f} |")


if __name__ == "__main__":
    main()
