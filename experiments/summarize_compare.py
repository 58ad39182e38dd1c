"""The federated GIN paper's claims against one or more comparison grids (``compare.json`` of
``python -m fedxmodal compare``): mean Dice on the unseen modality per method (local cells: one
site alone, tested on the other site), federated / centralized ratios, pancreas on the unseen
modality, and the summed wall time of the cells.

    python experiments/summarize_compare.py runs/compare/abdomen/grid runs/compare/heart/grid [...]

Markdown on stdout; the best method of each column in bold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedxmodal.apps.grid import method_label
from fedxmodal.methods import METHODS


def summarize(grid: Path) -> str:
    summary = json.loads((grid / "compare.json").read_text())
    cells, config = summary["cells"], summary["config"]
    sites = config["sites"]
    methods = [m for m in METHODS if any(k.startswith(f"{m}__") for k in cells)]
    directions = [(a, b) for a in sites for b in sites if a != b]  # trained on a alone, tested on b
    unseen = {(m, a): cells.get(f"{m}__local-{a}", {}).get("per_site", {}).get(b, {}).get("mean_dice")
              for m in methods for a, b in directions}
    best = {a: max((v for (m, s), v in unseen.items() if s == a and v is not None), default=None)
            for a, _ in directions}

    def fmt(v, bold=False):
        return "n/a" if v is None else (f"**{v:.3f}**" if bold else f"{v:.3f}")

    head = [f"{a} only -> {b}" for a, b in directions] + [f"fed/central {s}" for s in sites]
    lines = [f"### {config['task']} (seed {config['seed']}, {config['budget']['rounds']} rounds x "
             f"{config['budget']['local_epochs']} local epoch)", "",
             "| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m in methods:
        row = [fmt(unseen[(m, a)], unseen[(m, a)] is not None and unseen[(m, a)] == best[a]) for a, _ in directions]
        ratio = summary["fed_central_ratio"].get(m, {})
        row += [fmt(ratio.get(s)) for s in sites]
        lines.append(f"| {method_label(m)} | " + " | ".join(row) + " |")
    if "pancreas" in config["structures"]:
        pan = {m: [cells.get(f"{m}__local-{a}", {}).get("per_site", {}).get(b, {}).get("dice", {}).get("pancreas")
                   for a, b in directions] for m in methods}
        lines += ["", "Pancreas Dice on the unseen modality (" + ", ".join(f"{a} only -> {b}" for a, b in directions)
                  + "): " + "; ".join(f"{method_label(m)} " + "/".join(fmt(v) for v in vals)
                                      for m, vals in pan.items())]
    ran = [c for c in cells.values() if c.get("seconds")]
    seconds = sum(c["seconds"] for c in ran)
    lines += ["", f"Cells run: {len(ran)}; their summed wall time {seconds / 60:.0f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(summarize(Path(g)) for g in sys.argv[1:]))
