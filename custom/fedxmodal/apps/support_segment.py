"""``segment IMAGE --support SUPPORT_IMAGE SUPPORT_LABEL --structure NAME``: one-shot segmentation
of one structure in a new volume from ONE labelled example volume, with a self-supervised
few-shot model (e.g. the FedCoWPro global model). NIfTI or DICOM in (image and support alike, of
any modality: a CT support may segment an MR); the mask (uint8, 1 = the structure) is written in
the input's own grid and affine, as ``segment`` does.

How: both volumes are preprocessed into axial slices (``data.preprocess``); the support slices at
1/6, 1/2 and 5/6 of the structure's extent in the support volume segment the query slices of the
first, middle and last third of the query volume (no ground truth of the query is used); the
slice predictions return to the input's grid through the inverse of the preprocessing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..data.contract import CANONICAL_STRUCTURES, Case
from ..data.io import load_volume, save_nifti
from ..data.preprocess import VolumePreprocessor
from ..engine.evaluation import predict_volume
from .checkpoints import check_structure, load_checked
from .segment import dicom_input, guess_modality, save_overlay


def support_label_id(label_path, label_id: int | None = None) -> int:
    """The label value of the structure in the support label file: ``label_id`` if given (checked
    to be present), else the file's only non-zero value."""
    values = [int(v) for v in np.unique(np.asarray(load_volume(label_path, role="label")[0])) if v != 0]
    if label_id is not None:
        if int(label_id) not in values:
            raise ValueError(f"{label_path}: no voxel has label {label_id} (values present: {values})")
        return int(label_id)
    if len(values) != 1:
        raise ValueError(f"{label_path}: holds labels {values}; pass --support-label-id to pick the structure's")
    return values[0]


def _plain(x) -> torch.Tensor:
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def segment_with_support(image, model, support_image, support_label, structure: str, out, *,
                         label_id: int | None = None, modality: str | None = None,
                         support_modality: str | None = None, overlay: str | None = None, prior: bool = False,
                         device: str = "auto", job_dir=None) -> np.ndarray:
    """Segment ``structure`` in ``image`` with a one-shot model (a checkpoint, or an NVFlare global
    model with ``job_dir``; another kind of model, or a structure name that is neither canonical nor
    the model's, is refused with ``apps.checkpoints.ModelError`` before any work) and the labelled
    ``support_image``; write ``out``. ``prior``: keep only
    the structure's side of the patient (quadrant prior, where the method knows one). Returns the
    (X, Y, Z) uint8 mask on the input's grid."""
    trainer, info = load_checked(model, job_dir, "segment --support", device=device)
    if not check_structure(structure, (*info.structures, *CANONICAL_STRUCTURES)):
        print(f"note: {structure!r} is neither the model's nor a canonical structure name: it only names the mask"
              + ("; --prior knows no side for it and keeps the whole slice" if prior else ""), file=sys.stderr)
    for path in (image, support_image):  # an anonymised DICOM series is read: say what it lacks
        note = dicom_input(path, {"nifti": Path(out)})[2]
        if note:
            print(f"note: {note}", file=sys.stderr)
    if modality is None:
        modality, why = guess_modality(image)
        print(f"image modality {modality} ({why}); pass --modality to override")
    if support_modality is None:
        support_modality, why = guess_modality(support_image)
        print(f"support modality {support_modality} ({why}); pass --support-modality to override")
    value = support_label_id(support_label, label_id)

    def binary(arr, where=None):
        return (np.asarray(arr) == value).astype(np.uint8)

    s_pre = VolumePreprocessor(support_modality, trainer.preprocess)
    support = s_pre.prepare(Case(image=Path(support_image), label=Path(support_label), split="validation"), binary)
    organ = _plain(support.label) > 0
    if not bool(organ.any()):
        raise ValueError(f"{support_label}: the structure (label {value}) vanished after preprocessing")
    q_pre = VolumePreprocessor(modality, trainer.preprocess)
    query = q_pre.prepare(Case(image=Path(image), label=None, split="test"))
    pred = trainer.segment_with_support(_plain(support.image).float(), organ, _plain(query.image).float(),
                                        structure=structure, use_prior=prior)
    probs = torch.stack([~pred, pred], 1).float()  # (Z, 2, S, S): background, the structure
    mask = predict_volume(lambda _images: probs, query, q_pre)
    save_nifti(mask, query.original_affine, out, dtype=np.uint8)
    if overlay:
        save_overlay(load_volume(image)[0].numpy(), mask, query.original_affine, overlay, (structure,),
                     modality=modality, title=f"{Path(image).name} ({modality}): {structure}, one-shot with "
                                           f"{Path(model).name} from {Path(support_image).name} ({support_modality})")
    return mask
