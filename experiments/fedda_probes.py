"""Does the alignment happen? Two probes on the federated cells of a ``compare`` grid
(``python -m fedxmodal compare ... --regimes federated``), written to ``<grid>/probes.json``:

(a) **fresh discriminator**: per site, the bottleneck features of the site's final LOCAL model
    (the weights it submitted to cross-site evaluation) and of the final GLOBAL model, on the
    site's held-out slices (validation + test, never trained on); a fresh discriminator of the
    training one's shape (``FeatureDiscriminator``, same Adam) is trained for a fixed budget
    (``--steps`` batches of 16) on 2/3 of the slices to tell them apart and tested on the other
    1/3 (patch accuracy, chance 0.5). Both encoders run with batch statistics, as in training.
    The reference here is the final global model (the FedAvg of the locals): the global a site
    trained against in the last round is not kept; it differs by one aggregation. n/a (None) for
    FedBN, whose sites keep their BatchNorm tensors: its local models are not on the server.
(b) **modality probe** on the final global model (eval mode): globally pooled bottleneck features
    of CT vs MR held-out slices (equal counts); a linear probe (L2 logistic regression, 5-fold,
    balanced accuracy, chance 0.5) and the squared RBF-MMD (median bandwidth, unbiased).

    python experiments/fedda_probes.py --data DATA GRID_DIR [GRID_DIR ...] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fedxmodal.apps.models import job_site_args, trainer_from_fl_model
from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.engine.base import seed_everything
from fedxmodal.networks.discriminator import FeatureDiscriminator
from fedxmodal.networks.unet import encoder_features


def held_out(data: Path, site: str, structures, preprocess) -> torch.Tensor:
    s = SiteSlices(data / site, structures, preprocess, progress=False)
    return torch.cat([s.slices(split, foreground_only=True)[0] for split in ("validation", "test")])


@torch.no_grad()
def features(net, x, train_mode: bool, batch: int = 16) -> torch.Tensor:
    net.train(train_mode)
    return torch.cat([encoder_features(net, x[i:i + batch])[0] for i in range(0, len(x), batch)])


def fresh_discriminator_accuracy(f_local, f_ref, steps: int, seed: int = 0) -> float:
    seed_everything(seed)
    n = len(f_local)
    perm = torch.randperm(n)
    tr, te = perm[: max(1, 2 * n // 3)], perm[max(1, 2 * n // 3):]
    disc = FeatureDiscriminator(f_local.shape[1])
    opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (min(16, len(tr)),))]
        a, b = disc(f_local[idx]), disc(f_ref[idx])
        loss = 0.5 * (bce(a, torch.zeros_like(a)) + bce(b, torch.ones_like(b)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a, b = disc(f_local[te]), disc(f_ref[te])
    return float(0.5 * ((a < 0).float().mean() + (b > 0).float().mean()))


def linear_probe_accuracy(x, y, folds: int = 5, seed: int = 0) -> float:
    """Balanced accuracy of a logistic probe, stratified k-fold (every test fold holds both classes,
    also with a few slices per modality as on the real pair; fewer folds when a class is smaller)."""
    g = torch.Generator().manual_seed(seed)
    per_class = [c[torch.randperm(len(c), generator=g)] for c in (torch.nonzero(y == 0).flatten(),
                                                                  torch.nonzero(y == 1).flatten())]
    folds = min(folds, *(len(c) for c in per_class))
    perm = torch.cat(per_class)
    accs = []
    for k in range(folds):
        te = torch.cat([c[k::folds] for c in per_class])
        tr = perm[torch.isin(perm, te, invert=True)]
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        xt, xe = (x[tr] - mu) / sd, (x[te] - mu) / sd
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, y[tr]) + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            pred = ((xe @ w + b) > 0).float()
        accs.append(0.5 * (float((pred[y[te] == 1] == 1).float().mean()) + float((pred[y[te] == 0] == 0).float().mean())))
    return float(sum(accs) / len(accs))


def mmd2_rbf(a, b) -> float:
    x = torch.cat([a, b]).double()
    d2 = torch.cdist(x, x) ** 2
    sigma2 = d2[d2 > 0].median()
    k = torch.exp(-d2 / sigma2)
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kaa.sum() - kaa.trace()) / (n * (n - 1)) + (kbb.sum() - kbb.trace()) / (m * (m - 1)) - 2 * kab.mean())


def probe_cell(cell_dir: Path, data: Path, structures, steps: int) -> dict:
    from nvflare.apis.dxo import from_file

    job = next((cell_dir / "job").iterdir())
    run = cell_dir / "workspace" / "server" / "simulate_job"
    args = job_site_args(job)
    preprocess = PreprocessConfig.from_dict(args.get("preprocess"))
    glob = trainer_from_fl_model(run / "app_server" / "FL_global_model.pt", job, device="cpu")
    modality = {s: json.loads((data / s / "dataset.json").read_text())["modality"] for s in
                sorted(p.name for p in (run / "cross_site_val" / "model_shareables").iterdir()
                       if not p.name.startswith("SRV_"))}
    out = {"fresh_discriminator_accuracy": {}, "modality": modality}
    pooled = {}
    for site in modality:
        x = held_out(data, site, structures, preprocess)
        local = trainer_from_fl_model(run / "app_server" / "FL_global_model.pt", job, device="cpu")
        submitted = from_file(str(run / "cross_site_val" / "model_shareables" / site)).data
        kept_local = [k for k in local.model.state_dict() if k not in submitted and not k.endswith("num_batches_tracked")]
        if kept_local:  # FedBN: the site keeps its BN tensors; its local model is not on the server
            out["fresh_discriminator_accuracy"][site] = None
        else:
            local.set_weights({k: torch.as_tensor(v) for k, v in submitted.items()})
            out["fresh_discriminator_accuracy"][site] = fresh_discriminator_accuracy(
                features(local.model, x, True), features(glob.model, x, True), steps)
        pooled[modality[site]] = features(glob.model, x, False).mean(dim=(2, 3))
    if len(pooled) == 2:
        (ma, a), (mb, b) = sorted(pooled.items())
        n = min(len(a), len(b))
        g = torch.Generator().manual_seed(0)
        a, b = a[torch.randperm(len(a), generator=g)[:n]], b[torch.randperm(len(b), generator=g)[:n]]
        out["linear_probe_accuracy"] = linear_probe_accuracy(torch.cat([a, b]), torch.cat([torch.zeros(n), torch.ones(n)]))
        out["mmd2"] = mmd2_rbf(a, b)
        out["n_per_modality"] = n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grids", nargs="+")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data", required=True, help="the folder of site folders the grids were trained on")
    a = p.parse_args()
    for grid in map(Path, a.grids):
        cfg = json.loads((grid / "grid.json").read_text())
        cells = json.loads((grid / "compare.json").read_text())["cells"]
        results = {}
        for name, cell in sorted(cells.items()):
            if cell.get("regime") != "federated":
                continue
            data = Path(a.data)
            if not (data / cfg["sites"][0]).is_dir():
                raise SystemExit(f"{grid}: site folder {cfg['sites'][0]} not found in {data}")
            results[name] = probe_cell(grid / "runs" / name, data, cfg["structures"], a.steps)
            print(name, json.dumps(results[name]), flush=True)
        (grid / "probes.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {grid / 'probes.json'}")


if __name__ == "__main__":
    main()
