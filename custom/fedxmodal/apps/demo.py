"""``demo`` (what ``make demo`` runs): phantom data -> check -> FedGIN (its Recipe) in NVFlare's
``SimEnv`` with a CT site and an MR site -> evaluation of the final and best global models on both sites'
test volumes -> Dice table (markdown + JSON) and learning curve (PNG)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ..data.check import check_site
from ..data.phantom import write_phantom_federation
from ..data.slices import SiteSlices
from ..recipes.export import export_job
from ..recipes.nvflare_recipes import FedGINRecipe
from ..recipes.spec import load_spec
from .models import trainer_from_fl_model
from ..metrics.report import dice_table, write_evaluation
from .curves import plot_learning_curves, read_tb_scalars
from .overlay import write_case_overlays
from .run import run_in_sim

REPO = Path(__file__).resolve().parents[3]
SITES = ("ct-site", "mr-site")
QUICK = {"num_rounds": 2, "local_epochs": 3, "n_train": 2, "n_val": 1, "n_test": 1}


def run_demo(args) -> int:
    work = Path(args.workdir).resolve()
    data = Path(args.data).resolve() if getattr(args, "data", None) else work / "data"
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    spec = load_spec(REPO / "jobs" / "specs" / "fedgin.json")
    sizes = {}
    if args.quick:
        spec["num_rounds"], spec["client_args"]["local_epochs"] = QUICK["num_rounds"], QUICK["local_epochs"]
        sizes = {k: QUICK[k] for k in ("n_train", "n_val", "n_test")}
    if args.rounds:
        spec["num_rounds"] = args.rounds
    if getattr(args, "local_epochs", None):
        spec["client_args"]["local_epochs"] = args.local_epochs
    schedule = {k: v for k, v in (("lr_schedule", getattr(args, "lr_schedule", None)),
                                  ("warmup", getattr(args, "warmup", None))) if v is not None}
    if schedule:
        spec["client_args"]["train"] = {**spec["client_args"].get("train", {}), **schedule}
    if getattr(args, "fp32", False):
        spec["client_args"]["train"] = {**spec["client_args"].get("train", {}), "amp": False}
    spec["client_args"]["seed"] = args.seed
    spec["model"]["args"]["init_seed"] = args.seed
    t_start = time.perf_counter()

    print(f"[1/4] sites in {data}", flush=True)
    if not all((data / s / "dataset.json").is_file() for s in SITES):
        if getattr(args, "data", None):
            print(f"error: --data {data} must hold {' and '.join(SITES)} site folders", file=sys.stderr)
            return 2
        write_phantom_federation(data, seed=args.seed, task="abdomen", **sizes)
    for s in SITES:
        report = check_site(data / s, spec["client_args"]["structures"])
        print(report.render())
        if not report.ok:
            return 1

    print(f"[2/4] FedGIN: {spec['num_rounds']} rounds x {spec['client_args']['local_epochs']} local epoch(s), "
          "NVFlare SimEnv, sites " + ", ".join(SITES), flush=True)
    job = export_job(work / "jobs", spec)
    workspace, ckpt = work / "workspace", work / "checkpoints"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)  # a demo starts fresh; resume is for interrupted jobs
    t_sim = time.perf_counter()
    run_dir = run_in_sim(FedGINRecipe(spec), SITES, workspace, results / "simulator.log", FEDXMODAL_DATA_ROOT=data,
                         FEDXMODAL_CHECKPOINT_DIR=ckpt, PYTHONUNBUFFERED=1)
    wall = time.perf_counter() - t_sim

    print("[3/4] evaluating the final and best global models on both sites' test volumes", flush=True)
    sites = [SiteSlices(data / s, spec["client_args"]["structures"], progress=False) for s in SITES]
    summary = {"job": spec["name"], "num_rounds": spec["num_rounds"], "local_epochs": spec["client_args"]["local_epochs"],
               "amp": spec["client_args"].get("train", {}).get("amp", True),
               "lr_schedule": spec["client_args"].get("train", {}).get("lr_schedule", "constant"),
               "seed": args.seed, "simulator_seconds": wall, "models": {}}
    rows, best_round = [], None
    for tag, fname in (("final", "FL_global_model.pt"), ("best", "best_FL_global_model.pt")):
        engine = trainer_from_fl_model(run_dir / "app_server" / fname, job)
        if tag == "final":  # the server's state: the round whose global model is the best one
            best_round = (engine.meta.get("best") or {}).get("round")
        evals = [engine.evaluate(s, "test") for s in sites]
        write_evaluation(evals, results / f"fedgin_{tag}", title=f"FedGIN {tag} global model")
        summary["models"][tag] = {e["site"]: e["summary"] for e in evals}
        rows += [(f"{tag} model on {e['site']} ({e['modality']})", e["summary"]) for e in evals]
        engine.save(results / f"fedgin_{tag}_model.pt", source=str(run_dir / "app_server" / fname))
        if tag == "best":  # one picture per site (radiological view): prediction filled, reference dashed
            for site in sites:
                write_case_overlays(engine, site, "test", results / "overlays", max_cases=1)
    cse = run_dir / "cross_site_val" / "cross_val_results.json"
    if cse.is_file():
        summary["cross_site"] = json.loads(cse.read_text())

    print("[4/4] tables and learning curve", flush=True)
    scalars = read_tb_scalars(run_dir / "tb_events")
    summary["curves"] = scalars
    plot_learning_curves(scalars, results / "fedgin_curve.png", title="FedGIN (NVFlare SimEnv)",
                         best_round=None if best_round is None else int(best_round))
    table = dice_table(rows, spec["client_args"]["structures"])
    md = (f"# FedGIN demo\n\nSites {data} (seed {args.seed}), {spec['num_rounds']} rounds x "
          f"{spec['client_args']['local_epochs']} local epoch(s), sites {', '.join(SITES)}; "
          f"simulator wall time {wall:.0f} s.\n3D Dice on each site's test volumes:\n\n{table}\n"
          "Per-volume tables: fedgin_final.md, fedgin_best.md. Learning curve: fedgin_curve.png (the best "
          "model's round marked). Pictures of the best model (radiological view): overlays/.\n"
          "The best model as a fedxmodal checkpoint (settings inside, no --job needed): fedgin_best_model.pt, e.g. "
          "`python -m fedxmodal segment IMAGE --model fedgin_best_model.pt --out mask.nii.gz`.\n")
    (results / "fedgin.md").write_text(md)
    (results / "fedgin.json").write_text(json.dumps(summary, indent=2))
    print(md)
    print(f"results in {results} (total {time.perf_counter() - t_start:.0f} s)")
    return 0
