"""Print the markdown tables of docs/results.md from the runs of experiments/fedgin_phantom.sh.

Usage: python experiments/summarize_fedgin.py [RUN_DIR ...] [--model final|best]

One RUN_DIR: that run's tables. Several (one per seed, ``SEED=k bash experiments/fedgin_phantom.sh
runs/fedgin_phantom/seedk``): mean +- sd over them per cell, and for the two claims (federated vs
centralized, GIN's lift on the unseen MR) the difference and whether it exceeds the seed spread
(the +-1 sd intervals do not overlap; a coarse screen with few seeds, not a significance test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedxmodal.apps.compare_seeds import mean_sd, exceeds_spread
from fedxmodal.metrics.report import _fmt

SITES = (("ct-site", "CT"), ("mr-site", "MR"))
FED, CEN = "FedGIN (federated, NVFlare simulator)", "GIN, centralized (pooled CT + MR)"
NONE, GIN = "no augmentation, CT only", "GIN, CT only"
ROWS = ((CEN, "centralized_gin"), (NONE, "ct_only_none"), (GIN, "ct_only_gin"))


def load(run_dir: Path, model: str) -> dict[str, dict]:
    """row name -> {site: summary} for every run found."""
    runs = {}
    fed = run_dir / "fedgin" / "results" / "fedgin.json"
    if fed.is_file():
        runs[FED] = json.loads(fed.read_text())["models"][model]
    for name, sub in ROWS:
        res = run_dir / sub / "results.json"
        if res.is_file():
            runs[name] = json.loads(res.read_text())["models"][model]
    return runs


def cell(runs: list[dict], row: str, site: str, structure: str | None) -> tuple:
    """(mean, sd, n) over the runs of one row's Dice at one site (structure None: the mean Dice)."""
    vals = [r[row][site]["mean_dice"] if structure is None else r[row][site]["dice"][structure]
            for r in runs if row in r and site in r[row]]
    return mean_sd(vals)


def fmt(stat: tuple, n_runs: int = 1) -> str:
    """mean +- sd; ``(n=k)`` when only k of the n_runs seeds have the cell."""
    mean, sd, n = stat
    if mean is None:
        return "…"
    text = _fmt(mean) if n == 1 else f"{_fmt(mean)} +- {_fmt(sd)}"
    return text if n == n_runs else f"{text} (n={n})"


def verdict(a: tuple, b: tuple) -> str:
    ex = exceeds_spread(a, b)
    return "n/a" if ex is None else ("**yes**" if ex else "no")


def tables(runs: list[dict], model: str, n_dirs: int) -> str:
    rows = [name for name in (FED, CEN, NONE, GIN) if any(name in r for r in runs)]
    structures = list(next(iter(next(r for r in runs if r)[rows[0]].values()))["dice"])
    over = "" if n_dirs == 1 else f", mean +- sd over {n_dirs} seeds"
    out = []
    for site, mod in SITES:
        out += [f"\n#### {mod} test volumes ({site}), {model} models{over}\n",
                "| | " + " | ".join(structures) + " | mean |", "|---|" + "---|" * (len(structures) + 1)]
        out += [f"| {row} | " + " | ".join(fmt(cell(runs, row, site, s), n_dirs) for s in (*structures, None)) + " |"
                for row in rows]
    if FED in rows and CEN in rows:
        out += ["\n#### FedGIN against centralized GIN (mean Dice)\n",
                "| test modality | FedGIN | centralized | ratio of means | difference exceeds the seed spread? |",
                "|---|---|---|---|---|"]
        for site, mod in SITES:
            f, c = cell(runs, FED, site, None), cell(runs, CEN, site, None)
            ratio = f[0] / c[0] if f[0] is not None and c[0] else None
            out.append(f"| {mod} | {fmt(f, n_dirs)} | {fmt(c, n_dirs)} | {_fmt(ratio)} | {verdict(f, c)} |")
    if NONE in rows and GIN in rows:
        out += ["\n#### CT-only training tested on the unseen MR: GIN's lift per structure\n",
                "| structure | without GIN | with GIN | change | exceeds the seed spread? |", "|---|---|---|---|---|"]
        for s in (*structures, None):
            x, y = cell(runs, NONE, "mr-site", s), cell(runs, GIN, "mr-site", s)
            change = None if x[0] is None or y[0] is None else y[0] - x[0]
            sign = "+" if change is not None and change >= 0 else ""
            out.append(f"| {s or 'mean'} | {fmt(x, n_dirs)} | {fmt(y, n_dirs)} | {sign}{_fmt(change)} "
                       f"| {verdict(y, x)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dirs", nargs="*", default=["runs/fedgin_phantom"])
    p.add_argument("--model", choices=("final", "best"), default="final")
    a = p.parse_args()
    runs = [load(Path(d), a.model) for d in a.run_dirs]
    if not any(runs):
        raise SystemExit(f"no results under {a.run_dirs}: run experiments/fedgin_phantom.sh first")
    print(tables(runs, a.model, len(a.run_dirs)))


if __name__ == "__main__":
    main()
