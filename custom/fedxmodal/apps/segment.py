"""``segment``: one NIfTI file or DICOM series in; a mask in the input's own geometry out.

Outputs, by the ``out`` path's suffix:

* ``.nii.gz`` / ``.nii``: the NIfTI mask (uint8 class indices, the input's grid and affine); for a
  DICOM series input also a DICOM SEG beside it (``mask.nii.gz`` -> ``mask.dcm``);
* ``.dcm``: only the DICOM SEG (the input must be a DICOM series).

A DICOM series whose identity tags were removed or blanked (an anonymiser's work: no
SeriesInstanceUID, empty SOPInstanceUID / SOPClassUID, ...) is read when its geometry is complete
and consistent, with one line saying what is missing. A DICOM SEG must reference the instances it
was computed from by those UIDs, so none is written for such a series (one line says why; the
NIfTI mask holds the result), and ``.dcm`` alone is refused before any work
(docs/clinical-outputs.md).

``overlay``: a PNG of the mask over the image, radiological view (``apps/overlay.py``).
"""


from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.contract import Case
from ..data.errors import DataError
from ..data.io import check_dicom_series, is_dicom_series, load_volume, missing_identity_tags, save_nifti
from ..data.preprocess import VolumePreprocessor
from .checkpoints import load_checked
from .dicom_seg import Algorithm, file_digest, seg_path_for, write_dicom_seg
from .overlay import save_overlay

__all__ = ["guess_modality", "output_paths", "segment_file", "save_overlay", "dicom_input"]


def guess_modality(image_path) -> tuple[str, str]:
    """(modality, how it was decided): the DICOM Modality tag, else CT if the volume holds
    Hounsfield-like air values (< -500), else MR."""
    path = Path(image_path)
    if is_dicom_series(path):
        import pydicom

        for f in sorted(path.iterdir()):
            try:
                mod = str(pydicom.dcmread(f, stop_before_pixels=True).get("Modality", ""))
            except Exception:
                continue
            if mod in ("CT", "MR"):
                return mod, "DICOM Modality tag"
    vol = load_volume(path)
    return ("CT", "intensities below -500 (Hounsfield air)") if float(vol.min()) < -500 else \
        ("MR", "no Hounsfield-like air values")


def output_paths(image, out) -> dict[str, Path]:
    """``{"nifti": path, "seg": path}`` (either may be absent) that ``segment_file`` writes.

    Raises:
        DataError: an ``out`` suffix other than .nii.gz / .nii / .dcm, or .dcm for a NIfTI input.
    """
    out = Path(out)
    name = out.name.lower()
    dicom_in = is_dicom_series(image)
    if name.endswith(".dcm"):
        if not dicom_in:
            raise DataError(out, f"a DICOM SEG (.dcm) needs a DICOM series as input, {image} is not one; "
                                 "write a NIfTI mask (.nii.gz) instead")
        return {"seg": out}
    if not name.endswith((".nii.gz", ".nii")):
        raise DataError(out, "the mask path must end in .nii.gz or .nii (NIfTI) or .dcm (DICOM SEG only)")
    return {"nifti": out, "seg": seg_path_for(out)} if dicom_in else {"nifti": out}


def dicom_input(image, paths: dict) -> tuple[list | None, dict, str | None]:
    """For a DICOM series: its checked headers, the outputs that can be written, and one line on
    identity tags it lacks (None if it has them all). A NIfTI input: (None, paths, None).

    Raises:
        DataError: a bad series (``check_dicom_series``); a DICOM SEG alone (``.dcm``) asked of a
            series that lacks the UIDs a SEG references its source by.
    """
    if not is_dicom_series(image):
        return None, paths, None
    headers = check_dicom_series(image)
    missing = missing_identity_tags(headers)
    if not missing:
        return headers, paths, None
    what = f"the series lacks {', '.join(missing)} (identity tags, as an anonymiser leaves them)"
    if "seg" in paths and "nifti" not in paths:
        raise DataError(image, f"{what}; a DICOM SEG must reference its source images by those UIDs, so none can be "
                               "written: write a NIfTI mask (--out mask.nii.gz) instead (its geometry is complete and "
                               "consistent: the series itself can be segmented)")
    lacks = f"{what}; its position, orientation and spacing are complete and consistent, so it is read"
    if "seg" in paths:
        paths = {k: v for k, v in paths.items() if k != "seg"}
        lacks += (f"; no DICOM SEG written ({seg_path_for(paths['nifti']).name}): it must reference its source "
                  "images by those UIDs; the NIfTI mask holds the result")
    return headers, paths, f"{image}: {lacks}"


def segment_file(image, model, out, modality: str | None = None, overlay: str | None = None,
                 device: str = "auto", job_dir=None, written: dict | None = None) -> np.ndarray:
    """Segment ``image`` (NIfTI file or DICOM series folder) with checkpoint ``model``.

    Args:
        image: input path.
        model: a fedxmodal checkpoint of a segmentation model (supervised or an adapted target),
            or an NVFlare global model with ``job_dir``; another kind is refused
            (``apps.checkpoints.ModelError``) before any work.
        out: mask path; see the module docstring for what each suffix writes.
        modality: ``"CT"`` / ``"MR"``; default the DICOM tag, else guessed from intensities.
        overlay: optional PNG path for a radiological overlay (axial + coronal).
        device: torch device or ``"auto"``.
        job_dir: the NVFlare job folder when ``model`` is a server-persisted global model.
        written: if given, filled with ``{"nifti": path, "seg": path}`` as far as written.

    Returns:
        The (X, Y, Z) uint8 mask on the input's grid.
    """
    paths = output_paths(image, out)
    headers, paths, note = dicom_input(image, paths)
    engine, info = load_checked(model, job_dir, "segment", device=device)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if modality is None:
        modality, why = guess_modality(image)
        print(f"modality {modality} ({why}); pass --modality to override")
    pre = VolumePreprocessor(modality, engine.preprocess)
    vol = pre.prepare(Case(image=Path(image), label=None, split="test"))
    mask = engine.predict_volume(vol, pre)
    written = {} if written is None else written
    if "nifti" in paths:
        written["nifti"] = save_nifti(mask, vol.original_affine, paths["nifti"], dtype=np.uint8)
    if "seg" in paths:
        method = engine.train_config.method
        algorithm = Algorithm(name=f"fedxmodal {method} {info.network}", version=__version__, model_id=file_digest(model),
                              parameters={"checkpoint": Path(model).name, "method": method, "modality": modality})
        written["seg"] = write_dicom_seg(mask, vol.original_affine, image, paths["seg"], engine.structures, algorithm,
                                         headers=headers)
    if overlay:
        save_overlay(load_volume(image)[0].numpy(), mask, vol.original_affine, overlay, engine.structures,
                     modality=modality, title=f"{Path(image).name} ({modality}): {Path(model).name}")
    return mask
