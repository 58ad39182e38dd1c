"""``compare --seeds 0 1 2``: the grid once per seed (``<out>/seed<k>/``, each resumable), then
one table of mean +- sd over the seeds per cell, and for every method the difference to the
no-augmentation baseline (``none``) per regime and site, with whether it exceeds the seed spread.

"Exceeds the spread" means the two cells' mean +- 1 sd intervals do not overlap:
``|mean_a - mean_b| > sd_a + sd_b`` (sample sd, n - 1). With 3 seeds this is a coarse screen, not
a significance test; the table says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..metrics.report import _fmt
from .grid import REGIMES, applicable, cell_name, grid_cells, method_label, regime_label

BASELINE = "none"


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def mean_sd(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None, 0
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), sd, len(values)


def format_mean_sd(stat: tuple) -> str:
    """(mean, sd, n) -> "0.512 +- 0.034 (n=3)", "0.512 (n=1)" or "n/a" (no value)."""
    mu, sd, n = stat
    if mu is None:
        return "n/a"
    return f"{mu:.3f} +- {sd:.3f} (n={n})" if n > 1 else f"{mu:.3f} (n=1)"


def exceeds_spread(a: tuple, b: tuple) -> bool | None:
    """(mean, sd, n) pairs -> whether the +-1 sd intervals are disjoint (None: not enough seeds)."""
    if a[0] is None or b[0] is None or a[2] < 2 or b[2] < 2:
        return None
    return abs(a[0] - b[0]) > a[1] + b[1]


def summarize_seeds(out: Path, seeds, methods, sites, modality: dict, regimes=REGIMES) -> dict:
    """Read every seed's cell JSONs; write ``compare_seeds.md`` / ``.json`` in ``out``."""
    stats = {}
    for m, r in grid_cells(methods, sites, regimes):
        if not applicable(m, r):
            continue
        per_site = {}
        for s in sites:
            vals = []
            for seed in seeds:
                p = seed_dir(out, seed) / "results" / f"{cell_name(m, r)}.json"
                if p.is_file():
                    vals.append(json.loads(p.read_text())["per_site"][s]["mean_dice"])
            per_site[s] = mean_sd(vals)
        stats[(m, r)] = per_site
    cols = [modality[s] for s in sites]
    lines = [f"Mean 3D Dice, mean +- sd over seeds {list(seeds)} (n = seeds finished).\n",
             "| method | regime | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (m, r), per_site in stats.items():
        cells = [f"{_fmt(mu)} +- {_fmt(sd)} (n={n})" if mu is not None else "…" for mu, sd, n in per_site.values()]
        lines.append(f"| {method_label(m)} | {regime_label(r, modality)} | " + " | ".join(cells) + " |")
    lines += ["", f"Difference to `{BASELINE}` in the same regime; **yes**: the +-1 sd intervals over seeds do not "
                  "overlap (a coarse screen with few seeds, not a significance test).\n",
              "| method | regime | " + " | ".join(f"{c}: diff, exceeds spread?" for c in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    diffs = {}
    for (m, r), per_site in stats.items():
        base = stats.get((BASELINE, r))
        if m == BASELINE or base is None:
            continue
        row = []
        for s in sites:
            a, b = per_site[s], base[s]
            ex = exceeds_spread(a, b)
            d = None if a[0] is None or b[0] is None else a[0] - b[0]
            diffs[f"{cell_name(m, r)}/{s}"] = {"diff": d, "exceeds_spread": ex}
            row.append(f"{'+' if d is not None and d >= 0 else ''}{_fmt(d)}, "
                       f"{'n/a' if ex is None else ('**yes**' if ex else 'no')}")
        lines.append(f"| {method_label(m)} | {regime_label(r, modality)} | " + " | ".join(row) + " |")
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_seeds.md").write_text(md)
    (out / "compare_seeds.json").write_text(json.dumps({
        "seeds": list(seeds), "cells": {f"{cell_name(m, r)}/{s}": dict(zip(("mean", "sd", "n"), v))
                                        for (m, r), ps in stats.items() for s, v in ps.items()},
        "diff_to_baseline": diffs}, indent=2))
    return {"markdown": md, "stats": stats, "diffs": diffs}
