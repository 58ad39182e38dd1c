"""The numbers of FedCoWPro in docs/results.md (arXiv 2503.23507): one-shot Dice per structure, per query
modality, per support modality, settings 1 and 2, over seeds, for

* FedCoWPro (FedAvg of CoWPro + Dice + Sobel edge Dice), and the baselines with the same encoder,
  budget and seeds: FedAvg of SSL-ALPNet (ALP, CE + alignment), FedAvg of CoWPro (CE + alignment,
  the paper's own baseline), each site alone (``local:<site>``), centralized (sites pooled);
* the floors: an untrained encoder (random init, seeded) and raw intensities as features;
* optionally, for scale, the supervised FedGIN model's Dice on the same test volumes (it used labels;
  ``--fedgin-summary`` = the ``results/fedgin.json`` written by ``python -m fedxmodal demo --data``).

Every cell trains ``rounds x local_steps`` optimisation steps of ``batch_size`` episodes (federated:
``rounds`` rounds of ``local_steps`` steps at every site, in the real ``nvflare simulator``, the
job of jobs/specs/fedcowpro.json with the cell's method/seed/setting), then its final model is
evaluated HERE on every site's test split with every site as the support site (same modality and
cross-modality): the support of a structure is the first labelled volume of the support site that
holds it (validation, then training, then test; never the query itself). Results: one JSON per cell
under ``OUT/results/`` (a rerun skips finished cells), wall times inside; a federated cell's job,
simulator workspace and log under ``OUT/runs/<job>/``. Summarize with
``experiments/fedcowpro_summary.py OUT``. Encoder trained from scratch, CPU budget.

What is this study's own: the settings (1, 2), the floors, the seeds and the cell names. The rest
is shared: training here (``fedxmodal.apps.cells.train_episodes_here``), the federated job and run
(``cell_job_spec``, ``fedxmodal.deploy.harness.run_federated``) and the one-shot evaluation of every
support/query pair (``EpisodicMethod.evaluate_sites``), as ``python -m fedxmodal compare`` runs them.

Usage: python experiments/fedcowpro_oneshot.py --data DATA --out OUT [--seeds 0 1 2] [--settings 1 2]
       [--methods fedcowpro cowpro ssl_alpnet] [--regimes federated centralized local] [--rounds 20]
       [--local-steps 50] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))

from fedxmodal.apps.cells import cell_job_spec, train_episodes_here  # noqa: E402
from fedxmodal.apps.models import trainer_from_fl_model  # noqa: E402
from fedxmodal.data.preprocess import PreprocessConfig  # noqa: E402
from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.deploy.harness import discover_sites, run_federated  # noqa: E402
from fedxmodal.engine.episodic import EpisodicConfig  # noqa: E402
from fedxmodal.methods import build_trainer, method_class  # noqa: E402
from fedxmodal.recipes.export import load_spec  # noqa: E402

SPEC = REPO / "jobs" / "specs" / "fedcowpro.json"
SMOKE = {"rounds": 1, "local_steps": 2, "batch_size": 2, "val_episodes": 2}
FLOOR_METHOD = "fedcowpro"  # the floors are scored by this method's one-shot protocol (the same for the three)


def cell_name(method: str, regime: str, setting: int, seed: int) -> str:
    return f"{method}__{regime.replace(':', '-')}__s{setting}__seed{seed}"


class Experiment:
    def __init__(self, a):
        self.a, self.data, self.out = a, Path(a.data).resolve(), Path(a.out).resolve()
        self.sites = discover_sites(self.data)
        self.spec = load_spec(SPEC)
        ca = self.spec["client_args"]
        self.structures = tuple(a.structures or ca["structures"])
        self.preprocess = PreprocessConfig.from_dict(ca["preprocess"])
        self.network = dict(self.spec["model"]["args"])
        self.budget = dict(rounds=a.rounds, local_steps=a.local_steps, batch_size=a.batch_size,
                           val_episodes=ca["train"]["val_episodes"])
        if a.smoke:
            self.budget.update(SMOKE)
        self._slices: dict[str, SiteSlices] = {}
        (self.out / "results").mkdir(parents=True, exist_ok=True)

    def site(self, name: str) -> SiteSlices:
        if name not in self._slices:
            self._slices[name] = SiteSlices(self.data / name, self.structures, self.preprocess, progress=False)
        return self._slices[name]

    def method_args(self, setting: int) -> dict:
        # setting 2: training slices holding any evaluated structure are removed (labels read for that only)
        return {"exclude_structures": list(self.structures)} if setting == 2 else {}

    def train_config(self, method: str, setting: int, seed: int, steps: int) -> EpisodicConfig:
        b = self.budget
        return EpisodicConfig(method=method, method_args=self.method_args(setting), steps=steps,
                              batch_size=b["batch_size"], val_episodes=b["val_episodes"], seed=seed)

    # ---- cells -------------------------------------------------------------------------------
    def train_here(self, method: str, regime: str, setting: int, seed: int):
        sites = self.sites if regime == "centralized" else [regime.split(":", 1)[1]]
        steps = self.budget["rounds"] * self.budget["local_steps"]
        return train_episodes_here(self.structures, {**self.network, "init_seed": seed},
                                   self.train_config(method, setting, seed, steps), self.preprocess,
                                   [self.site(s) for s in sites], device=self.a.device)

    def train_federated(self, method: str, setting: int, seed: int):
        name = f"fcp_{method}_s{setting}_seed{seed}"
        spec = cell_job_spec(self.spec, method, name=name, sites=self.sites, seed=seed, rounds=self.budget["rounds"],
                             client_args={"local_steps": self.budget["local_steps"], "structures": list(self.structures)},
                             train={"batch_size": self.budget["batch_size"], "val_episodes": self.budget["val_episodes"],
                                    "method_args": self.method_args(setting)})
        run = run_federated(spec, self.data, self.out / "runs" / name, sites=self.sites, echo=True)
        trainer = trainer_from_fl_model(run.global_model, run.job, device=self.a.device)
        return trainer, {"federated_wall_seconds": run.wall_s, "steps": self.budget["rounds"] * self.budget["local_steps"],
                         "cross_site": run.cross_site}

    def floor(self, kind: str, seed: int):
        network = ({**self.network, "init_seed": seed} if kind == "untrained"
                   else {"kind": "intensity", "downsample": self.network.get("downsample", 4)})
        trainer = build_trainer(self.structures, network=network, train=self.train_config(FLOOR_METHOD, 1, seed, 1),
                                preprocess=self.preprocess, device=self.a.device)
        return trainer, {"steps": 0}

    def evaluate(self, method: str, trainer) -> dict:
        """Every (support site, query site) pair on the query site's test split (the method's one-shot protocol)."""
        return method_class(method).evaluate_sites(trainer, [self.site(s) for s in self.sites])["pairs"]

    def run_cell(self, method: str, regime: str, setting: int, seed: int) -> None:
        path = self.out / "results" / f"{cell_name(method, regime, setting, seed)}.json"
        if path.is_file():
            print(f"skip {path.name} (done)", flush=True)
            return
        print(f"== {method} {regime} setting {setting} seed {seed}", flush=True)
        t0 = time.perf_counter()
        try:
            if regime == "federated":
                trainer, info = self.train_federated(method, setting, seed)
            elif regime == "floor":
                trainer, info = self.floor(method, seed)
            else:
                trainer, info = self.train_here(method, regime, setting, seed)
            result = {"method": method, "regime": regime, "setting": setting, "seed": seed, "budget": self.budget,
                      "structures": list(self.structures), "sites": self.sites, **info,
                      "evaluation": self.evaluate(FLOOR_METHOD if regime == "floor" else method, trainer)}
        except (RuntimeError, ValueError) as exc:  # e.g. setting 2 leaves a site no training slice
            result = {"method": method, "regime": regime, "setting": setting, "seed": seed, "error": str(exc)[:2000]}
            print(f"   n/a: {str(exc)[:300]}", flush=True)
        result["cell_seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(result, indent=1))
        print(f"   {result['cell_seconds']:.0f} s -> {path}", flush=True)

    def run(self) -> None:
        a, t0 = self.a, time.perf_counter()
        regimes = [r for r in a.regimes if r != "local"] + ([f"local:{s}" for s in self.sites] if "local" in a.regimes else [])
        for seed in a.seeds:
            for kind in a.floors:  # setting-independent: no training
                if kind == "raw" and seed != a.seeds[0]:
                    continue  # deterministic
                self.run_cell(kind, "floor", 1, seed)
            for setting in a.settings:
                for regime in regimes:
                    for method in a.methods:
                        self.run_cell(method, regime, setting, seed)
        (self.out / "experiment.json").write_text(json.dumps(
            {"data": str(self.data), "sites": self.sites, "budget": self.budget, "seeds": a.seeds,
             "settings": a.settings, "methods": a.methods, "regimes": regimes, "floors": a.floors,
             "last_run_seconds": time.perf_counter() - t0}, indent=1))
        print(f"done in {time.perf_counter() - t0:.0f} s; summarize: python experiments/fedcowpro_summary.py {self.out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of site folders (e.g. ct-site, mr-site)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    p.add_argument("--methods", nargs="+", default=["fedcowpro", "cowpro", "ssl_alpnet"])
    p.add_argument("--regimes", nargs="+", default=["federated", "centralized", "local"],
                   choices=("federated", "centralized", "local"))
    p.add_argument("--floors", nargs="*", default=["untrained", "raw"], choices=("untrained", "raw"))
    p.add_argument("--structures", nargs="+", help="default: the job's (liver, kidneys, spleen)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help=f"tiny budget {SMOKE}: proves the pipeline, numbers mean nothing")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FEDXMODAL_NUM_THREADS", "1")))
    Experiment(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
