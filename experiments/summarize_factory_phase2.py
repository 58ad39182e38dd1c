"""The data factory's phase 2 against its baselines, per target site: test Dice per
structure, mean +- sd over seeds, of ``factory adapt --seed k`` (one ``seed<k>/dice.json`` per
seed, experiments/factory_phase2.sh) and of every baseline of experiments/factory_baselines.py
(one or more output folders, e.g. at the factory's budget and at a larger one), with the mean
wall time of a seed (the factory: its simulator run, source and targets; a baseline: its cell --
``finetune`` reuses ``source_only``'s source model, so its time is the fine-tuning and tests only),
and whether the
factory's mean Dice differs from each baseline's beyond the seed spread (|d| > sd_a + sd_b,
``compare_seeds.exceeds_spread``).

    python experiments/summarize_factory_phase2.py --adapt runs/factory2/phantom/adapt \
        --baselines runs/factory2/phantom/baselines_200 runs/factory2/phantom/baselines_1000 [--out summary.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))

from fedxmodal.apps.compare_seeds import exceeds_spread, format_mean_sd, mean_sd  # noqa: E402

FACTORY = "factory"
SECONDS = "_seconds"  # a seed's wall time, beside its targets
BASELINE_ORDER = ("source_only", "finetune", "gin_source")  # rows per baselines folder


def _num(v) -> float:
    return math.nan if v is None else float(v)


def factory_cells(adapt_dir: Path) -> tuple[dict, dict]:
    """``{seed: {target: {"mean": x, <structure>: x}}}`` from ``adapt_dir/seed*/dice.json`` (failed
    targets left out), and the runs' steps per fit and source branch's validation Dice (mean, sd, n)."""
    cells, steps, source_dice = {}, set(), []
    for path in sorted(Path(adapt_dir).glob("seed*/dice.json")):
        seed = int(path.parent.name[len("seed"):])
        res = json.loads(path.read_text())
        cells[seed] = {SECONDS: res.get("simulator_seconds")}
        source_dice.append(_num(res.get("source", {}).get("metrics", {}).get("dice")))
        for target, r in res["targets"].items():
            if r.get("failed"):
                continue
            m = r["metrics"]
            steps.add(int(m.get("steps", 0)))
            cells[seed][target] = {"mean": _num(m.get("dice")),
                                   **{k[len("dice_"):]: _num(v) for k, v in m.items() if k.startswith("dice_")}}
    if not cells:
        raise SystemExit(f"error: {adapt_dir}: no seed*/dice.json (run `python -m fedxmodal factory adapt ... "
                         f"--seed k --out {adapt_dir}/seed<k>`)")
    return cells, {"steps": sorted(steps), "source_validation_dice": mean_sd(source_dice)}


def baseline_cells(folder: Path) -> tuple[dict, dict]:
    """``{(baseline, tag, label): {seed: {target: {...}}}}`` from a factory_baselines.py folder (tag:
    its source and, for ``finetune``, fine-tuning steps), and the folder's config."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: {folder}: no config.json (not an experiments/factory_baselines.py output)")
    config = json.loads(config_path.read_text())
    cells: dict = {}
    for path in sorted((folder / "results").glob("*__seed*.json")):
        r = json.loads(path.read_text())
        tag = f"{config['steps']} source steps" + (f" + {config['finetune_steps']} fine-tuning"
                                                    if r["baseline"] == "finetune" else "")
        per = cells.setdefault((r["baseline"], tag, r["label"]), {}).setdefault(int(r["seed"]), {})
        per[SECONDS] = r.get("seconds")
        for target, t in r["targets"].items():
            if "error" in t:
                continue
            per[target] = {"mean": _num(t.get("mean_dice")), **{k: _num(v) for k, v in t.get("dice", {}).items()}}
    return cells, config


def stats(by_seed: dict, target: str, col: str) -> tuple:
    return mean_sd([by_seed[s][target].get(col, math.nan) for s in sorted(by_seed) if target in by_seed[s]])


def summarize(adapt_dir, baseline_dirs) -> tuple[str, dict]:
    """The markdown tables (one per target) and their numbers."""
    fac, fac_cfg = factory_cells(adapt_dir)
    rows = {(FACTORY, f"{'/'.join(map(str, fac_cfg['steps']))} steps per fit",
             "Data factory, phase 2 (0.5 / 0.5 own + source branch)"): fac}
    structures: list[str] = []
    for folder in baseline_dirs:
        cells, config = baseline_cells(folder)
        rows.update(sorted(cells.items(), key=lambda kv: BASELINE_ORDER.index(kv[0][0])))
        structures = structures or list(config["structures"])
    if not structures:
        structures = sorted({k for s in fac.values() for t, d in s.items() if t != SECONDS for k in d if k != "mean"})
    targets = sorted({t for s in fac.values() for t in s if t != SECONDS})
    cols = ["mean", *structures]
    source = fac_cfg["source_validation_dice"]
    md = [f"Source branch (E_s + S_s) on the source's validation split: {format_mean_sd(source)} mean Dice\n"]
    numbers = {"source_validation_dice": source}
    for target in targets:
        md += [f"## {target}\n", "| model | budget | s per seed | " + " | ".join(cols) + " |",
               "|---|---|---|" + "---|" * len(cols)]
        numbers[target] = {}
        for (name, tag, label), by_seed in rows.items():
            st = {c: stats(by_seed, target, c) for c in cols}
            numbers[target][f"{name} ({tag})"] = {c: dict(zip(("mean", "sd", "n"), v)) for c, v in st.items()}
            sec = mean_sd([_num(by_seed[k].get(SECONDS)) for k in sorted(by_seed)])[0]
            md.append(f"| {label} | {tag} | {'-' if sec is None else f'{sec:.0f}'} | "
                      + " | ".join(format_mean_sd(st[c]) for c in cols) + " |")
        f = stats(fac, target, "mean")
        md.append("")
        for (name, tag, label), by_seed in rows.items():
            if name == FACTORY:
                continue
            b = stats(by_seed, target, "mean")
            verdict = exceeds_spread(f, b)
            if verdict is None:
                text = "too few seeds for a verdict"
            else:
                text = "beyond the seed spread" if verdict else "within the seed spread"
            delta = math.nan if f[0] is None or b[0] is None else f[0] - b[0]
            md.append(f"- factory - {name} ({tag}): {delta:+.3f} mean Dice, {text}")
            numbers[target][f"factory - {name} ({tag})"] = {"delta": delta, "exceeds_spread": verdict}
        md.append("")
    return "\n".join(md), numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapt", required=True, help="folder of seed<k>/dice.json (factory adapt --out)")
    p.add_argument("--baselines", nargs="*", default=[], help="experiments/factory_baselines.py output folders")
    p.add_argument("--out", help="also write the tables here (markdown) and the numbers beside it (.json)")
    a = p.parse_args(argv)
    md, numbers = summarize(a.adapt, a.baselines)
    print(md)
    if a.out:
        Path(a.out).write_text(md)
        Path(a.out).with_suffix(".json").write_text(json.dumps(numbers, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
