"""``compare``: seed 000's comparison grid -- every augmentation / normalization method x every
training regime, on a set of sites, with one seed and one budget for every cell.

Regimes: ``local:<site>`` (one site alone), ``centralized`` (all sites pooled) and ``federated``
(FedAvg in the real ``nvflare simulator``, one NVFlare job per method). Every cell trains through
the one engine and reports its FINAL model's per-volume 3D Dice on every site's test split:
local/centralized cells evaluate here; a federated cell reports what the sites measured on the
final global model in NVFlare's cross-site evaluation (aggregate metrics only, as in a real
federation; FedBN sites use their own BatchNorm there).

Cells that a method cannot have (not in its ``regimes``) are marked n/a instead of run: FedDG
amplitude exchange and DSBN need at least two domains, so they have no local cell; FedDA's
reference is the federation's model (joint: centralized = the pooled domains aligned with each
other; cyclic: federated only); FedProx's proximal term needs a received global model (federated
only). ``--regimes`` runs a subset of the regimes (e.g. only ``federated``), ``--method-args``
gives methods their arguments (``{"fedda": {"adv_weight": 0.003}}``).

Every finished cell is a JSON file under ``<out>/results/``; a rerun skips them (resume), and
refuses to mix cells of a different grid (budget, seed, task, sites) into the same folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from ..data.contract import TASK_STRUCTURES
from ..deploy.simulator import run_simulator
from ..engine.supervised import TrainConfig
from ..methods import METHODS, method_class
from ..metrics.report import _fmt
from ..networks.unet import config_from_job_model
from ..recipes.export import export_job
from ..recipes.spec import load_spec
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


def discover_sites(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if (p / "dataset.json").is_file()) if data.is_dir() else []


def federated_spec(base: dict, method: str, *, sites, structures, rounds: int, local_epochs: int, seed: int,
                   method_args: dict | None = None) -> dict:
    """The NVFlare job of one method: the FedGIN job with the method and its network (the recipe
    adds what the method adds on the server and declares to the output guard)."""
    spec = copy.deepcopy(base)
    for key in ("site_output_filters", "server_input_filters"):  # privacy filters are not part of the grid
        spec.pop(key, None)
    method_cls = method_class(method)
    spec["name"] = f"compare_{method}"
    spec["num_rounds"] = rounds
    spec["min_clients"] = len(sites)
    spec["model"]["args"].update(n_structures=len(structures), init_seed=seed,
                                 **method_cls.network_overrides("federated", len(sites)))
    ca = spec["client_args"]
    ca.update(method=method, local_epochs=local_epochs, seed=seed, structures=list(structures))
    ca["train"] = {**ca.get("train", {}), "method_args": dict(method_args or {})}
    return spec


def _summary_from_metrics(metrics: dict, structures) -> dict:
    """NVFlare cross-site metrics (``dice``, ``dice_<structure>``, ``n_volumes``) -> a summary."""
    dice = {s: float(metrics.get(f"dice_{s}", math.nan)) for s in structures}
    return {"mean_dice": float(metrics["dice"]), "dice": dice, "n_volumes": int(metrics.get("n_volumes", 0))}


class CompareGrid:
    def __init__(self, data: Path, out: Path, task: str, quick: bool, seed: int = 0, methods=None,
                 device: str = "auto", regimes=None, method_args: dict | None = None,
                 rounds: int | None = None, local_epochs: int | None = None):
        self.data, self.out, self.task, self.quick, self.seed, self.device = data, out, task, quick, seed, device
        self.regimes = tuple(regimes or REGIMES)
        self.method_args = dict(method_args or {})
        self.structures = TASK_STRUCTURES[task]
        self.budget = dict(BUDGETS["quick" if quick else "default"])
        for key, value in (("rounds", rounds), ("local_epochs", local_epochs)):  # a larger budget, e.g. real data
            if value is not None:
                if int(value) < 1:
                    raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
                self.budget[key] = int(value)
        # seed 000's grid is supervised and compares federated training: a method without a
        # federated regime (phase 2 of the data factory, local only) is not in it
        supervised = [m for m, cls in METHODS.items() if cls.needs_labels and "federated" in cls.regimes]
        self.methods = tuple(methods or supervised)
        unknown = [m for m in self.methods if m not in supervised]
        if unknown:
            raise ValueError(f"unknown or self-supervised method(s) {unknown} (this grid trains with labels); "
                             f"choose from {supervised}")
        self.sites = discover_sites(data)
        self.base_spec = load_spec(REPO / "jobs" / "specs" / "fedgin.json")
        self.config = {"task": task, "structures": list(self.structures), "seed": seed, "budget": self.budget,
                       "sites": self.sites, "train": {**{k: v for k, v in self.base_spec["client_args"]["train"].items()
                                                         if k != "method_args"}, **GRID_TRAIN},
                       "model": {k: v for k, v in self.base_spec["model"]["args"].items() if k != "init_seed"},
                       "preprocess": self.base_spec["client_args"]["preprocess"]}
        if self.method_args:  # (only when given: a grid without them keeps its digest)
            self.config["method_args"] = self.method_args

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

    # ---- cells -----------------------------------------------------------------------------
    def _train_config(self, method) -> TrainConfig:
        train = dict(self.config["train"])
        return TrainConfig.from_dict({**train, "method": method, "method_args": self.method_args.get(method, {}),
                                      "seed": self.seed})

    def run_local_or_centralized(self, method, regime, cell_dir: Path) -> dict:
        from ..data.preprocess import PreprocessConfig
        from .regimes import train_regime

        train_sites = [regime.split(":", 1)[1]] if regime.startswith("local:") else list(self.sites)
        kind = "local" if regime.startswith("local:") else "centralized"
        epochs = self.budget["rounds"] * self.budget["local_epochs"]
        res = train_regime(kind, [str(self.data / s) for s in train_sites], self.structures, cell_dir, epochs=epochs,
                           eval_sites=[str(self.data / s) for s in self.sites], train=self._train_config(method),
                           network=config_from_job_model({"args": self.config["model"]}),  # + the method's
                           # overrides for the regime, applied by train_regime
                           preprocess=PreprocessConfig.from_dict(self.config["preprocess"]), device=self.device,
                           progress=False, validate_every=0)
        print(f"    trained {epochs} epochs on {res['n_train_slices']} slices in {res['seconds']:.0f} s", flush=True)
        return {"train_sites": train_sites, "per_site": res["models"]["final"], "epochs": epochs,
                "n_train_slices": res["n_train_slices"], "model": str(cell_dir / "final_model.pt")}

    def run_federated(self, method, cell_dir: Path) -> dict:
        spec = federated_spec(self.base_spec, method, sites=self.sites, structures=self.structures,
                              rounds=self.budget["rounds"], local_epochs=self.budget["local_epochs"], seed=self.seed,
                              method_args=self.method_args.get(method, {}))
        spec["client_args"]["train"].update(self.config["train"])
        job = export_job(cell_dir / "job", spec)
        workspace = cell_dir / "workspace"
        shutil.rmtree(workspace, ignore_errors=True)
        # The checkpoint folder outlives the run: an interrupted federated cell resumes its rounds.
        env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(self.data), "PYTHONUNBUFFERED": "1",
               "FEDXMODAL_CHECKPOINT_DIR": str(cell_dir / "checkpoints")}
        run_simulator(job, workspace, env, cell_dir / "simulator.log", spec["num_rounds"], self.sites,
                      echo=False, indent="    ")
        run_dir = workspace / "server" / "simulate_job"
        cse_path = run_dir / "cross_site_val" / "cross_val_results.json"
        if not cse_path.is_file():
            raise RuntimeError(f"federated {method}: no cross-site evaluation results ({cse_path}); "
                               f"see {cell_dir / 'simulator.log'}")
        cse = json.loads(cse_path.read_text())
        per_site = {}
        for site in self.sites:
            metrics = cse.get(site, {}).get("SRV_FL_global_model.pt")
            if not metrics or "dice" not in metrics:
                raise RuntimeError(f"federated {method}: site {site} reported no evaluation of the global model "
                                   f"({cse_path})")
            per_site[site] = _summary_from_metrics(metrics, self.structures)
        model_dir = cell_dir / "model"
        model_dir.mkdir(exist_ok=True)
        shutil.copy2(run_dir / "app_server" / "FL_global_model.pt", model_dir / "FL_global_model.pt")
        return {"train_sites": list(self.sites), "per_site": per_site, "rounds": spec["num_rounds"],
                "local_epochs": spec["client_args"]["local_epochs"], "model": str(model_dir / "FL_global_model.pt"),
                "job": str(job)}

    def run(self) -> dict:
        if len(self.sites) < 2:
            raise SystemExit(f"{self.data}: the grid needs at least two site folders (found {self.sites})")
        self.check_config()
        cells = grid_cells(self.methods, self.sites, self.regimes)
        todo = [(m, r) for m, r in cells if applicable(m, r)]
        print(f"compare: task {self.task}, sites {', '.join(self.sites)}, {len(todo)} cells "
              f"({len(cells) - len(todo)} n/a), budget {self.budget['rounds']} rounds x "
              f"{self.budget['local_epochs']} local epochs (= {self.budget['rounds'] * self.budget['local_epochs']} "
              f"epochs for local/centralized), seed {self.seed}; results in {self.out}", flush=True)
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
            if regime == "federated":
                res = self.run_federated(method, cell_dir)
            else:
                res = self.run_local_or_centralized(method, regime, cell_dir)
            res.update(method=method, regime=regime, seconds=time.perf_counter() - t0, seed=self.seed,
                       task=self.task, budget=self.budget,
                       modality={s: json.loads((self.data / s / "dataset.json").read_text()).get("modality", "?")
                                 for s in self.sites})
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=2))
            tmp.replace(path)  # a cell counts as done only once its JSON is complete
            dice = ", ".join(f"{s} {res['per_site'][s]['mean_dice']:.3f}" for s in self.sites)
            print(f"{tag}: {res['seconds']:.0f} s, mean Dice {dice}", flush=True)
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
        md = render_table(cells, self.methods, self.sites, modality, self.structures, self.regimes)
        ratios = fed_central_ratios(cells, self.methods, self.sites)
        md += "\n" + render_ratios(ratios, self.sites, modality)
        header = (f"# Comparison grid ({self.task}, {'quick' if self.quick else 'default'} budget)\n\n"
                  f"Sites: {', '.join(f'{s} ({modality[s]})' for s in self.sites)} in {self.data}; seed {self.seed}; "
                  f"budget {self.budget['rounds']} rounds x {self.budget['local_epochs']} local epochs "
                  f"(local/centralized: {self.budget['rounds'] * self.budget['local_epochs']} epochs). "
                  "Final models; 3D Dice per structure, mean over each site's test volumes. "
                  f"Command: `python -m fedxmodal compare --data DATA --task {self.task}"
                  f"{' --quick' if self.quick else ''}`.\n\n")
        (self.out / "compare.md").write_text(header + md)
        summary = {"config": self.config, "cells": {cell_name(m, r): c for (m, r), c in cells.items()},
                   "fed_central_ratio": ratios}
        (self.out / "compare.json").write_text(json.dumps(summary, indent=2))
        plot_grid(cells, self.methods, self.sites, modality, self.out / "compare.png",
                  title=f"{self.task}: mean 3D Dice on each site's test set")
        print(header + md)
        print(f"table {self.out / 'compare.md'}, chart {self.out / 'compare.png'}, data {self.out / 'compare.json'}")
        return summary


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


def render_ratios(ratios, sites, modality) -> str:
    lines = ["Federated / centralized mean Dice (seed 000: 0.93-0.98 for GIN):\n",
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
                   local_epochs=getattr(args, "local_epochs", None))
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
    summary = summarize_seeds(out, seeds, grid.methods, grid.sites, modality, grid.regimes)
    print(summary["markdown"])
    print(f"over seeds: {out / 'compare_seeds.md'}, {out / 'compare_seeds.json'}")
    return 0
