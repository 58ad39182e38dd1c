"""Evaluation as its own step: predict a volume slice by slice, invert the preprocessing onto the
volume's original grid, score per-volume 3D Dice per structure. The predictor is passed in, so a
trainer of any style (or a one-shot method with its own support set) brings its own.

A predictor is ``predict_slices(images (Z, 1, S, S)) -> (Z, C, S, S)`` class probabilities.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import PreparedVolume, VolumePreprocessor
from ..metrics.dice import summarize, volume_metrics

SlicePredictor = Callable[[torch.Tensor], torch.Tensor]


def predict_volume(predict_slices: SlicePredictor, vol: PreparedVolume, preprocessor: VolumePreprocessor) -> np.ndarray:
    """A prepared volume -> (X, Y, Z) uint8 class indices on the volume's original grid."""
    probs = preprocessor.invert(vol, predict_slices(vol.image))
    return probs.argmax(0).numpy().astype(np.uint8)


def evaluate_site(predict_slices: SlicePredictor, site_slices, structures, split: str = "test",
                  hd95: bool = False, progress: bool = False) -> dict:
    """Per-volume 3D Dice per structure of ``predict_slices`` on one site's split (volumes without
    a reference label are skipped). Returns ``{"site", "modality", "split", "per_volume",
    "summary"}`` (summary: means over volumes, see :func:`fedxmodal.metrics.dice.summarize`)."""
    per_volume = []
    vols = site_slices.volumes(split)
    for vol in tqdm(vols, desc=f"eval {site_slices.name}/{split}", leave=False, disable=not progress):
        if vol.ref_label is None:
            continue
        pred = predict_volume(predict_slices, vol, site_slices.preprocessor)
        m = volume_metrics(pred, vol.ref_label, structures, spacing=vol.spacing, hd95=hd95)
        m["case"] = vol.case.case_id
        per_volume.append(m)
    return {"site": site_slices.name, "modality": site_slices.modality, "split": split,
            "per_volume": per_volume, "summary": summarize(per_volume, structures)}
