"""``segment``: one NIfTI file or DICOM series in; a mask in the input's own geometry out.

Outputs, by the ``out`` path's suffix:

* ``.nii.gz`` / ``.nii``: the NIfTI mask (uint8 class indices, the input's grid and affine); for a
  DICOM series input also a DICOM SEG beside it (``mask.nii.gz`` -> ``mask.dcm``);
* ``.dcm``: only the DICOM SEG (the input must be a DICOM series).

``overlay``: a PNG of the mask over the image, radiological view (``apps/overlay.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..data.contract import Case
from ..data.errors import DataError
from ..data.io import check_dicom_series, is_dicom_series, load_volume, save_nifti
from ..data.preprocess import VolumePreprocessor
from .dicom_seg import Algorithm, file_digest, seg_path_for, write_dicom_seg
from .models import load_model
from .overlay import save_overlay

__all__ = ["guess_modality", "output_paths", "segment_file", "save_overlay"]


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


def segment_file(image, model, out, modality: str | None = None, overlay: str | None = None,
                 device: str = "auto", job_dir=None) -> np.ndarray:
    """Segment ``image`` (NIfTI file or DICOM series folder) with checkpoint ``model``.

    Args:
        image: input path.
        model: a fedxmodal checkpoint, or an NVFlare global model with ``job_dir``.
        out: mask path; see the module docstring for what each suffix writes.
        modality: ``"CT"`` / ``"MR"``; default the DICOM tag, else guessed from intensities.
        overlay: optional PNG path for a radiological overlay (axial + coronal).
        device: torch device or ``"auto"``.
        job_dir: the NVFlare job folder when ``model`` is a server-persisted global model.

    Returns:
        The (X, Y, Z) uint8 mask on the input's grid.
    """
    paths = output_paths(image, out)
    headers = check_dicom_series(image) if "seg" in paths else None
    engine = load_model(model, job_dir, device=device)
    if modality is None:
        modality, why = guess_modality(image)
        print(f"modality {modality} ({why}); pass --modality to override")
    pre = VolumePreprocessor(modality, engine.preprocess)
    vol = pre.prepare(Case(image=Path(image), label=None, split="test"))
    mask = engine.predict_volume(vol, pre)
    if "nifti" in paths:
        save_nifti(mask, vol.original_affine, paths["nifti"], dtype=np.uint8)
    if "seg" in paths:
        method = engine.train_config.method
        algorithm = Algorithm(name=f"fedxmodal {method} 2D U-Net", version=__version__, model_id=file_digest(model),
                              parameters={"checkpoint": Path(model).name, "method": method, "modality": modality})
        write_dicom_seg(mask, vol.original_affine, image, paths["seg"], engine.structures, algorithm, headers=headers)
    if overlay:
        save_overlay(load_volume(image)[0].numpy(), mask, vol.original_affine, overlay, engine.structures,
                     modality=modality, title=f"{Path(image).name}: {Path(model).name}")
    return mask
