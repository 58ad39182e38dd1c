"""Per-volume 3D Dice (and optional HD95) per structure, through MONAI's metrics."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.utils import one_hot


def volume_metrics(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, structures,
                   spacing=None, hd95: bool = False) -> dict:
    """pred, label: (X, Y, Z) class indices (0 = background, c = structures[c-1]).

    Returns ``{"dice": {structure: float|nan}, "mean_dice": float, ["hd95": {...}]}``. A structure
    absent from the reference gives NaN (left out of the mean), as MONAI's ``ignore_empty`` does.
    """
    n = len(structures) + 1
    p = one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long)[None, None], n)
    y = one_hot(torch.as_tensor(np.asarray(label), dtype=torch.long)[None, None], n)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y)[0]
    out = {"dice": {s: float(d) for s, d in zip(structures, dice)}}
    out["mean_dice"] = _nanmean(out["dice"].values())
    if hd95:
        hd = compute_hausdorff_distance(p, y, include_background=False, percentile=95,
                                        spacing=list(spacing) if spacing is not None else None)[0]
        out["hd95"] = {s: float(d) for s, d in zip(structures, hd)}
    return out


def _nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(per_volume: list[dict], structures) -> dict:
    """Mean over volumes of each structure's Dice (NaNs skipped) and of the per-volume means."""
    summary = {"n_volumes": len(per_volume), "dice": {}}
    for s in structures:
        summary["dice"][s] = _nanmean(v["dice"][s] for v in per_volume)
    summary["mean_dice"] = _nanmean(v["mean_dice"] for v in per_volume)
    return summary
