"""``python -m fedxmodal factory ...``: the data factory's phase 1 for a user.

* ``factory run --data DIR --sites A B C --out OUT``: the phase-1 job (``jobs/specs/factory.json``)
  on those site folders in ``nvflare simulator``; then the quality figure per site over rounds
  (``quality.png``, from the sites' validation SWD streamed to the server's TensorBoard), a sample
  grid per site and a morph between the first two sites from the final global model
  (``samples.png``, ``morph.png``), ``summary.json`` and the final model as a checkpoint
  (``factory_model.pt``, for ``factory sample --model`` without ``--job``). ``--no-key``: the ablation without the
  domain key (``key_mix`` 0).
* ``factory sample --model CKPT [--job JOB] --site NAME --n 16 --out grid.png [--data SITE_DIR]``;
* ``factory morph --model CKPT [--job JOB] --sites A B --out morph.png``;
* ``factory adapt --factory-model PT [--job JOB] --data DIR --source ct-site --targets mr-site ...
  --out OUT``: phase 2 (``jobs/specs/factory_adapt.json``) in ``nvflare simulator``: the source
  trains its branch, every target adapts with it and keeps its model
  (``OUT/site_state/<site>/factory_adapt/target.pt``, for ``segment``); ``dice.md`` / ``dice.json``:
  each target's test Dice as its site returned it.

The domain key is site-private: with ``--data`` (run where the site's data are, i.e. at the site)
the key is computed from that site's training slices; without it the key is dropped and the
generator is conditioned on the site embedding (and slice position) alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..data.slices import SiteSlices
from ..deploy.simulator import run_simulator
from ..methods.factory.pictures import plot_quality, save_rows
from ..methods.factory.site_data import site_slices
from ..recipes.export import export_job
from ..recipes.spec import load_spec
from .checkpoints import load_checked
from .curves import read_tb_scalars
from .models import load_model

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "jobs" / "specs" / "factory.json"
ADAPT_SPEC = REPO / "jobs" / "specs" / "factory_adapt.json"


def factory_spec(sites, rounds=None, local_steps=None, seed: int = 0, no_key: bool = False, quick: bool = False,
                 clients_per_round=None) -> dict:
    """The phase-1 job spec for these site folder names (their order = the site embedding's)."""
    spec = load_spec(SPEC)
    sites = list(sites)
    ca = spec["client_args"]
    ca["train"]["method_args"]["sites"] = sites
    spec["model"]["args"].update(n_sites=len(sites), init_seed=seed)
    if no_key:
        spec["model"]["args"]["key_mix"] = 0.0
        spec["name"] = "factory_nokey"
    spec["min_clients"] = len(sites)
    spec["clients_per_round"] = min(clients_per_round or spec["clients_per_round"], len(sites))
    spec["client_sampling_seed"] = ca["seed"] = seed
    if quick:
        spec["num_rounds"], ca["local_steps"] = 2, 4
        ca["train"]["method_args"]["quality_samples"] = 8
    if rounds:
        spec["num_rounds"] = int(rounds)
    if local_steps:
        ca["local_steps"] = int(local_steps)
    return spec


def site_key(trainer, site_dir, site_name: str) -> torch.Tensor:
    """The site's domain key (key_dim,) from its training slices only (run at the site)."""
    cfg = trainer.model.cfg
    data = SiteSlices(site_dir, (), trainer.preprocess, progress=False)
    return site_slices(data, "training", trainer.method.site_index(site_name), cfg.n_zbins, key_dim=cfg.key_dim).key


def sample_rows(trainer, sites, site_dirs=None, n: int = 8, seed: int = 0) -> list:
    """One row of ``n`` generated slices per site (positions spread over the volume)."""
    cfg = trainer.model.cfg
    zbins = torch.linspace(0, cfg.n_zbins - 1, n).round().long()
    rows = []
    for name in sites:
        index = trainer.method.site_index(name)
        if site_dirs and name in site_dirs and cfg.key_mix == 0:  # the ablation: the key never enters
            key, keep, how = torch.zeros(cfg.key_dim), False, "site (a model trained without the key)"
        elif site_dirs and name in site_dirs:
            key, keep, how = site_key(trainer, site_dirs[name], name), True, "site + key"
        else:
            key, keep, how = torch.zeros(cfg.key_dim), False, "site only (no key here)"
        rows.append((f"{name}: {how}", trainer.sample(index, key, zbins, n=n, seed=seed, key_keep=keep)))
    return rows


@torch.no_grad()
def morph_images(trainer, site_a: str, site_b: str, steps: int = 8, seed: int = 0, zbin=None):
    """(steps, 1, S, S): the EMA generator's slice for one z, its w moving linearly from site A's
    condition to site B's (keys dropped: the morph is between the sites' embeddings)."""
    cfg = trainer.model.cfg
    g = trainer.model.generator_ema
    z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(trainer.device)
    zb = torch.tensor([cfg.n_zbins // 2 if zbin is None else int(zbin)], device=trainer.device)
    key = torch.zeros(1, cfg.key_dim, device=trainer.device)
    keep = torch.zeros(1, dtype=torch.bool, device=trainer.device)
    ws = [g.mapping(z, torch.tensor([trainer.method.site_index(s)], device=trainer.device), key, zb, key_keep=keep)
          for s in (site_a, site_b)]
    t = torch.linspace(0, 1, steps, device=trainer.device)[:, None]
    w = torch.lerp(ws[0].expand(steps, -1), ws[1].expand(steps, -1), t)
    return g.synthesis(w[:, None].expand(-1, g.num_ws, -1), noise_mode="const").float().cpu()


def run(args) -> int:
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    sites = list(args.sites)
    missing = [s for s in sites if not (data / s / "dataset.json").is_file()]
    if missing:
        raise SystemExit(f"error: {data}: no site folder(s) {missing} (write them with `python -m fedxmodal demo-data "
                         "--factory --out DIR`)")
    spec = factory_spec(sites, args.rounds, args.local_steps, args.seed, args.no_key, args.quick)
    out.mkdir(parents=True, exist_ok=True)
    job = export_job(out / "jobs", spec)
    workspace, ckpt = out / "workspace", out / "checkpoints"
    if not args.resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(workspace, ignore_errors=True)
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(data), "FEDXMODAL_CHECKPOINT_DIR": str(ckpt),
           "FEDXMODAL_SITE_STATE_DIR": str(out / "site_state"), "PYTHONUNBUFFERED": "1"}
    print(f"factory phase 1: sites {', '.join(sites)}, {spec['num_rounds']} rounds x "
          f"{spec['client_args']['local_steps']} steps, {spec['clients_per_round']} of {len(sites)} sites per round, "
          f"seed {args.seed}{', NO domain key' if args.no_key else ''}", flush=True)
    wall = run_simulator(job, workspace, env, out / "simulator.log", spec["num_rounds"], sites=sites)
    run_dir = workspace / "server" / "simulate_job"
    curves = read_tb_scalars(run_dir / "tb_events")
    plot_quality(curves, out / "quality.png", title=f"factory quality per site ({'no key' if args.no_key else 'with key'})")
    trainer = load_model(run_dir / "app_server" / "FL_global_model.pt", job, device="cpu")
    trainer.save(out / "factory_model.pt", source=str(run_dir / "app_server" / "FL_global_model.pt"))
    site_dirs = {s: data / s for s in sites}
    save_rows(sample_rows(trainer, sites, site_dirs), out / "samples.png", title="final global model (EMA generator)")
    if len(sites) > 1:
        save_rows([(f"{sites[0]} -> {sites[1]}", morph_images(trainer, sites[0], sites[1]))], out / "morph.png")
    final = {site: {tag.split("/", 1)[1]: vals[-1][1] for tag, vals in tags.items() if tag.startswith("val/swd")}
             for site, tags in curves.items()}
    summary = {"sites": sites, "num_rounds": spec["num_rounds"], "local_steps": spec["client_args"]["local_steps"],
               "clients_per_round": spec["clients_per_round"], "seed": args.seed, "no_key": bool(args.no_key),
               "simulator_seconds": wall, "last_validation": final, "curves": curves}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {wall:.0f} s: {out}/quality.png, samples.png, morph.png, summary.json, factory_model.pt")
    for site, figs in final.items():
        print(f"  {site}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(figs.items())))
    return 0


def sample(args) -> int:
    trainer, _ = load_checked(args.model, args.job, "factory sample", device="cpu")
    dirs = {args.site: Path(args.data)} if args.data else None
    (label, images), = sample_rows(trainer, [args.site], dirs, n=args.n, seed=args.seed)
    save_rows([(label, images)], args.out, title=f"{args.site}: {args.n} generated slices (seed {args.seed})")
    print(f"wrote {args.out}")
    return 0


def morph(args) -> int:
    trainer, _ = load_checked(args.model, args.job, "factory morph", device="cpu")
    a, b = args.sites
    save_rows([(f"{a} -> {b}", morph_images(trainer, a, b, steps=args.steps, seed=args.seed))], args.out)
    print(f"wrote {args.out}")
    return 0


def adapt_spec(factory, factory_model, source: str, targets, steps=None, seed: int = 0, quick: bool = False,
               structures=None, allow_fewer: bool = False) -> dict:
    """The phase-2 job spec for a phase-1 factory (a GAN trainer: its generator settings, sites,
    preprocessing and structures) kept on the server at ``factory_model``."""
    spec = load_spec(ADAPT_SPEC)
    ca = spec["client_args"]
    ca["structures"] = list(structures or factory.structures or ca["structures"])
    widths = {k: spec["model"]["args"][k] for k in ("encoder_width", "head_width")}
    spec["model"]["args"] = {**factory.model.cfg.to_dict(), "n_classes": len(ca["structures"]) + 1, **widths}
    ca["train"]["method_args"].update(sites=list(factory.method.sites), source_site=source, target_sites=list(targets),
                                      factory_model=str(Path(factory_model).resolve()))
    if allow_fewer:
        ca["train"]["method_args"]["allow_fewer"] = True
    ca["preprocess"], ca["seed"] = factory.preprocess.to_dict(), seed
    spec["min_clients"] = 1 + len(targets)
    if quick:
        ca["local_steps"] = 4
    if steps:
        ca["local_steps"] = int(steps)
    return spec


def dice_report(results: dict, structures) -> str:
    """A markdown table of the targets' test Dice (as the sites returned it)."""
    head = ["target", "n volumes", "mean Dice", *structures]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in sorted(results["targets"].items()):
        if r["failed"]:
            rows.append(f"| {name} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        m = r["metrics"]
        cells = [str(int(m.get("n_volumes", 0))), f"{m.get('dice', float('nan')):.3f}",
                 *[f"{m[f'dice_{s}']:.3f}" if f"dice_{s}" in m else "-" for s in structures]]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def adapt(args) -> int:
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    sites = [args.source, *args.targets]
    missing = [s for s in sites if not (data / s / "dataset.json").is_file()]
    if missing:
        raise SystemExit(f"error: {data}: no site folder(s) {missing}")
    factory, info = load_checked(args.factory_model, args.job, "factory adapt", device="cpu")
    if args.source not in factory.method.sites:
        raise ValueError(f"--source {args.source}: not a phase-1 site of {Path(args.factory_model).name} (its sites: "
                         f"{' '.join(factory.method.sites)}); the source trains its branch on the generator's own "
                         "condition")
    out.mkdir(parents=True, exist_ok=True)
    model_file = Path(args.factory_model)
    if info.job is not None:  # an NVFlare global model: the server gets a checkpoint with its settings
        model_file = factory.save(out / "factory_model.pt", source=str(Path(args.factory_model).resolve()))
    spec = adapt_spec(factory, model_file, args.source, args.targets, args.steps, args.seed, args.quick,
                      allow_fewer=getattr(args, "allow_fewer", False))
    job = export_job(out / "jobs", spec)
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(data), "FEDXMODAL_SITE_STATE_DIR": str(out / "site_state"),
           "PYTHONUNBUFFERED": "1"}
    print(f"factory phase 2: source {args.source}, targets {', '.join(args.targets)}, "
          f"{spec['client_args']['local_steps']} steps per fit, phase-1 sites {', '.join(factory.method.sites)}",
          flush=True)
    t0 = time.perf_counter()
    try:
        run_simulator(job, workspace, env, out / "simulator.log", 1, sites=sites)
    except RuntimeError:  # the job stopped (e.g. the source failed): the server's reason below
        pass
    wall = time.perf_counter() - t0
    found = workspace / "server" / "simulate_job" / "app_server" / "adaptation_results.json"
    if not found.is_file():
        lines = (out / "simulator.log").read_text().splitlines()
        why = [ln for ln in lines if "factory adaptation:" in ln and "ERROR" in ln] or lines[-15:]
        raise SystemExit(f"error: the adaptation job ended without results (log: {out / 'simulator.log'}):\n"
                         + "\n".join(why[:5]))
    results = json.loads(found.read_text())
    for name, r in results["targets"].items():
        r["model"] = str(out / "site_state" / name / "factory_adapt" / "target.pt") if not r["failed"] else None
    results["simulator_seconds"] = wall
    (out / "dice.json").write_text(json.dumps(results, indent=1))
    table = dice_report(results, spec["client_args"]["structures"])
    (out / "dice.md").write_text(f"# Data factory phase 2: test Dice per target (source {args.source})\n\n{table}")
    print(table + f"done in {wall:.0f} s: {out}/dice.md, dice.json; models in {out}/site_state/<site>/factory_adapt/")
    return 1 if any(r["failed"] for r in results["targets"].values()) else 0
