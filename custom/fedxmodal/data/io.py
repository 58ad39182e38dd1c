"""Reading and writing volumes: NIfTI through nibabel, DICOM series through pydicom, both via
MONAI's ``LoadImage`` so that every volume arrives as a channel-first ``MetaTensor`` whose
``affine`` maps voxel indices to RAS world millimetres (MONAI converts DICOM's LPS)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from .errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_series(path) -> bool:
    """A folder holding at least one DICOM file (``.dcm`` or a file with the DICM preamble)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for f in sorted(path.iterdir()):
        if f.is_file():
            if f.suffix.lower() == ".dcm":
                return True
            with open(f, "rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                return True
    return False


# MONAI probes for NVIDIA's nvImageCodec DICOM plugin and warns when it is absent (always, on
# CPU machines); pydicom's own decoders are what we use, so that message is noise.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
_loaders: dict[str, LoadImage] = {}


def _loader(kind: str) -> LoadImage:
    if kind not in _loaders:
        reader = "NibabelReader" if kind == "nifti" else "PydicomReader"
        _loaders[kind] = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
    return _loaders[kind]


def load_volume(path, *, role: str = "image") -> MetaTensor:
    """Load one 3D volume as a ``MetaTensor`` of shape (1, X, Y, Z) with its affine.

    ``path`` is a NIfTI file or a DICOM series folder. Raises ``DataError`` naming the file
    for anything missing, unreadable, truncated, non-3D or non-finite.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{role} file is missing")
    if is_nifti(path):
        kind = "nifti"
    elif is_dicom_series(path):
        kind = "dicom"
    else:
        raise DataError(path, f"{role} is neither a NIfTI file (.nii/.nii.gz) nor a DICOM series folder")
    if kind == "nifti":
        # nibabel reads the header lazily: check the full shape first so a 2D image or a 4D
        # series is named as such rather than failing deep inside MONAI.
        try:
            header_shape = nib.load(str(path)).shape
        except Exception as exc:  # nibabel raises several types for corrupt headers
            raise DataError(path, f"unreadable {role} ({type(exc).__name__}: {exc})") from None
        squeezed = [s for s in header_shape if s != 1] if len(header_shape) > 3 else header_shape
        if len(header_shape) < 3 or len(squeezed) != 3:
            raise DataError(path, f"{role} has shape {tuple(header_shape)}: a 3D volume is expected")
    try:
        vol = _loader(kind)(str(path))
    except Exception as exc:
        raise DataError(path, f"unreadable or truncated {role} ({type(exc).__name__}: {exc})") from None
    if vol.ndim == 5 and vol.shape[-1] == 1:  # (1, X, Y, Z, 1) from a 4D file with one frame
        vol = vol[..., 0]
    if vol.ndim != 4:
        raise DataError(path, f"{role} has shape {tuple(vol.shape[1:])}: a 3D volume is expected")
    if min(vol.shape[1:]) < 2:
        raise DataError(path, f"{role} has shape {tuple(vol.shape[1:])}: a 3D volume is expected, not a 2D image")
    if role == "image" and not torch.isfinite(vol).all():
        n_bad = int((~torch.isfinite(vol)).sum())
        raise DataError(path, f"{role} contains {n_bad} NaN/inf voxels")
    return vol


def save_nifti(array, affine, path, dtype=None) -> Path:
    """Write a 3D array with its (RAS) affine as NIfTI; ``dtype`` e.g. ``np.uint8`` for masks."""
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    aff = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    if dtype is not None:
        arr = arr.astype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, aff.astype(np.float64))
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))
    return path


def volume_affine(vol: MetaTensor) -> np.ndarray:
    return np.asarray(vol.affine.detach().cpu().numpy() if isinstance(vol.affine, torch.Tensor) else vol.affine, dtype=np.float64)


def relpath(path, start) -> str:
    return os.path.relpath(str(path), str(start))
