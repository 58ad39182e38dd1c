"""Tables of experiments/fedcowpro_oneshot.py's cells: mean +- sd over seeds of the one-shot Dice per
structure, per query modality, same-modality and cross-modality supports, settings 1 and 2, the
SSL-ALPNet protocol (in the query's ground-truth range) and beyond it the whole volume, quadrant
prior off and on; FedCoWPro against every other row with "exceeds the spread" = |difference of
means| > sd_a + sd_b; SSL-ALPNet's published 1-shot numbers beside them; wall times.

Usage: python experiments/fedcowpro_summary.py OUT [--md OUT/summary.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# SSL-ALPNet 1-shot Dice (Ouyang et al. 2020, Table 1; COCO-pretrained encoder), x100.
PUBLISHED = {("CT", 1): {"kidney_left": 72.4, "kidney_right": 71.8, "spleen": 71.0, "liver": 78.3},
             ("MR", 1): {"kidney_left": 81.9, "kidney_right": 85.2, "spleen": 72.2, "liver": 76.1},
             ("CT", 2): {"kidney_left": 63.3, "kidney_right": 54.8, "spleen": 60.3, "liver": 73.7},
             ("MR", 2): {"kidney_left": 73.6, "kidney_right": 78.4, "spleen": 67.0, "liver": 73.1}}
MAIN = ("fedcowpro", "federated")


def ms(values) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) if v else (math.nan, 0.0, 0)


def fmt(m, s, n) -> str:
    return "n/a" if n == 0 else (f"{100 * m:.1f} +- {100 * s:.1f}" if n > 1 else f"{100 * m:.1f}")


def load(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


def collect(cells, protocol: str, cross: bool):
    """{(method, regime, setting): {(query modality, structure | 'mean'): [value per seed]}}."""
    table = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if "evaluation" not in c:
            continue
        key = (c["method"], c["regime"], c["setting"])
        per_seed = defaultdict(list)
        for pair in c["evaluation"].values():
            if (pair["support_modality"] != pair["query_modality"]) != cross:
                continue
            res = pair["settings"].get(protocol)
            if not res:
                continue
            for s, v in res["dice"].items():
                per_seed[(pair["query_modality"], s)].append(v)
            per_seed[(pair["query_modality"], "mean")].append(res["mean_dice"])
        for k, v in per_seed.items():
            table[key][k].append(float(np.nanmean(v)) if v else math.nan)
    return table


NAMES = {"fedcowpro": "FedCoWPro", "cowpro": "CoWPro (CE + alignment)", "ssl_alpnet": "SSL-ALPNet",
         "untrained": "floor: untrained encoder", "raw": "floor: raw intensities"}


def row_order(key) -> tuple:
    """(method, regime, setting) -> the tables' row order: by setting, then federated, centralized,
    each site alone, the floors; within a regime the methods in NAMES' order."""
    method, regime, setting = key
    rank = {"federated": 0, "centralized": 1, "floor": 3}.get(regime.split(":")[0], 2)
    return setting, rank, regime, list(NAMES).index(method) if method in NAMES else len(NAMES), method


def render_table(table, structures, modalities, title: str) -> str:
    cols = [(m, s) for m in modalities for s in [*structures, "mean"]]
    lines = [f"### {title}", "", "| method | regime | setting | " + " | ".join(f"{m} {s}" for m, s in cols) + " |",
             "|" + " --- |" * (3 + len(cols))]
    for (method, regime, setting) in sorted(table, key=row_order):
        row = table[(method, regime, setting)]
        lines.append(f"| {method} | {regime} | {setting if regime != 'floor' else '-'} | "
                     + " | ".join(fmt(*ms(row.get(c, []))) for c in cols) + " |")
    return "\n".join(lines) + "\n"


DETERMINISTIC = {("raw", "floor")}  # no seed in it: computed once, its spread is 0


def overview(cells) -> str:
    """One row per (method, regime, setting): the mean over structures of every protocol, per modality."""
    tables = [collect(cells, p, False) for p in ("in_range", "whole_volume", "in_range_prior")]
    cross = collect(cells, "in_range", True)
    lines = ["### Overview: mean Dice over the structures, per query modality", "",
             "| method | regime | setting | CT in range | MR in range | CT whole volume | MR whole volume | CT prior on "
             "| MR prior on | CT query, MR support | MR query, CT support |", "|" + " --- |" * 11]
    for k in sorted(tables[0], key=row_order):
        vals = [fmt(*ms(t[k].get((m, "mean"), []))) for t in (*tables, cross) for m in ("CT", "MR")]
        floor = k[1] == "floor"
        lines.append(f"| {NAMES.get(k[0], k[0])} | {'-' if floor else k[1]} | {'-' if floor else k[2]} | "
                     + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _exceeds(diff, a, b, b_deterministic: bool = False) -> str:
    """(mean, sd, n) pairs: 'yes' / 'no' with 2+ seeds each (or ``b`` deterministic), 'n/a (1 seed)'
    otherwise (no spread)."""
    if a[2] < 2 or (b[2] < 2 and not b_deterministic):
        return "n/a (1 seed)"
    return "yes" if abs(diff) > a[1] + b[1] else "no"


def spread_check(table, modalities) -> str:
    lines = ["### FedCoWPro (federated) against every other row: mean over structures, per query modality",
             "", "| other | setting | modality | FedCoWPro | other | difference | exceeds the spread |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (method, regime, setting), row in sorted(table.items()):
        if (method, regime) == MAIN:
            continue
        main = table.get((*MAIN, setting))
        if not main:
            continue
        for m in modalities:
            a, b = ms(main.get((m, "mean"), [])), ms(row.get((m, "mean"), []))
            if a[2] == 0 or b[2] == 0:
                continue
            diff = a[0] - b[0]
            lines.append(f"| {method} {regime} | {setting} | {m} | {fmt(*a)} | {fmt(*b)} | {100 * diff:+.1f} | "
                         f"{_exceeds(diff, a, b, (method, regime) in DETERMINISTIC)} |")
    return "\n".join(lines) + "\n"


def published(structures) -> str:
    lines = ["### SSL-ALPNet, published 1-shot Dice (COCO-pretrained encoder; ours: trained from scratch, CPU budget)",
             "", "| modality | setting | " + " | ".join(structures) + " | mean |", "|" + " --- |" * (3 + len(structures))]
    for (mod, setting), d in PUBLISHED.items():
        vals = [d.get(s) for s in structures]
        known = [v for v in vals if v is not None]
        lines.append(f"| {mod} | {setting} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                     + f" | {np.mean(known):.1f} |")
    return "\n".join(lines) + "\n"


def timings(cells) -> str:
    fed = [c["federated_wall_seconds"] for c in cells if c.get("federated_wall_seconds")]
    here = [c["train_seconds"] for c in cells if c.get("train_seconds")]
    per = [p["seconds_per_volume_structure"] for c in cells for p in c.get("evaluation", {}).values()]
    lines = ["### Wall times", ""]
    for what, vals in (("federated run (nvflare simulator, sites in parallel, with validation and cross-site "
                        "evaluation)", fed), ("local / centralized training", here)):
        if vals:
            m, s, n = ms(vals)
            lines.append(f"- {what}: {m:.1f} +- {s:.1f} s over {n} runs")
    if per:
        lines.append(f"- one-shot inference, one structure in one query volume (in-range and whole-volume "
                     f"protocols, prior on and off): {np.mean(per):.2f} s")
    return "\n".join(lines) + "\n"


def failure_reason(error: str) -> str:
    """The line of a failed cell's log that names the site and its problem (the site script's
    ``site <name>: bad data: ...``), else the error's first line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    named = [line for line in lines if line.startswith(("RuntimeError: site", "ValueError: site"))]
    return (named[0] if named else lines[0] if lines else "?")[:300]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--md")
    a = p.parse_args(argv)
    out = Path(a.out)
    cells = load(out)
    ok = [c for c in cells if "evaluation" in c]
    if not ok:
        print(f"no finished cell under {out / 'results'}", file=sys.stderr)
        return 1
    structures = ok[0]["structures"]
    modalities = sorted({p["query_modality"] for c in ok for p in c["evaluation"].values()})
    budget = ok[0]["budget"]
    parts = [f"## One-shot Dice x100, mean +- sd over seeds ({out})\n\nBudget per cell: {budget}; encoder trained "
             "from scratch, CPU budget. Support: the first labelled volume of the support site holding the "
             "structure (validation, then training, then test), never the query itself.\n"]
    parts.append(overview(ok))
    for protocol, what in (("in_range", "SSL-ALPNet protocol (query slices in the ground-truth range)"),
                           ("whole_volume", "whole query volume (no ground-truth range)"),
                           ("in_range_prior", "SSL-ALPNet protocol, quadrant prior on")):
        parts.append(render_table(collect(ok, protocol, False), structures, modalities,
                                  f"{what}, support of the same modality"))
    parts.append(render_table(collect(ok, "in_range", True), structures, modalities,
                              "cross-modality: support of the OTHER modality (e.g. a CT support segmenting an MR)"))
    parts.append(spread_check(collect(ok, "in_range", False), modalities))
    parts.append(published(structures))
    parts.append(timings(ok))
    failed = [c for c in cells if "error" in c]
    if failed:
        parts.append("### Cells without a result\n\n" + "\n".join(
            f"- {c['method']} {c['regime']} setting {c['setting']} seed {c['seed']}: {failure_reason(c['error'])}"
            for c in failed))
    text = "\n".join(parts)
    Path(a.md or out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
