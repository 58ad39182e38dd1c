"""How a cell of the comparison grid is run and scored, by the kind of method -- the method class
says which (``MethodBase.evaluation``) and from which committed job its settings come
(``MethodBase.job_spec``):

* ``segmentation`` (supervised methods): ``local:<site>`` / ``centralized`` train
  ``rounds x local_epochs`` epochs here (:func:`fedxmodal.apps.regimes.train_regime`);
  ``federated`` runs the method's job in the simulator; the score is the final model's per-volume
  3D Dice on every site's test split (federated: as the sites measured it in NVFlare's cross-site
  evaluation);
* ``oneshot`` (self-supervised episodic methods): ``rounds x local_steps`` episode steps here, or
  ``rounds`` rounds of ``local_steps`` in the simulator; the final model is scored HERE by the
  method's one-shot protocol, every site as the support of every site (:meth:`EpisodicMethod.evaluate_sites`);
* ``generative`` (GAN methods): ``rounds x local_steps`` G+D steps on the sites' slices (pooled
  for ``centralized``), or the method's job in the simulator; scored here by the method's quality
  figures per site (:meth:`GanMethod.evaluate_sites`).

Federated cells run through :func:`fedxmodal.deploy.harness.run_federated`; every cell returns
``{"train_sites", "per_site": {site: summary}, "model", ...}``.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path

import torch

from ..data.preprocess import PreprocessConfig
from ..data.slices import SiteSlices
from ..deploy.harness import run_federated
from ..engine.base import seed_everything
from ..engine.episodic import EpisodicConfig
from ..engine.gan import GanConfig
from ..engine.supervised import TrainConfig
from ..methods import build_trainer, method_class
from ..networks.unet import config_from_job_model
from ..recipes.components import SITE_SCRIPT
from ..recipes.spec import load_spec
from .models import trainer_from_fl_model

REPO = Path(__file__).resolve().parents[3]
SPECS = REPO / "jobs" / "specs"
PACKAGE = Path(__file__).resolve().parents[1]
PRIVACY_KEYS = ("site_output_filters", "server_input_filters")  # privacy filters are not part of the grid


def job_spec_of(method: str) -> dict:
    """The committed job spec a comparison cell of ``method`` starts from."""
    cls = method_class(method)
    if not cls.job_spec:
        raise ValueError(f"method {method!r} names no job spec (job_spec): it has no comparison cell")
    return load_spec(SPECS / f"{cls.job_spec}.json")


def cell_job_spec(base: dict, method: str, *, name: str, sites, seed: int, rounds: int, client_args: dict,
                  train: dict | None = None, model_args: dict | None = None) -> dict:
    """A federated cell's job: ``base`` with the method, its seed (sites, initial model, client
    sampling), ``rounds``, every site required, ``client_args`` and ``train`` merged into the
    sites' arguments, ``model_args`` into the model's; no privacy filters."""
    spec = copy.deepcopy(base)
    for key in PRIVACY_KEYS:
        spec.pop(key, None)
    spec.update(name=name, num_rounds=int(rounds), min_clients=len(sites))
    spec["model"]["args"].update(init_seed=seed, **(model_args or {}))
    if spec.get("clients_per_round"):
        spec["clients_per_round"] = min(int(spec["clients_per_round"]), len(sites))
    if "client_sampling_seed" in spec:
        spec["client_sampling_seed"] = seed
    spec["client_script"] = str(PACKAGE / SITE_SCRIPT)
    ca = spec["client_args"]
    ca.update(method=method, seed=seed, **client_args)
    ca["train"] = {**ca.get("train", {}), **(train or {})}
    return spec


def train_episodes_here(structures, network: dict, train: EpisodicConfig, preprocess: PreprocessConfig, sites,
                        device: str = "auto"):
    """An episodic method trained here on ``sites`` (SiteSlices, pooled) for ``train.steps`` steps,
    seeded by ``train.seed``; returns (trainer, {train_seconds, steps, loss, n_train_slices})."""
    seed_everything(train.seed)
    trainer = build_trainer(structures, network=network, train=train, preprocess=preprocess, device=device)
    sampler = trainer.sampler(list(sites), seed=train.seed)
    t0 = time.perf_counter()
    fit = trainer.fit(lambda: sampler.batch(trainer.train_config.batch_size))
    return trainer, {"train_seconds": time.perf_counter() - t0, "steps": train.steps, "loss": fit["loss"],
                     "n_train_slices": len(sampler)}


def pooled_batches(samplers, batch_size: int):
    """``next_batch()`` drawing every batch from all ``samplers`` (dicts of tensors), the batch
    split between them as evenly as it goes."""
    k = len(samplers)
    sizes = [batch_size // k + (i < batch_size % k) for i in range(k)]
    pairs = [(s, n) for s, n in zip(samplers, sizes) if n]

    def next_batch() -> dict:
        parts = [s.batch(n) for s, n in pairs]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    return next_batch


class Cells:
    """The cells of one kind of method in a grid (``grid``: the :class:`~fedxmodal.apps.compare.CompareGrid`)."""

    evaluation = ""
    reports_dice = True  # the score per site is a Dice (tables, ratios, chart, seeds summary)

    def __init__(self, grid):
        self.grid = grid
        self._slices: dict = {}

    def train_sites(self, regime: str) -> list[str]:
        return [regime.split(":", 1)[1]] if regime.startswith("local:") else list(self.grid.sites)

    def site_slices(self, site: str, preprocess: PreprocessConfig) -> SiteSlices:
        key = (site, preprocess)
        if key not in self._slices:
            self._slices[key] = SiteSlices(self.grid.data / site, self.grid.structures, preprocess, progress=False)
        return self._slices[key]

    def config(self, methods) -> dict | None:
        """What this kind adds to the grid's settings (its digest); None: nothing."""
        return None

    def budget_text(self) -> str:
        return ""

    def score_text(self, res: dict) -> str:
        """A finished cell's score per site, for the progress line."""
        return "mean Dice " + ", ".join(f"{s} {v['mean_dice']:.3f}" for s, v in res["per_site"].items())

    def run(self, method: str, regime: str, cell_dir: Path) -> dict:
        if regime == "federated":
            return self.run_federated(method, cell_dir)
        return self.run_here(method, regime, cell_dir)

    def run_here(self, method: str, regime: str, cell_dir: Path) -> dict:
        raise NotImplementedError

    def run_federated(self, method: str, cell_dir: Path) -> dict:
        raise NotImplementedError

    def keep_global_model(self, run, cell_dir: Path) -> Path:
        model_dir = cell_dir / "model"
        model_dir.mkdir(exist_ok=True)
        shutil.copy2(run.global_model, model_dir / run.global_model.name)
        return model_dir / run.global_model.name


class SegmentationCells(Cells):
    """Supervised methods: the FedGIN job's settings with the grid's optimiser (``grid.config``)."""

    evaluation = "segmentation"

    def budget_text(self) -> str:
        b = self.grid.budget
        return (f"{b['rounds']} rounds x {b['local_epochs']} local epochs (local/centralized: "
                f"{b['rounds'] * b['local_epochs']} epochs)")

    def train_config(self, method) -> TrainConfig:
        return TrainConfig.from_dict({**self.grid.config["train"], "method": method,
                                      "method_args": self.grid.method_args.get(method, {}), "seed": self.grid.seed})

    def run_here(self, method, regime, cell_dir: Path) -> dict:
        from .regimes import train_regime

        g = self.grid
        train_sites = self.train_sites(regime)
        kind = "local" if regime.startswith("local:") else "centralized"
        epochs = g.budget["rounds"] * g.budget["local_epochs"]
        res = train_regime(kind, [str(g.data / s) for s in train_sites], g.structures, cell_dir, epochs=epochs,
                           eval_sites=[str(g.data / s) for s in g.sites], train=self.train_config(method),
                           network=config_from_job_model({"args": g.config["model"]}),  # + the method's
                           # overrides for the regime, applied by train_regime
                           preprocess=PreprocessConfig.from_dict(g.config["preprocess"]), device=g.device,
                           progress=False, validate_every=0)
        print(f"    trained {epochs} epochs on {res['n_train_slices']} slices in {res['seconds']:.0f} s", flush=True)
        return {"train_sites": train_sites, "per_site": res["models"]["final"], "epochs": epochs,
                "n_train_slices": res["n_train_slices"], "model": str(cell_dir / "final_model.pt")}

    def federated_spec(self, method) -> dict:
        g = self.grid
        spec = cell_job_spec(
            g.base_spec, method, name=f"compare_{method}", sites=g.sites, seed=g.seed, rounds=g.budget["rounds"],
            client_args={"local_epochs": g.budget["local_epochs"], "structures": list(g.structures)},
            train={"method_args": dict(g.method_args.get(method, {})), **g.config["train"]},
            model_args={"n_structures": len(g.structures),
                        **method_class(method).network_overrides("federated", len(g.sites))})
        return spec

    def run_federated(self, method, cell_dir: Path) -> dict:
        g = self.grid
        spec = self.federated_spec(method)
        # The checkpoint folder outlives the run: an interrupted federated cell resumes its rounds.
        run = run_federated(spec, g.data, cell_dir, sites=g.sites, resume=True, indent="    ")
        per_site = {site: summary_from_metrics(m, g.structures) for site, m in run.site_metrics("global").items()}
        return {"train_sites": list(g.sites), "per_site": per_site, "rounds": spec["num_rounds"],
                "local_epochs": spec["client_args"]["local_epochs"], "model": str(self.keep_global_model(run, cell_dir)),
                "job": str(run.job)}


def summary_from_metrics(metrics: dict, structures) -> dict:
    """NVFlare cross-site metrics (``dice``, ``dice_<structure>``, ``n_volumes``) -> a summary."""
    dice = {s: float(metrics.get(f"dice_{s}", math.nan)) for s in structures}
    return {"mean_dice": float(metrics["dice"]), "dice": dice, "n_volumes": int(metrics.get("n_volumes", 0))}


class StepCells(Cells):
    """Methods trained in steps (``local_steps`` per round) from their own job's settings; a cell's
    final model is scored here by the method's ``evaluate_sites``."""

    QUICK: dict = {}  # --quick: {"local_steps": n, "train": {...}, "method_args": {...}}

    def local_steps(self, spec: dict) -> int:
        g = self.grid
        return int(g.local_steps or (self.QUICK["local_steps"] if g.quick else spec["client_args"]["local_steps"]))

    def settings(self, method) -> dict:
        """The method's job settings for this grid: train (with method_args), model args, preprocess."""
        spec = job_spec_of(method)
        ca = spec["client_args"]
        train = {**ca.get("train", {}), **(self.QUICK.get("train", {}) if self.grid.quick else {})}
        method_args = {**train.get("method_args", {}), **(self.QUICK.get("method_args", {}) if self.grid.quick else {}),
                       **self.grid.method_args.get(method, {})}
        model = {k: v for k, v in spec["model"]["args"].items() if k != "init_seed"}  # the grid's seed
        return {"spec": spec, "train": {**train, "method_args": method_args}, "model": {**model, **self.model_args()},
                "preprocess": dict(ca.get("preprocess", {})), "local_steps": self.local_steps(spec)}

    def config(self, methods) -> dict:
        jobs = {}
        for m in methods:
            s = self.settings(m)
            jobs[method_class(m).job_spec] = {k: s[k] for k in ("train", "model", "preprocess", "local_steps")}
        return {"jobs": jobs}

    def budget_text(self) -> str:
        steps = sorted({s["local_steps"] for s in self.config(self.grid.methods_of(self))["jobs"].values()})
        r = self.grid.budget["rounds"]
        return (f"{self.evaluation}: {r} rounds x {'/'.join(map(str, steps))} local steps (local/centralized: "
                f"{'/'.join(str(r * n) for n in steps)} steps)")

    def evaluate(self, method, trainer, preprocess: PreprocessConfig) -> dict:
        t0 = time.perf_counter()
        res = method_class(method).evaluate_sites(trainer, [self.site_slices(s, preprocess) for s in self.grid.sites])
        print(f"    evaluated on {len(self.grid.sites)} sites in {time.perf_counter() - t0:.0f} s", flush=True)
        return res

    def federated_spec(self, method, settings: dict) -> dict:
        g = self.grid
        return cell_job_spec(settings["spec"], method, name=f"compare_{method}", sites=g.sites, seed=g.seed,
                             rounds=g.budget["rounds"], train=settings["train"], model_args=self.model_args(),
                             client_args={"local_steps": settings["local_steps"], "structures": list(g.structures)})

    def model_args(self) -> dict:
        return {}

    def run_federated(self, method, cell_dir: Path) -> dict:
        g = self.grid
        settings = self.settings(method)
        spec = self.federated_spec(method, settings)
        run = run_federated(spec, g.data, cell_dir, sites=g.sites, resume=True, indent="    ")
        trainer = trainer_from_fl_model(run.global_model, run.job, device=g.device)
        res = self.evaluate(method, trainer, PreprocessConfig.from_dict(settings["preprocess"]))
        return {"train_sites": list(g.sites), **res, "rounds": spec["num_rounds"],
                "local_steps": settings["local_steps"], "model": str(self.keep_global_model(run, cell_dir)),
                "job": str(run.job), "cross_site": run.cross_site, "federated_wall_seconds": run.wall_s}


class OneShotCells(StepCells):
    """Self-supervised episodic methods (no label read in training)."""

    evaluation = "oneshot"
    QUICK = {"local_steps": 2, "train": {"batch_size": 2, "val_episodes": 2}}

    def run_here(self, method, regime, cell_dir: Path) -> dict:
        g = self.grid
        s = self.settings(method)
        preprocess = PreprocessConfig.from_dict(s["preprocess"])
        train_sites = self.train_sites(regime)
        steps = g.budget["rounds"] * s["local_steps"]
        train = EpisodicConfig.from_dict({**s["train"], "method": method, "steps": steps, "seed": g.seed})
        trainer, info = train_episodes_here(g.structures, {**s["model"], "init_seed": g.seed}, train, preprocess,
                                            [self.site_slices(x, preprocess) for x in train_sites], device=g.device)
        print(f"    trained {steps} steps on {info['n_train_slices']} slices in {info['train_seconds']:.0f} s", flush=True)
        trainer.save(cell_dir / "final_model.pt", regime=regime)
        return {"train_sites": train_sites, **self.evaluate(method, trainer, preprocess), **info,
                "model": str(cell_dir / "final_model.pt")}


class GenerativeCells(StepCells):
    """GAN methods: the generator is conditioned on every site of the grid (its site embedding),
    whichever sites a cell trains on."""

    evaluation = "generative"
    reports_dice = False
    QUICK = {"local_steps": 4, "method_args": {"quality_samples": 8}}
    SCORES = ("swd", "swd_nokey", "swd_other", "swd_floor")  # the methods' QUALITY_METRICS, SWD x 100

    def score_text(self, res: dict) -> str:
        return "SWD " + ", ".join(f"{s} {v['swd']:.2f}" for s, v in res["per_site"].items())

    def settings(self, method) -> dict:
        s = super().settings(method)
        s["train"]["method_args"] = {**s["train"]["method_args"], "sites": list(self.grid.sites)}
        return s

    def model_args(self) -> dict:
        return {"n_sites": len(self.grid.sites)}

    def run_here(self, method, regime, cell_dir: Path) -> dict:
        g = self.grid
        s = self.settings(method)
        preprocess = PreprocessConfig.from_dict(s["preprocess"])
        train_sites = self.train_sites(regime)
        steps = g.budget["rounds"] * s["local_steps"]
        seed_everything(g.seed)
        train = GanConfig.from_dict({**s["train"], "method": method, "steps": steps, "seed": g.seed})
        trainer = build_trainer(g.structures, network={**s["model"], **self.model_args(), "init_seed": g.seed},
                                train=train, preprocess=preprocess, device=g.device)
        samplers = [trainer.method.site_data(trainer, self.site_slices(x, preprocess), x, seed=g.seed)["training"]
                    for x in train_sites]
        t0 = time.perf_counter()
        fit = trainer.fit(pooled_batches(samplers, trainer.train_config.batch_size))
        seconds = time.perf_counter() - t0
        print(f"    trained {steps} G+D steps on {sum(map(len, samplers))} slices in {seconds:.0f} s", flush=True)
        trainer.save(cell_dir / "final_model.pt", regime=regime)
        return {"train_sites": train_sites, **self.evaluate(method, trainer, preprocess), "steps": steps,
                "train_seconds": seconds, "loss_g": fit["means"]["loss_g"], "loss_d": fit["means"]["loss_d"],
                "n_train_slices": sum(map(len, samplers)), "model": str(cell_dir / "final_model.pt")}


CELLS = {c.evaluation: c for c in (SegmentationCells, OneShotCells, GenerativeCells)}
