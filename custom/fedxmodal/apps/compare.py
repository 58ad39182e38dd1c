"""``compare``: the comparison grid of the federated GIN paper (Moradi et al., "Federated Learning
for Cross-Modality Medical Image Segmentation via Augmentation-Driven Generalization", arXiv
2602.20773) -- every augmentation / normalization method x every training regime, on a set of sites, with one seed and one budget for
every cell -- and, on request (``--methods``), the self-supervised one-shot methods and the GAN
under the same regimes.

Regimes: ``local:<site>`` (one site alone), ``centralized`` (all sites pooled) and ``federated``
(FedAvg in the real ``nvflare simulator``, one NVFlare job per method, through
:mod:`fedxmodal.deploy.harness`). Every cell trains through the one engine and reports its FINAL
model's per-volume 3D Dice on every site's test split: local/centralized cells evaluate here; a
federated cell of a supervised method reports what the sites measured on the final global model
in NVFlare's cross-site evaluation (aggregate metrics only, as in a real federation; FedBN sites
use their own BatchNorm there). How a cell of a method is trained and scored is the method's own
declaration (``evaluation``, ``job_spec``; :mod:`fedxmodal.apps.cells`): a one-shot method is
scored here by its one-shot protocol, a generative one by its image-quality figures per site
(``--local-steps``: their steps per round).

Cells that a method cannot have (not in its ``regimes``) are marked n/a instead of run: FedDG
amplitude exchange and DSBN need at least two domains, so they have no local cell; FedDA's
reference is the federation's model (joint: centralized = the pooled domains aligned with each
other; cyclic: federated only); FedProx's proximal term needs a received global model (federated
only). ``--regimes`` runs a subset of the regimes (e.g. only ``federated``), ``--method-args``
gives methods their arguments (``{"fedda": {"adv_weight": 0.003}}``).

Every finished cell is a JSON file under ``<out>/results/``; a rerun skips them (resume), and
refuses to mix cells of a different grid (budget, seed, task, sites, methods' job settings) into
the same folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from ..data.contract import TASK_STRUCTURES
from ..deploy.harness import discover_sites
from ..methods import METHODS
from ..metrics.report import _fmt
from ..recipes.spec import load_spec
from .cells import CELLS
from .demo import REPO
from .grid import REGIMES, applicable, cell_name, grid_cells, method_label, regime_label

# Per cell: local/centralized train `rounds * local_epochs` epochs, federated `rounds` x `local_epochs`.
BUDGETS = {"default": {"rounds": 12, "local_epochs": 1},
           "quick": {"rounds": 2, "local_epochs": 1}}
# The grid's optimiser: at 12 epochs, batch 8 / lr 2e-3 learns far more than the FedGIN job's
# batch 16 / lr 1e-3 (CT-only "none", CT test Dice 0.62 vs 0.15 on the abdominal phantom); the
# same for every cell.
GRID_TRAIN = {"batch_size": 8, "lr": 2e-3}
QUICK_PHANTOM = {"n_train": 2, "n_val": 1, "n_test": 1}


def grid_methods() -> list[str]:
    """The methods the grid can compare: those with a federated regime and a job to start from
    (phase 2 of the data factory, local only, is not among them)."""
    return [m for m, cls in METHODS.items() if "federated" in cls.regimes and cls.job_spec]


def default_methods() -> list[str]:
    """The grid of the federated GIN paper: every supervised method (the others on request)."""
    return [m for m in grid_methods() if METHODS[m].evaluation == "segmentation"]


class CompareGrid:
    def __init__(self, data: Path, out: Path, task: str, quick: bool, seed: int = 0, methods=None,
                 device: str = "auto", regimes=None, method_args: dict | None = None,
                 rounds: int | None = None, local_epochs: int | None = None, local_steps: int | None = None):
        self.data, self.out, self.task, self.quick, self.seed, self.device = data, out, task, quick, seed, device
        self.regimes = tuple(regimes or REGIMES)
        self.method_args = dict(method_args or {})
        self.structures = TASK_STRUCTURES[task]
        self.budget = dict(BUDGETS["quick" if quick else "default"])
        for key, value in (("rounds", rounds), ("local_epochs", local_epochs), ("local_steps", local_steps)):
            if value is not None and int(value) < 1:  # a larger budget, e.g. real data
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        self.budget.update({k: int(v) for k, v in (("rounds", rounds), ("local_epochs", local_epochs)) if v is not None})
        self.local_steps = int(local_steps) if local_steps is not None else None  # step-trained methods' rounds
        self.methods = tuple(methods or default_methods())
        unknown = [m for m in self.methods if m not in grid_methods()]
        if unknown:
            raise ValueError(f"unknown method(s) or methods without a federated regime {unknown}; "
                             f"choose from {grid_methods()}")
        # the kinds of cells in this grid (the method class says which: MethodBase.evaluation)
        kinds = {METHODS[m].evaluation for m in self.methods}
        self.cells = {kind: cls(self) for kind, cls in CELLS.items() if kind in kinds}
        self.sites = discover_sites(data)
        self.base_spec = load_spec(REPO / "jobs" / "specs" / "fedgin.json")
        self.config = {"task": task, "structures": list(self.structures), "seed": seed, "budget": self.budget,
                       "sites": self.sites, "train": {**{k: v for k, v in self.base_spec["client_args"]["train"].items()
                                                         if k != "method_args"}, **GRID_TRAIN},
                       "model": {k: v for k, v in self.base_spec["model"]["args"].items() if k != "init_seed"},
                       "preprocess": self.base_spec["client_args"]["preprocess"]}
        if self.method_args:  # (only when given: a grid without them keeps its digest)
            self.config["method_args"] = self.method_args
        for kind, cells in self.cells.items():  # methods trained in steps: their jobs' settings
            extra = cells.config(self.methods_of(cells))
            if extra is not None:
                self.config[kind] = extra

    def cells_of(self, method: str):
        return self.cells[METHODS[method].evaluation]

    def methods_of(self, cells) -> list[str]:
        return [m for m in self.methods if self.cells_of(m) is cells]

    def dice_methods(self) -> list[str]:
        """The methods whose score per site is a Dice (tables, ratios, chart)."""
        return [m for m in self.methods if self.cells_of(m).reports_dice]

    # ---- bookkeeping ---------------------------------------------------------------------
    def check_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "grid.json"
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("digest") != digest:
                raise SystemExit(f"{self.out} holds a grid with other settings ({path}); use another --out "
                                 "or delete it")
        path.write_text(json.dumps({**self.config, "digest": digest}, indent=2))

    def cell_path(self, method, regime) -> Path:
        return self.out / "results" / f"{cell_name(method, regime)}.json"

    def run(self) -> dict:
        if len(self.sites) < 2:
            raise SystemExit(f"{self.data}: the grid needs at least two site folders (found {self.sites})")
        self.check_config()
        cells = grid_cells(self.methods, self.sites, self.regimes)
        todo = [(m, r) for m, r in cells if applicable(m, r)]
        budget = "; ".join(c.budget_text() for c in self.cells.values())
        print(f"compare: task {self.task}, sites {', '.join(self.sites)}, {len(todo)} cells "
              f"({len(cells) - len(todo)} n/a), budget {budget}, seed {self.seed}; results in {self.out}", flush=True)
        t_grid = time.perf_counter()
        for i, (method, regime) in enumerate(todo, 1):
            path = self.cell_path(method, regime)
            tag = f"[{i}/{len(todo)}] {method} x {regime}"
            if path.is_file():
                print(f"{tag}: done earlier, skipped", flush=True)
                continue
            print(f"{tag} ...", flush=True)
            cell_dir = self.out / "runs" / cell_name(method, regime)
            cell_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            res = self.cells_of(method).run(method, regime, cell_dir)
            res.update(method=method, regime=regime, seconds=time.perf_counter() - t0, seed=self.seed,
                       task=self.task, budget=self.budget,
                       modality={s: json.loads((self.data / s / "dataset.json").read_text()).get("modality", "?")
                                 for s in self.sites})
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=2))
            tmp.replace(path)  # a cell counts as done only once its JSON is complete
            print(f"{tag}: {res['seconds']:.0f} s, {self.cells_of(method).score_text(res)}", flush=True)
        print(f"grid finished in {time.perf_counter() - t_grid:.0f} s", flush=True)
        return self.report()

    # ---- report ----------------------------------------------------------------------------
    def load_cells(self) -> dict:
        cells = {}
        for m, r in grid_cells(self.methods, self.sites, self.regimes):
            p = self.cell_path(m, r)
            if p.is_file():
                cells[(m, r)] = json.loads(p.read_text())
        return cells

    def report(self) -> dict:
        cells = self.load_cells()
        modality = {s: json.loads((self.data / s / "dataset.json").read_text()).get("modality", s) for s in self.sites}
        parts = []
        for kind, kind_cells in self.cells.items():
            methods = self.methods_of(kind_cells)
            title = f"### {KIND_TITLES[kind]}\n\n" if len(self.cells) > 1 else ""
            if kind_cells.reports_dice:
                parts.append(title + render_table(cells, methods, self.sites, modality, self.structures, self.regimes))
            else:
                parts.append(title + render_scores(cells, methods, self.sites, modality, kind_cells.SCORES,
                                                   self.regimes))
        md = "\n".join(parts)
        ratios = fed_central_ratios(cells, self.dice_methods(), self.sites)
        if self.dice_methods():
            md += "\n" + render_ratios(ratios, self.sites, modality)
        budget = "; ".join(c.budget_text() for c in self.cells.values())
        header = (f"# Comparison grid ({self.task}, {'quick' if self.quick else 'default'} budget)\n\n"
                  f"Sites: {', '.join(f'{s} ({modality[s]})' for s in self.sites)} in {self.data}; seed {self.seed}; "
                  f"budget {budget}. "
                  "Final models; " + ("3D Dice per structure, mean over each site's test volumes. "
                                      if self.dice_methods() else "")
                  + "".join(KIND_NOTES[k] for k in self.cells if k in KIND_NOTES) +
                  f"Command: `python -m fedxmodal compare --data DATA --task {self.task}"
                  f"{' --quick' if self.quick else ''}`.\n\n")
        (self.out / "compare.md").write_text(header + md)
        summary = {"config": self.config, "cells": {cell_name(m, r): c for (m, r), c in cells.items()},
                   "fed_central_ratio": ratios}
        (self.out / "compare.json").write_text(json.dumps(summary, indent=2))
        if self.dice_methods():
            plot_grid(cells, self.dice_methods(), self.sites, modality, self.out / "compare.png",
                      title=f"{self.task}: mean 3D Dice on each site's test set")
        print(header + md)
        print(f"table {self.out / 'compare.md'}, chart {self.out / 'compare.png'}, data {self.out / 'compare.json'}")
        return summary


KIND_TITLES = {"segmentation": "Supervised methods", "oneshot": "Self-supervised one-shot methods",
               "generative": "Generative methods"}
KIND_NOTES = {"oneshot": "One-shot methods: the one-shot protocol's Dice, the query site's own first labelled "
                         "volume as the support (every support/query pair in compare.json). ",
              "generative": "Generative methods: SWD x 100 between generated and real test slices per site, "
                            "lower is better (swd: the site's condition; nokey: its domain key dropped; other: "
                            "other sites' conditions; floor: real training vs real test slices). "}


def render_table(cells, methods, sites, modality, structures, regimes=REGIMES) -> str:
    cols = [f"{modality[s]} {k}" for s in sites for k in (*structures, "mean")]
    head = "| method | regime | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols) + "\n"
    rows = []
    for m, r in grid_cells(methods, sites, regimes):
        name = f"| {method_label(m)} | {regime_label(r, modality)} | "
        if not applicable(m, r):
            rows.append(name + " | ".join(["n/a"] * len(cols)) + " |\n")
            continue
        c = cells.get((m, r))
        if c is None:
            rows.append(name + " | ".join(["…"] * len(cols)) + " |\n")
            continue
        vals = []
        for s in sites:
            summ = c["per_site"][s]
            vals += [_fmt(summ["dice"].get(k)) for k in structures] + [f"**{_fmt(summ['mean_dice'])}**"]
        rows.append(name + " | ".join(vals) + " |\n")
    return head + "".join(rows)


def fed_central_ratios(cells, methods, sites) -> dict:
    out = {}
    for m in methods:
        fed, cen = cells.get((m, "federated")), cells.get((m, "centralized"))
        if fed and cen:
            out[m] = {s: (fed["per_site"][s]["mean_dice"] / cen["per_site"][s]["mean_dice"]
                          if cen["per_site"][s]["mean_dice"] > 0 else None) for s in sites}
    return out


def render_scores(cells, methods, sites, modality, scores, regimes=REGIMES) -> str:
    """The table of methods scored by other figures than Dice (``scores`` per site)."""
    cols = [f"{modality[s]} {k}" for s in sites for k in scores]
    head = "| method | regime | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols) + "\n"
    rows = []
    for m, r in grid_cells(methods, sites, regimes):
        c = cells.get((m, r))
        vals = (["n/a"] * len(cols) if not applicable(m, r) else ["…"] * len(cols) if c is None else
                [_fmt(c["per_site"][s].get(k)) for s in sites for k in scores])
        rows.append(f"| {method_label(m)} | {regime_label(r, modality)} | " + " | ".join(vals) + " |\n")
    return head + "".join(rows)


def render_ratios(ratios, sites, modality) -> str:
    lines = ["Federated / centralized mean Dice (the federated GIN paper: 0.93-0.98 for GIN):\n",
             "| method | " + " | ".join(modality[s] for s in sites) + " |",
             "|---|" + "---|" * len(sites)]
    for m, r in ratios.items():
        lines.append(f"| {method_label(m)} | " + " | ".join(_fmt(r[s]) for s in sites) + " |")
    return "\n".join(lines) + "\n"


def plot_grid(cells, methods, sites, modality, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    regimes = [f"local:{s}" for s in sites] + ["centralized", "federated"]
    fig, axes = plt.subplots(1, len(sites), figsize=(6.5 * len(sites), 4.2), sharey=True, squeeze=False)
    width = 0.8 / len(regimes)
    x = np.arange(len(methods))
    for ax, site in zip(axes[0], sites):
        for j, r in enumerate(regimes):
            vals = [cells[(m, r)]["per_site"][site]["mean_dice"] if (m, r) in cells else np.nan for m in methods]
            ax.bar(x + (j - (len(regimes) - 1) / 2) * width, vals, width, label=regime_label(r, modality))
        ax.set_xticks(x, [method_label(m) for m in methods], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"test on {site} ({modality[site]})")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("mean 3D Dice")
    # one legend beside the panels, so it never hides a bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_compare(args) -> int:
    data = Path(args.data).resolve()
    out = Path(args.out).resolve() if args.out else data.parent / f"compare-{args.task}{'-quick' if args.quick else ''}"
    if not discover_sites(data):
        from ..data.phantom import write_phantom_federation

        print(f"{data} has no site folders: writing the {args.task} phantom federation there", flush=True)
        write_phantom_federation(data, seed=args.seed, task=args.task, **(QUICK_PHANTOM if args.quick else {}))
    from ..data.check import check_site

    for s in discover_sites(data):
        report = check_site(data / s, TASK_STRUCTURES[args.task])
        if not report.ok:
            print(report.render(), file=sys.stderr)
            return 1
    method_args = json.loads(args.method_args) if getattr(args, "method_args", None) else None
    options = dict(methods=args.methods, device=args.device, regimes=getattr(args, "regimes", None),
                   method_args=method_args, rounds=getattr(args, "rounds", None),
                   local_epochs=getattr(args, "local_epochs", None), local_steps=getattr(args, "local_steps", None))
    seeds = list(dict.fromkeys(args.seeds)) if getattr(args, "seeds", None) else None
    if not seeds:
        CompareGrid(data, out, args.task, args.quick, seed=args.seed, **options).run()
        return 0
    from .compare_seeds import seed_dir, summarize_seeds

    for i, seed in enumerate(seeds, 1):
        print(f"== seed {seed} ({i}/{len(seeds)})", flush=True)
        grid = CompareGrid(data, seed_dir(out, seed), args.task, args.quick, seed=seed, **options)
        grid.run()
    modality = {s: json.loads((data / s / "dataset.json").read_text()).get("modality", s) for s in grid.sites}
    summary = summarize_seeds(out, seeds, grid.dice_methods(), grid.sites, modality, grid.regimes)
    print(summary["markdown"])
    print(f"over seeds: {out / 'compare_seeds.md'}, {out / 'compare_seeds.json'}")
    return 0
