"""Non-federated regimes with the method's trainer: ``local`` (one site's data) and
``centralized`` (all sites' training slices pooled). The federated regime drives the same trainer
from NVFlare (``fedxmodal.fl.site``). Every regime evaluates on every given site's
test split."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from ..data.preprocess import PreprocessConfig
from ..data.slices import SiteSlices
from ..metrics.report import write_evaluation
from ..engine.base import SliceData, seed_everything
from ..engine.supervised import SupervisedTrainer, TrainConfig
from ..methods import build_trainer, load_trainer, method_class
from ..networks.unet import UNetConfig

log = logging.getLogger(__name__)


def validation_dice(trainer: SupervisedTrainer, sites: list[SiteSlices]) -> float:
    """Mean over sites of the per-volume mean Dice on each site's validation split."""
    vals = [trainer.evaluate(s, "validation")["summary"]["mean_dice"] for s in sites]
    return float(sum(vals) / len(vals))


def train_regime(regime: str, train_sites: list[str], structures, out_dir, *, epochs: int = 10,
                 eval_sites: list[str] | None = None, train: TrainConfig | None = None,
                 network: UNetConfig | None = None, preprocess: PreprocessConfig | None = None,
                 device: str = "auto", progress: bool = True, writer=None, validate_every: int = 1) -> dict:
    """Train with ``regime`` ('local': exactly one site; 'centralized': pooled sites), keep the
    model with the best validation Dice, evaluate it and the final model on every eval site's
    test split; writes ``out_dir/{final,best}_model.pt`` and ``evaluation_{final,best}.{json,md}``.
    ``validate_every``: validate (and keep the best model) every that many epochs; 0: never (the
    final model is also the "best")."""
    if regime not in ("local", "centralized"):
        raise ValueError(f"unknown regime {regime!r} (federated runs go through NVFlare: see README)")
    if regime == "local" and len(train_sites) != 1:
        raise ValueError("--regime local trains on exactly one site")
    train = train or TrainConfig()
    preprocess = preprocess or PreprocessConfig()
    # what the method needs of its network in this regime (Dual-Norm's two BN branches, DSBN's one per site)
    network = dataclasses.replace(network or UNetConfig(),
                                  **method_class(train.method).network_overrides(regime, len(train_sites)))
    seed_everything(train.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
    sites = [SiteSlices(s, structures, preprocess, progress=progress) for s in train_sites]
    pooled = [s.slices("training", foreground_only=train.foreground_only) for s in sites]
    images = torch.cat([p[0] for p in pooled])
    labels = torch.cat([p[1] for p in pooled])
    domains = torch.cat([torch.full((len(p[0]),), i, dtype=torch.long) for i, p in enumerate(pooled)])
    trainer = build_trainer(structures, network, train, preprocess, device=device, writer=writer,
                           domains=[s.name for s in sites])
    trainer.method.prepare([p[0] for p in pooled])
    trainer.plan(epochs)  # the whole run's length, for schedules (FedDA's adversarial ramp)
    log.info("%s training on %s: %d slices, %d epochs", regime, [s.name for s in sites], len(images), epochs)
    history, best, t0 = [], -1.0, time.perf_counter()
    data = SliceData(images, labels, domains)
    for epoch in range(1, epochs + 1):
        fit = trainer.fit(data, epochs=1, desc=f"{regime}", progress=progress)
        if not validate_every or epoch % validate_every:
            history.append({"epoch": epoch, "loss": fit["loss"]})
            continue
        val = validation_dice(trainer, sites)
        history.append({"epoch": epoch, "loss": fit["loss"], "val_dice": val})
        writer.add_scalar("val/mean_dice", val, epoch)
        if progress:
            print(f"[{regime}] epoch {epoch}/{epochs} loss {fit['loss']:.4f} val Dice {val:.4f}", flush=True)
        if val > best:
            best = val
            trainer.save(out_dir / "best_model.pt", regime=regime, epoch=epoch, val_dice=val)
    trainer.save(out_dir / "final_model.pt", regime=regime, epoch=epochs)
    never_validated = best < 0
    if never_validated:  # the final model is also the "best": saved and evaluated once
        trainer.save(out_dir / "best_model.pt", regime=regime, epoch=epochs)
    wall = time.perf_counter() - t0
    eval_dirs = eval_sites or train_sites
    eval_slices = {s.site.root: s for s in sites}
    results = {"regime": regime, "train_sites": [s.name for s in sites], "structures": list(structures),
               "epochs": epochs, "n_train_slices": int(len(images)), "history": history,
               "train": train.to_dict(), "seconds": wall, "models": {}}
    for tag in ("final",) if never_validated else ("final", "best"):
        model = load_trainer(out_dir / f"{tag}_model.pt", device=device)
        evals = []
        for d in eval_dirs:
            site = eval_slices.get(Path(d).resolve()) or SiteSlices(d, structures, preprocess, progress=progress)
            eval_slices[site.site.root] = site
            evals.append(model.evaluate(site, "test"))
        write_evaluation(evals, out_dir / f"evaluation_{tag}", title=f"{regime} ({tag} model)")
        results["models"][tag] = {e["site"]: e["summary"] for e in evals}
    if never_validated:
        results["models"]["best"] = results["models"]["final"]
        write_evaluation(evals, out_dir / "evaluation_best", title=f"{regime} (final = best model)")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    writer.close()
    return results
