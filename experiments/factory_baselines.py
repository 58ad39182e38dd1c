"""The baselines of the data factory's phase 2 (Galati et al., MICCAI 2024), on the same data, the same
labelled target slices and the same seeds as ``python -m fedxmodal factory adapt``:

* ``source_only``: a supervised U-Net (the U-Net of jobs/specs/fedgin.json, at the factory's 64 px
  / 6 mm slices: its bottleneck is 8 x 8 instead of 16 x 16) trained on the labelled source site's
  training slices, no intensity augmentation (method ``none``, the base spatial augmentation only);
* ``finetune`` (the paper's nnU-Net + TL analogue): that same network, per target, fine-tuned on
  the target's labelled slices as phase 2 picks them (``labelled_target_slices``: one mid-slice from
  each of three training volumes, drawn with the cell's seed, as ``factory adapt --seed`` does), all
  layers, a fixed number of steps at a small learning rate;
* ``gin_source``: the source U-Net trained with GIN (method ``gin``), the single-site analogue of FedGIN.

Every model is tested on every target site's test split (3D Dice per structure, per volume, on the
original grids: ``trainer.evaluate(SiteSlices, "test")``, as ``factory adapt`` reports). The slices
are those of jobs/specs/factory_adapt.json's preprocessing (6 mm, 64 px: ``factory adapt`` takes the
factory's own, the same unless phase 1 was changed), the optimiser that of the federated GIN paper's
comparison grid (``apps/compare.py``'s ``GRID_TRAIN``: batch 8, lr 2e-3). One JSON per (baseline,
seed) under ``OUT/results/`` (a rerun skips finished ones; ``OUT/config.json`` refuses a rerun with
other settings); ``OUT/summary.md`` / ``summary.json``: mean +- sd over seeds per target site.

Usage: python experiments/factory_baselines.py --data DATA --source ct-site --targets mr-site mr-t1-site cect-site
       --out OUT [--seeds 0 1 2] [--steps 1000] [--finetune-steps 200] [--finetune-lr 1e-4]
       [--baselines source_only finetune gin_source] [--allow-fewer] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))

from fedxmodal.apps.compare import GRID_TRAIN  # noqa: E402
from fedxmodal.apps.compare_seeds import mean_sd  # noqa: E402
from fedxmodal.data.preprocess import PreprocessConfig  # noqa: E402
from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.engine.base import seed_everything  # noqa: E402
from fedxmodal.engine.supervised import TrainConfig  # noqa: E402
from fedxmodal.methods import build_trainer, load_trainer  # noqa: E402
from fedxmodal.methods.factory.adaptation import labelled_target_slices  # noqa: E402
from fedxmodal.metrics.report import _fmt  # noqa: E402
from fedxmodal.networks.unet import UNetConfig, config_from_job_model  # noqa: E402
from fedxmodal.recipes.spec import load_spec  # noqa: E402

ADAPT_SPEC = REPO / "jobs" / "specs" / "factory_adapt.json"
UNET_SPEC = REPO / "jobs" / "specs" / "fedgin.json"
# baseline -> (the source model's training method, label); ``finetune`` starts from ``source_only``'s model
BASELINES = {"source_only": ("none", "U-Net, source only"),
             "finetune": ("none", "U-Net, source + fine-tuned on the target's labelled slices (nnU-Net+TL analogue)"),
             "gin_source": ("gin", "U-Net + GIN, source only (single-site FedGIN analogue)")}
DEFAULTS = {"steps": 1000, "finetune_steps": 200}
QUICK = {"steps": 4, "finetune_steps": 2}


def fit_steps(trainer, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, desc: str = "") -> dict:
    """Exactly ``steps`` optimizer steps of the trainer's own loop (its method's loss, spatial
    augmentation, mixed precision), each on ``batch_size`` slices drawn without replacement from
    (N, 1, S, S) ``images`` / (N, S, S) ``labels`` (reshuffled, seeded, at every pass). Returns
    {"loss" (mean), "last_loss", "steps", "n_slices", "seconds"}."""
    n = len(images)
    if n == 0:
        raise ValueError(f"{desc}: no slices to train on")
    bs, gen = min(trainer.train_config.batch_size, n), torch.Generator().manual_seed(seed)
    state, t0 = {"pool": torch.empty(0, dtype=torch.long), "step": 0}, time.perf_counter()

    def next_batch() -> dict:
        if len(state["pool"]) < bs:
            state["pool"] = torch.cat([state["pool"], torch.randperm(n, generator=gen)])
        idx, state["pool"] = state["pool"][:bs], state["pool"][bs:]
        idx = idx[torch.randperm(len(idx))]  # the order the earlier one-batch epochs drew: same numbers as before
        state["step"] += 1
        if desc and (state["step"] % max(1, steps // 5) == 0 or state["step"] == steps):
            print(f"   {desc}: step {state['step']}/{steps} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return {"images": images[idx], "labels": labels[idx], "domains": None}

    fit = trainer.fit(next_batch, steps=steps, keep_history=True)
    losses = [h["loss"] for h in fit["history"]]
    return {"loss": fit["loss"], "last_loss": losses[-1] if losses else math.nan, "steps": fit["steps"],
            "n_slices": n, "seconds": time.perf_counter() - t0}


def finetune_on_slices(source_model, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, seed: int,
                       device: str = "auto", desc: str = ""):
    """The source model (a checkpoint path) fine-tuned on a few (n, 1, S, S) slices / (n, S, S)
    labels: all layers, a fresh Adam at ``lr``, ``steps`` steps on all of them. Returns (trainer, fit)."""
    seed_everything(seed)
    trainer = load_trainer(source_model, device=device, lr=lr)
    return trainer, fit_steps(trainer, images, labels, steps, seed, desc)


def _clean(x):
    """NaN -> None, recursively (strict JSON; a structure absent from a volume has no Dice)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def target_dice(trainer, site: SiteSlices) -> dict:
    """The model's per-volume 3D Dice on the site's test split, and its means over volumes."""
    ev = trainer.evaluate(site, "test")
    s = ev["summary"]
    return _clean({"modality": site.modality, "n_volumes": s["n_volumes"], "mean_dice": s["mean_dice"],
                   "dice": s["dice"], "per_volume": [{k: v[k] for k in ("case", "mean_dice", "dice")}
                                                     for v in ev["per_volume"]]})


class Baselines:
    def __init__(self, a):
        self.a, self.data, self.out = a, Path(a.data).resolve(), Path(a.out).resolve()
        missing = [s for s in [a.source, *a.targets] if not (self.data / s / "dataset.json").is_file()]
        if missing:
            raise SystemExit(f"error: {self.data}: no site folder(s) {missing} (write them with `python -m fedxmodal "
                             "demo-data --factory --out DIR` or `python -m fedxmodal totalseg-pair --out DIR`)")
        adapt, unet = load_spec(ADAPT_SPEC)["client_args"], load_spec(UNET_SPEC)
        budget = QUICK if a.quick else DEFAULTS
        self.structures = tuple(a.structures or adapt["structures"])
        self.config = {"data": str(self.data), "source": a.source, "targets": list(a.targets),
                       "structures": list(self.structures), "preprocess": adapt["preprocess"],
                       "network": config_from_job_model(unet["model"]).to_dict(),
                       "train": {**{k: v for k, v in unet["client_args"]["train"].items() if k != "method_args"},
                                 **GRID_TRAIN},
                       "gin_args": unet["client_args"]["train"]["method_args"],
                       "steps": a.steps or budget["steps"], "finetune_steps": a.finetune_steps or budget["finetune_steps"],
                       "finetune_lr": a.finetune_lr, "n_labelled": adapt["train"]["method_args"]["n_labelled"],
                       "allow_fewer": bool(a.allow_fewer)}
        self.digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        self.preprocess = PreprocessConfig.from_dict(self.config["preprocess"])
        self._sites: dict[str, SiteSlices] = {}

    def check_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.json"
        if path.is_file() and json.loads(path.read_text()).get("digest") != self.digest:
            raise SystemExit(f"error: {path}: {self.out} holds baselines with other settings; use another --out "
                             "or delete it")
        path.write_text(json.dumps({**self.config, "digest": self.digest}, indent=1))

    def site(self, name: str) -> SiteSlices:
        if name not in self._sites:
            self._sites[name] = SiteSlices(self.data / name, self.structures, self.preprocess, progress=False)
        return self._sites[name]

    def result_path(self, baseline: str, seed: int) -> Path:
        return self.out / "results" / f"{baseline}__seed{seed}.json"

    # ---- models -----------------------------------------------------------------------------
    def source_model(self, method: str, seed: int) -> tuple[Path, dict]:
        """The source U-Net of ``method`` and ``seed`` (trained here unless its checkpoint exists):
        its checkpoint and its training summary (:func:`fit_steps`)."""
        path = self.out / "models" / f"source_{method}__seed{seed}.pt"
        if path.is_file():  # trained by an earlier cell (finetune after source_only) or run
            return path, torch.load(path, map_location="cpu", weights_only=False)["meta"].get("fit")
        c = self.config
        seed_everything(seed)  # the initial weights, the GIN draws, the spatial augmentation
        args = c["gin_args"] if method == "gin" else {}
        train = TrainConfig.from_dict({**c["train"], "method": method, "method_args": args, "seed": seed})
        trainer = build_trainer(self.structures, UNetConfig.from_dict(c["network"]), train, self.preprocess,
                                device=self.a.device, domains=(self.a.source,))
        images, labels = self.site(self.a.source).slices("training", foreground_only=train.foreground_only)
        trainer.method.prepare([images])
        fit = fit_steps(trainer, images, labels, c["steps"], seed, desc=f"source {method} seed {seed}")
        trainer.save(path, role="source", site=self.a.source, method=method, seed=seed, fit=fit)
        return path, fit

    def finetune_target(self, source: Path, target: str, seed: int) -> dict:
        """One target: its labelled slices (phase 2's pick for ``seed``), the fine-tuned model's test Dice."""
        c, site = self.config, self.site(target)
        try:
            volumes, picks = labelled_target_slices(site, c["n_labelled"], seed, c["allow_fewer"])
        except ValueError as exc:  # too few labelled volumes: reported, the other targets go on
            print(f"   {target}: n/a: {exc}", flush=True)
            return {"modality": site.modality, "error": str(exc)}
        images = torch.stack([volumes[v].image[z] for v, z in picks])
        labels = torch.stack([volumes[v].label[z] for v, z in picks]).long()
        trainer, fit = finetune_on_slices(source, images, labels, c["finetune_steps"], c["finetune_lr"], seed,
                                          self.a.device, desc=f"fine-tune {target} seed {seed}")
        trainer.save(self.out / "models" / f"finetune__seed{seed}__{target}.pt", role="finetuned", site=target,
                     source=self.a.source, seed=seed, labelled_slices=[list(p) for p in picks])
        shots = [{"volume": v, "slice": z, "case": volumes[v].case.case_id,
                  "label_pixels": int((volumes[v].label[z] > 0).sum())} for v, z in picks]
        return {**target_dice(trainer, site), "labelled_slices": shots, "finetune_fit": fit}

    # ---- cells ------------------------------------------------------------------------------
    def run_cell(self, baseline: str, seed: int) -> None:
        path = self.result_path(baseline, seed)
        if path.is_file():
            print(f"skip {baseline} seed {seed} (done: {path})", flush=True)
            return
        print(f"== {baseline} seed {seed}: {BASELINES[baseline][1]}", flush=True)
        t0 = time.perf_counter()
        method = BASELINES[baseline][0]
        source, fit = self.source_model(method, seed)
        result = {"baseline": baseline, "label": BASELINES[baseline][1], "seed": seed, "source": self.a.source,
                  "structures": list(self.structures), "digest": self.digest, "source_model": str(source),
                  "source_fit": fit, "targets": {}}
        for target in self.a.targets:
            if baseline == "finetune":
                result["targets"][target] = self.finetune_target(source, target, seed)
            else:
                trainer = load_trainer(source, device=self.a.device)
                result["targets"][target] = target_dice(trainer, self.site(target))
            r = result["targets"][target]
            if "error" not in r:
                print(f"   {target}: test Dice {_fmt(r['mean_dice'])} ({r['n_volumes']} volumes)", flush=True)
        result["seconds"] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_clean(result), indent=1))
        tmp.replace(path)  # a cell is finished only once its whole JSON is there
        print(f"   {result['seconds']:.0f} s -> {path}", flush=True)

    def summarize(self) -> str:
        """``summary.md`` / ``summary.json``: per target, mean +- sd over the finished seeds."""
        seeds, cols = list(self.a.seeds), ["mean", *self.structures]
        stats, lines = {}, [f"# Data factory phase 2 baselines: test 3D Dice (source {self.a.source})\n",
                            f"Mean +- sd over seeds {seeds} (n = seeds finished) of each model's mean over the target's "
                            f"test volumes; {self.config['steps']} source steps, {self.config['finetune_steps']} "
                            f"fine-tuning steps at lr {self.config['finetune_lr']} on the target's labelled slices "
                            f"(the same picks as `factory adapt --seed <k>`).\n"]
        for target in self.a.targets:
            stats[target] = {}
            lines += [f"## {target}\n", "| baseline | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            for b in self.a.baselines:
                cells = [json.loads(p.read_text())["targets"].get(target, {}) for s in seeds
                         if (p := self.result_path(b, s)).is_file()]
                row = {}
                for col in cols:
                    vals = [c.get("mean_dice") if col == "mean" else c.get("dice", {}).get(col) for c in cells]
                    row[col] = mean_sd([math.nan if v is None else v for v in vals])
                stats[target][b] = {col: dict(zip(("mean", "sd", "n"), v)) for col, v in row.items()}
                lines.append(f"| {BASELINES[b][1]} | " + " | ".join(
                    f"{_fmt(mu)} +- {_fmt(sd)} (n={n})" if mu is not None else "n/a" for mu, sd, n in row.values())
                    + " |")
            lines.append("")
        md = "\n".join(lines)
        (self.out / "summary.md").write_text(md)
        (self.out / "summary.json").write_text(json.dumps(_clean({"seeds": seeds, "config": self.config,
                                                                  "stats": stats}), indent=1))
        return md

    def run(self) -> None:
        self.check_config()
        t0 = time.perf_counter()
        print(f"factory baselines: source {self.a.source}, targets {', '.join(self.a.targets)}, seeds {self.a.seeds}, "
              f"{self.config['steps']} source steps, {self.config['finetune_steps']} fine-tuning steps, "
              f"slices {self.preprocess.size} px at {self.preprocess.spacing} mm", flush=True)
        for seed in self.a.seeds:
            for baseline in self.a.baselines:
                self.run_cell(baseline, seed)
        print(self.summarize())
        print(f"done in {time.perf_counter() - t0:.0f} s: {self.out}/summary.md, results/*.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of site folders (demo-data --factory, totalseg-pair)")
    p.add_argument("--source", default="ct-site", help="the labelled source site")
    p.add_argument("--targets", nargs="+", default=["mr-site", "mr-t1-site", "cect-site"])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--steps", type=int, help=f"source training steps (default {DEFAULTS['steps']})")
    p.add_argument("--finetune-steps", type=int, help=f"fine-tuning steps (default {DEFAULTS['finetune_steps']})")
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning lr (the source trains at "
                                                                    f"{GRID_TRAIN['lr']})")
    p.add_argument("--structures", nargs="+", help="default: jobs/specs/factory_adapt.json's")
    p.add_argument("--allow-fewer", action="store_true", help="a target with fewer than three labelled training "
                                                              "volumes fine-tunes on as many mid-slices as it has")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help=f"a smoke run {QUICK}: its numbers mean nothing")
    a = p.parse_args(argv)
    Baselines(a).run()
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("FEDXMODAL_NUM_THREADS", "1")))
    sys.exit(main())
