"""SSL-ALPNet's one-shot evaluation protocol, on preprocessed axial slices.

Per organ: the support volume's slices containing the organ, z_list, give ``n_parts`` (3) support
slices z_list[int(p * len(z_list))] at p = 1/6, 1/2, 5/6. Each query slice z inside the query's
ground-truth organ range [z_min, z_max] gets chunk floor((z - z_min) / ((z_max - z_min) / 3)),
clipped to 0..2, and is segmented with that support slice; TP/FP/FN summed over the volume give
its 3D Dice (``in_range``: the published protocol, which uses the query's ground truth to pick
slices). The scored range is [z_min - z_margin, z_max + z_margin] clipped to the volume, a slice
outside the organ range taking the nearest chunk; SSL-ALPNet's released code has ``z_margin = 0``
(``config_ssl_upload.py``; ``validation.py`` records a slice when z_min - z_margin <= z <= z_max +
z_margin), so exactly [z_min, z_max] is the default here too. ``whole_volume``: every slice of the
query is segmented, its chunk by relative position in the volume, floor(3 z / Z), so no ground
truth is used. Dice is computed on the preprocessed slice grid, as SSL-ALPNet does (not resampled
back to the file's grid).

Optional anatomical prior ("quadrant masking", CoWPro): the prediction is cut to the patient's
side where the organ lies (``QUADRANT_PRIORS``); results are reported with and without it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .prototypes import PrototypeConfig, batch_logits

# Side of the patient an organ lies on. Slices from fedxmodal.data.preprocess are RAS: the first
# in-plane axis (dim -2) runs from the patient's left to right.
# Slices scored beyond each end of the query's organ range by the in-range protocol (SSL-ALPNet's default).
Z_MARGIN = 0

QUADRANT_PRIORS = {"liver": "right", "kidney_right": "right", "gallbladder": "right",
                   "spleen": "left", "kidney_left": "left"}

# (encoder, support images (N,1,H,W), support masks (N,1,H,W), query images (N,1,H,W)) -> (N,H,W) bool:
# query n is segmented with support n.
Predictor = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def support_slice_indices(organ: torch.Tensor, n_parts: int = 3) -> list[int]:
    """(Z, H, W) bool organ mask of the support volume -> ``n_parts`` slice indices at
    1/(2n) + i (1 - 1/n) / (n - 1) of its organ slice list (1/6, 1/2, 5/6 for n = 3)."""
    if n_parts < 1 or n_parts % 2 == 0:
        raise ValueError(f"n_parts must be odd and >= 1 (SSL-ALPNet), got {n_parts}")
    z_list = torch.nonzero(torch.as_tensor(organ).flatten(1).any(1)).flatten().tolist()
    if not z_list:
        raise ValueError("the support volume does not contain the organ")
    if n_parts == 1:
        fractions = [0.5]
    else:  # the same float expression as SSL-ALPNet, so int() truncates identically
        interval = (1.0 - 1.0 / n_parts) / (n_parts - 1)
        fractions = [1 / (n_parts * 2) + interval * i for i in range(n_parts)]
    return [z_list[int(f * len(z_list))] for f in fractions]


def organ_range(organ: torch.Tensor) -> tuple[int, int]:
    """(Z, H, W) bool -> (z_min, z_max) of slices containing the organ (inclusive)."""
    zs = torch.nonzero(torch.as_tensor(organ).flatten(1).any(1)).flatten()
    if zs.numel() == 0:
        raise ValueError("the query volume does not contain the organ")
    return int(zs[0]), int(zs[-1])


def chunk_in_range(z: int, z_min: int, z_max: int, n_parts: int = 3) -> int:
    """SSL-ALPNet's chunk: floor((z - z_min) / ((z_max - z_min) / n_parts)) clipped to 0..n-1
    (0 when the organ spans one slice)."""
    if z_max == z_min:
        return 0
    return int(min(max(int((z - z_min) // ((z_max - z_min) / n_parts)), 0), n_parts - 1))


def chunk_by_position(z: int, n_slices: int, n_parts: int = 3) -> int:
    """Chunk by relative position in the whole volume (no ground truth): floor(n z / Z), clipped."""
    return int(min(max(n_parts * z // n_slices, 0), n_parts - 1))


def quadrant_mask(size: tuple[int, int], side: str) -> torch.Tensor:
    """(H, W) bool half-plane of the patient's ``side`` ('right' / 'left') on RAS slices."""
    h, w = size
    mask = torch.zeros(h, w, dtype=torch.bool)
    if side == "right":
        mask[h // 2:] = True
    elif side == "left":
        mask[: (h + 1) // 2] = True
    else:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    return mask


def prototype_predictor(config: PrototypeConfig = PrototypeConfig(), batch_size: int = 16) -> Predictor:
    """A ``Predictor`` that segments with ``few_shot`` prototypes (test windows) over any encoder:
    a trained ``FewShotEncoder``, an untrained one, or ``IntensityFeatures`` (raw intensities)."""

    @torch.no_grad()
    def predict(encoder, support_images, support_masks, query_images):
        encoder.eval()
        tensors = [*encoder.parameters(), *encoder.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
        out = []
        for i in range(0, len(query_images), batch_size):
            sl = slice(i, i + batch_size)
            # the protocol pairs many query slices with the same few support slices: encode each once
            unique, inverse = torch.unique(support_images[sl].flatten(1), dim=0, return_inverse=True)
            feats = encoder(torch.cat([unique.view(-1, *support_images.shape[1:]), query_images[sl]]).to(device))
            n = unique.shape[0]
            logits = batch_logits(feats[:n][inverse.to(device)], support_masks[sl].float().to(device), feats[n:], config,
                                  training=False)
            out.append(logits.argmax(1).eq(1).cpu())
        return torch.cat(out)

    return predict


def _dice(tp, fp, fn) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else float("nan")


def evaluate_query(encoder: torch.nn.Module, predictor: Predictor, support_images: torch.Tensor,
                   support_organ: torch.Tensor, query_images: torch.Tensor, query_organ: torch.Tensor,
                   prior: torch.Tensor | None = None, n_parts: int = 3, z_margin: int = Z_MARGIN) -> dict:
    """One organ, one query volume.

    Args:
        encoder, predictor: see ``Predictor``.
        support_images: (Zs, 1, H, W); support_organ: (Zs, H, W) bool.
        query_images: (Zq, 1, H, W); query_organ: (Zq, H, W) bool ground truth.
        prior: optional (H, W) bool region the organ may occupy (``quadrant_mask``).
        n_parts: support slices / chunks (3).
        z_margin: the in-range protocol scores [z_min - z_margin, z_max + z_margin], clipped to the
            volume (slices outside the organ range take the nearest chunk, as in SSL-ALPNet).

    Returns:
        {"in_range": {...}, "whole_volume": {...}} (plus "in_range_prior", "whole_volume_prior"
        with a prior), each {"dice", "tp", "fp", "fn", "n_slices"}; also "support_slices" and
        "query_range".
    """
    if query_images.shape[0] != query_organ.shape[0] or support_images.shape[0] != support_organ.shape[0]:
        raise ValueError("images and organ masks must have the same number of slices")
    support_organ, query_organ = torch.as_tensor(support_organ).bool(), torch.as_tensor(query_organ).bool()
    sup_idx = support_slice_indices(support_organ, n_parts)
    z_min, z_max = organ_range(query_organ)
    n_q = query_images.shape[0]
    if z_margin < 0:
        raise ValueError(f"z_margin must be >= 0, got {z_margin}")
    lo, hi = max(z_min - z_margin, 0), min(z_max + z_margin, query_images.shape[0] - 1)
    plans = {"in_range": [(z, chunk_in_range(z, z_min, z_max, n_parts)) for z in range(lo, hi + 1)],
             "whole_volume": [(z, chunk_by_position(z, n_q, n_parts)) for z in range(n_q)]}
    pairs = sorted(set(plans["in_range"]) | set(plans["whole_volume"]))
    zs = [z for z, _ in pairs]
    chunks = [sup_idx[c] for _, c in pairs]
    pred = predictor(encoder, support_images[chunks], support_organ[chunks].unsqueeze(1).float(), query_images[zs])
    predicted = dict(zip(pairs, pred.bool()))
    result: dict = {"support_slices": sup_idx, "query_range": (z_min, z_max)}
    for name, plan in plans.items():
        for suffix, region in (("", None), ("_prior", prior)):
            if suffix and region is None:
                continue
            tp = fp = fn = 0
            for z, c in plan:
                p = predicted[(z, c)] if region is None else predicted[(z, c)] & region
                g = query_organ[z]
                tp += int((p & g).sum())
                fp += int((p & ~g).sum())
                fn += int((~p & g).sum())
            result[name + suffix] = {"dice": _dice(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "n_slices": len(plan)}
    return result


def evaluate_oneshot(encoder: torch.nn.Module, predictor: Predictor, support: tuple[torch.Tensor, torch.Tensor],
                     queries: list[tuple[torch.Tensor, torch.Tensor]], organs: dict[str, int],
                     use_priors: bool = True, n_parts: int = 3, z_margin: int = Z_MARGIN) -> dict:
    """Every organ on every query volume, with one labelled support volume.

    Args:
        support: (images (Zs, 1, H, W), labels (Zs, H, W) int class indices).
        queries: [(images, labels)] of the query volumes (the support volume excluded).
        organs: organ name -> class index in the labels.
        use_priors: also report with ``QUADRANT_PRIORS`` (organs without a prior: same as without).
        z_margin: slices scored beyond the organ range by the in-range protocol (``evaluate_query``).

    Returns:
        {"per_volume": {organ: [evaluate_query result, ...]}, "mean": {organ: {setting: mean Dice}},
         "mean_over_organs": {setting: mean Dice}}. Query volumes without the organ are skipped.
    """
    per_volume: dict[str, list] = {}
    for organ, cls in organs.items():
        side = QUADRANT_PRIORS.get(organ) if use_priors else None
        prior = quadrant_mask(tuple(support[0].shape[-2:]), side) if side else None
        if use_priors and prior is None:
            prior = torch.ones(tuple(support[0].shape[-2:]), dtype=torch.bool)
        per_volume[organ] = [evaluate_query(encoder, predictor, support[0], support[1] == cls, images,
                                            labels == cls, prior=prior, n_parts=n_parts, z_margin=z_margin)
                             for images, labels in queries if bool((labels == cls).any())]
    settings = ["in_range", "whole_volume"] + (["in_range_prior", "whole_volume_prior"] if use_priors else [])
    mean = {o: {s: float(np.mean([r[s]["dice"] for r in rs])) if rs else float("nan") for s in settings}
            for o, rs in per_volume.items()}
    overall = {s: float(np.nanmean([m[s] for m in mean.values()])) if mean else float("nan") for s in settings}
    return {"per_volume": per_volume, "mean": mean, "mean_over_organs": overall}


def setting2_keep(labels: torch.Tensor, test_classes) -> torch.Tensor:
    """Setting 2: training slices that contain any test organ are removed.

    Args:
        labels: (N, H, W) int class indices of the training slices.
        test_classes: class indices of the organs evaluated at test time.

    Returns:
        (N,) bool: True for slices to keep.
    """
    classes = torch.as_tensor(list(test_classes), dtype=torch.long)
    if classes.numel() == 0:
        return torch.ones(labels.shape[0], dtype=torch.bool)
    return ~torch.isin(torch.as_tensor(labels).long().flatten(1), classes).any(1)


def segment_volume(encoder: torch.nn.Module, predictor: Predictor, support_images: torch.Tensor,
                   support_organ: torch.Tensor, query_images: torch.Tensor, prior: torch.Tensor | None = None,
                   n_parts: int = 3) -> torch.Tensor:
    """Segment a whole query volume without ground truth (what ``segment --support`` does): the
    support slices at 1/6, 1/2, 5/6 of the support's organ range, each query slice by its relative
    position in the volume (``chunk_by_position``).

    Args:
        support_images: (Zs, 1, H, W); support_organ: (Zs, H, W) bool.
        query_images: (Zq, 1, H, W).
        prior: optional (H, W) bool region the organ may occupy.

    Returns:
        (Zq, H, W) bool.
    """
    support_organ = torch.as_tensor(support_organ).bool()
    sup_idx = support_slice_indices(support_organ, n_parts)
    n_q = query_images.shape[0]
    chosen = [sup_idx[chunk_by_position(z, n_q, n_parts)] for z in range(n_q)]
    pred = predictor(encoder, support_images[chosen], support_organ[chosen].unsqueeze(1).float(), query_images).bool()
    return pred & prior if prior is not None else pred
