"""Does the generator learn each site's appearance? A centralized probe (no federation): the
factory's network trained on the phase-1 sites' slices pooled (batches mixing the sites, each slice
with its own condition), then per site the SWD of samples under the site's own condition vs under
the other sites' conditions (the same figures the federated sites report).

    python experiments/factory_conditioning.py --data runs/factory/phantom/data --steps 600 \
        [--mapping-lr-mult 0.01] [--out runs/factory/conditioning]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.engine.gan import GanConfig
from fedxmodal.methods import build_trainer
from fedxmodal.methods.factory.pictures import save_rows
from fedxmodal.methods.factory.site_data import quality_metrics


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--sites", nargs="+", default=["ct-site", "mr-site", "mr-t1-site"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--mapping-lr-mult", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/factory/conditioning")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out) / f"lrmult{args.mapping_lr_mult}"
    network = {"image_size": 64, "n_sites": len(args.sites), "mapping_lr_mult": args.mapping_lr_mult}
    cfg = GanConfig(method="data_factory", method_args={"sites": args.sites}, batch_size=8, amp=False, seed=args.seed)
    trainer = build_trainer((), network, cfg, preprocess=PreprocessConfig(spacing=6.0, size=64), device="cpu")
    splits = {s: trainer.method.site_data(trainer, SiteSlices(Path(args.data) / s, (), trainer.preprocess,
                                                               progress=False), s, seed=args.seed)
              for s in args.sites}

    def pooled():  # each step: a batch mixing the sites (site index = its own)
        parts = [splits[s]["training"].batch(cfg.batch_size // len(args.sites) + 1) for s in args.sites]
        return {k: torch.cat([b[k] for b in parts])[:cfg.batch_size] for k in parts[0]}

    t0 = time.perf_counter()
    res = trainer.fit(pooled, steps=args.steps)
    metrics = {s: quality_metrics(trainer, splits[s]["training"], splits[s]["validation"], len(args.sites), n=64)
               for s in args.sites}
    summary = {"steps": args.steps, "mapping_lr_mult": args.mapping_lr_mult, "seconds": time.perf_counter() - t0,
               "fit": {**res["means"], "steps": res["steps"], "seconds": res["seconds"]}, "quality": metrics}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    z = torch.linspace(0, 15, 8).round().long()
    save_rows([(s, trainer.sample(i, splits[s]["training"].key, z, n=8, seed=0)) for i, s in enumerate(args.sites)],
              out / "samples.png", title=f"centralized, {args.steps} steps, mapping lr x {args.mapping_lr_mult}")
    print(json.dumps(summary["quality"], indent=1), f"{summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
