"""The FedDA paper's numbers from the runs of experiments/fedda_phantom.sh (and fedda_sweep.sh):
per-structure 3D Dice on each modality, mean +- sd over seeds, each method's difference to FedAvg
and whether it exceeds the seed spread; wall time and bytes per round; the alignment probes.

    python experiments/summarize_fedda.py runs/fedda [--task abdomen]     # markdown on stdout

Layout read: ``<root>/<task>/seed<k>/<variant>/compare.json`` (a ``compare`` grid; variant
``main`` = all methods, ``adv0`` = FedDA with the adversarial weight 0, ``w<weight>`` = the sweep),
``.../probes.json`` (experiments/fedda_probes.py) and each federated cell's ``simulator.log``.
A difference "exceeds the spread" when |mean_m - mean_FedAvg| > sd_m + sd_FedAvg (sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path

BASELINE = "none"  # FedAvg (spatial augmentation only)
LABELS = {"none": "FedAvg", "gin": "FedAvg + GIN", "fedprox": "FedProx", "dsbn": "FedBN", "fedda": "FedDA joint",
          "fedda_cyclic": "FedDA cyclic", "fedda_gin": "FedDA + GIN"}
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_ROUND = re.compile(r"round (\d+): train payload")


def label(method: str, variant: str) -> str:
    name = LABELS.get(method, method)
    return name if variant == "main" else f"{name} [{'adv_weight 0' if variant == 'adv0' else variant}]"


def load(root: Path, task: str) -> dict:
    """{(variant, method): [cell per seed]} for the federated cells, plus probes."""
    runs, probes = defaultdict(list), defaultdict(list)
    for grid in sorted((root / task).glob("seed*/*/compare.json")):
        variant = grid.parent.name
        cells = json.loads(grid.read_text())["cells"]
        pj = grid.parent / "probes.json"
        probe = json.loads(pj.read_text()) if pj.is_file() else {}
        for name, cell in cells.items():
            if cell.get("regime") != "federated":
                continue
            cell["cost"] = cost(grid.parent / "runs" / name / "simulator.log")
            runs[(variant, cell["method"])].append(cell)
            if name in probe:
                probes[(variant, cell["method"])].append(probe[name])
    return {"runs": runs, "probes": probes}


def cost(log: Path) -> dict:
    """Wall seconds per round and bytes per site per round, rounds 1..end (round 0 includes the
    start-up, and has no peer in cyclic): a round runs from the server's first ``train`` payload
    of that round to the first of the next (the last: to its last accepted result); down = the
    server's ``payload_bytes`` per site, up = the output guard's accepted ``train`` results."""
    if not log.is_file():
        return {}
    first_send, last_result, down, up = {}, None, [], []
    rnd = None
    for line in log.read_text(errors="replace").splitlines():
        m = _TS.match(line)
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None
        r = _ROUND.search(line)
        if r and " train payload" in line and "payload_bytes=" in line and t:
            rnd = int(r.group(1))
            first_send.setdefault(rnd, t)
            if rnd >= 1:
                down.append(int(line.rsplit("payload_bytes=", 1)[1].split()[0]))
        elif "output guard: train result of" in line and "payload_bytes=" in line and t:
            last_result = t
            if rnd is not None and rnd >= 1:
                up.append(int(line.rsplit("payload_bytes=", 1)[1].split()[0]))
    rounds = sorted(first_send)
    ends = [first_send[r] for r in rounds[1:]] + ([last_result] if last_result else [])
    times = [e - first_send[r] for r, e in zip(rounds, ends) if r >= 1]
    return {"s_per_round": statistics.mean(times) if times else None,
            "down_bytes": statistics.mean(down) if down else None, "up_bytes": statistics.mean(up) if up else None}


def ms(values, fmt: str = ".3f") -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}"


def stats(values):
    values = [v for v in values if v is not None and v == v]
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else (None, None)


def dice_tables(runs: dict) -> str:
    any_cell = next(iter(runs.values()))[0]
    sites = sorted(any_cell["per_site"])
    structures = list(any_cell["per_site"][sites[0]]["dice"])
    out = []
    for site in sites:
        mod = any_cell.get("modality", {}).get(site, site)
        out += [f"\n#### {mod} test volumes ({site}): 3D Dice, mean ± sd over seeds\n",
                "| method | seeds | " + " | ".join(structures) + " | mean | Δ mean vs FedAvg | beyond spread? |",
                "|---|---|" + "---|" * (len(structures) + 3)]
        base = stats([c["per_site"][site]["mean_dice"] for c in runs.get(("main", BASELINE), [])])
        for (variant, method), cells in sorted(runs.items(), key=lambda kv: (kv[0][0] != "main", kv[0])):
            per = [ms([c["per_site"][site]["dice"].get(s) for c in cells]) for s in structures]
            m, sd = stats([c["per_site"][site]["mean_dice"] for c in cells])
            if base[0] is None or (variant, method) == ("main", BASELINE):
                delta, beyond = "", ""
            else:
                delta = f"{m - base[0]:+.3f}"
                beyond = ("yes" if abs(m - base[0]) > sd + base[1] else "no") if len(cells) > 1 else "n/a (1 seed)"
            out.append(f"| {label(method, variant)} | {len(cells)} | " + " | ".join(per)
                       + f" | **{ms([c['per_site'][site]['mean_dice'] for c in cells])}** | {delta} | {beyond} |")
    return "\n".join(out)


def cost_table(runs: dict) -> str:
    out = ["\n#### Cost per round (rounds 1..end, mean ± sd over seeds; bytes per site: the server's and the output "
           "guard's payload counts)\n",
           "| method | s per round | KiB down per site | KiB up per site |", "|---|---|---|---|"]
    for (variant, method), cells in sorted(runs.items()):
        c = [x["cost"] for x in cells if x.get("cost")]
        kib = lambda k: ms([x[k] / 1024 if x.get(k) else None for x in c], ".0f")  # noqa: E731
        out.append(f"| {label(method, variant)} | {ms([x.get('s_per_round') for x in c], '.1f')} | {kib('down_bytes')} | "
                   f"{kib('up_bytes')} |")
    return "\n".join(out)


def probe_table(probes: dict) -> str:
    if not probes:
        return "\n(no probes.json: run experiments/fedda_probes.py)"
    out = ["\n#### Alignment probes (chance 0.5): (a) fresh discriminator local vs global features on held-out "
           "slices, per site; (b) linear probe CT vs MR and RBF-MMD² on pooled global-model features\n",
           "| method | (a) fresh D accuracy | (b) linear probe accuracy | (b) MMD² |", "|---|---|---|---|"]
    for (variant, method), ps in sorted(probes.items()):
        a = [v for p in ps for v in p["fresh_discriminator_accuracy"].values()]
        out.append(f"| {label(method, variant)} | {ms(a)} | {ms([p.get('linear_probe_accuracy') for p in ps])} | "
                   f"{ms([p.get('mmd2') for p in ps])} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", nargs="?", default="runs/fedda")
    p.add_argument("--task", nargs="+", default=None, help="default: every task folder under root")
    a = p.parse_args()
    root = Path(a.root)
    tasks = a.task or sorted(d.name for d in root.iterdir() if d.is_dir() and list(d.glob("seed*")))
    for task in tasks:
        data = load(root, task)
        if not data["runs"]:
            print(f"no federated cells under {root / task}")
            continue
        print(f"\n### {task}\n")
        print(dice_tables(data["runs"]))
        print(cost_table(data["runs"]))
        print(probe_table(data["probes"]))


if __name__ == "__main__":
    main()
