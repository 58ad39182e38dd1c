"""Which Dual-Norm branch the test slices of a comparison grid take, and the foreground Dice of
each branch forced: a check of Dual-Norm's test-time rule on the grid's own models.

    python experiments/dualnorm_branches.py runs/compare/heart/grid runs/compare/heart/data

Prints, per Dual-Norm cell (local/centralized; federated models are not kept per site) and test
site: the share of slices routed to branch 1 (source-dissimilar) and the 2D foreground Dice over
the test slices with the rule, with branch 0 forced and with branch 1 forced.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from monai.metrics import compute_dice

from fedxmodal.data.slices import SiteSlices
from fedxmodal.methods import load_trainer
from fedxmodal.networks.domain_norm import forward_by_branch, select_branches
from fedxmodal.transforms.bezier import minmax_symmetric


def foreground_dice(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """(Z, H, W) class maps -> Dice of "any structure" vs background over all slices (MONAI)."""
    as_volume = lambda t: (t > 0).float().reshape(1, 1, -1)  # noqa: E731  all slices as one sample
    return compute_dice(as_volume(pred), as_volume(labels), include_background=True).item()


def main(grid: Path, data: Path) -> None:
    torch.set_num_threads(1)
    sites = sorted(p.name for p in data.iterdir() if (p / "dataset.json").is_file())
    for cell in sorted((grid / "runs").glob("dualnorm__*")):
        ckpt = cell / "final_model.pt"
        if not ckpt.is_file():
            continue
        engine = load_trainer(ckpt, device="cpu")
        model = engine.model.eval()
        for site in sites:
            x, y = SiteSlices(data / site, engine.structures, engine.preprocess, progress=False).slices("test")
            with torch.no_grad():
                rule = engine.predict_slices(x).argmax(1)
                v = minmax_symmetric(x)  # the network's input range for Dual-Norm
                share = select_branches(model, v).float().mean().item()
                forced = [forward_by_branch(model, v, torch.full((len(v),), b)).argmax(1) for b in (0, 1)]
            print(f"{cell.name:28s} test {site}: branch 1 for {share:.0%} of slices; foreground Dice "
                  f"rule {foreground_dice(rule, y):.3f}, branch 0 {foreground_dice(forced[0], y):.3f}, "
                  f"branch 1 {foreground_dice(forced[1], y):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
