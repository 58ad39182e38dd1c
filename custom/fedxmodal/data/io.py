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
    for anything missing, unreadable, truncated, non-3D or non-finite; a DICOM folder is first
    checked by ``check_dicom_series`` (one complete, evenly spaced, axial series).
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
    if kind == "dicom":
        check_dicom_series(path)
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


# ---- DICOM series checks ---------------------------------------------------------------------
# MONAI's PydicomReader stacks every file of the folder by InstanceNumber and takes the slice step
# from the first and last positions: a second series, a missing slice or uneven spacing would give
# a plausible-looking but wrong volume (and mask). These checks refuse such folders up front.
# What places a slice in the volume (geometry; MONAI stacks by InstanceNumber). Identity tags
# (UIDs) are not geometry: an anonymiser may remove SeriesInstanceUID or blank SOPInstanceUID /
# SOPClassUID, and such a series is still read when its geometry is complete and consistent.
_REQUIRED_TAGS = ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                  "Columns")
# What a DICOM SEG needs to reference its source images (apps/dicom_seg.py).
IDENTITY_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID")
_NO_SERIES_UID = "<no SeriesInstanceUID>"
_AXES = ("left-right (sagittal stack)", "anterior-posterior (coronal stack)", "superior-inferior (axial stack)")


def read_dicom_headers(folder) -> list:
    """Headers (no pixel data) of every file in a DICOM series folder, as MONAI would read them.

    Args:
        folder: the series folder; hidden files are skipped (MONAI's glob skips them too).

    Returns:
        ``pydicom.Dataset`` list in file-name order, each with ``filename`` set.

    Raises:
        DataError: a sub-folder, a non-DICOM or unreadable file (named).
    """
    import pydicom

    folder = Path(folder)
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            raise DataError(folder, f"contains the sub-folder {f.name!r}: point at one series folder of DICOM files")
        try:
            out.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as exc:
            raise DataError(f, f"not a readable DICOM file in the series folder {folder} "
                               f"({type(exc).__name__}: {exc})") from None
    if not out:
        raise DataError(folder, "holds no DICOM file")
    return out


def check_dicom_series(folder) -> list:
    """Check that ``folder`` holds exactly one complete, evenly spaced, axial single-frame series.

    Files without a SeriesInstanceUID (anonymised) are one series when none has one; their
    geometry (positions, orientation, spacing, size, InstanceNumber order) is checked as for any
    series. :func:`missing_identity_tags` says which identity tags such a series lacks.

    Args:
        folder: a DICOM series folder.

    Returns:
        The headers (``pydicom.Dataset``, no pixel data) sorted by slice position along the slice
        normal (ascending).

    Raises:
        DataError: ``"<folder>: <problem>"`` for mixed series, multi-frame files, missing tags,
            differing orientation / size / pixel spacing, a non-axial stack, duplicate or sheared
            positions, missing slices, uneven spacing, or an InstanceNumber order that does not
            follow the positions (MONAI stacks by InstanceNumber).
    """
    folder = Path(folder)
    headers = read_dicom_headers(folder)
    by_series: dict[str, list] = {}
    for ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "") or _NO_SERIES_UID), []).append(ds)
    if len(by_series) > 1:
        parts = [f"{uid} ({str(v[0].get('SeriesDescription', '') or v[0].get('Modality', ''))!r}, {len(v)} files)"
                 for uid, v in by_series.items()]
        raise DataError(folder, f"mixed series in one folder: {len(by_series)} series ({'; '.join(parts)}); "
                                "put each series in a folder of its own")
    for ds in headers:
        missing = [t for t in _REQUIRED_TAGS if ds.get(t) in (None, "")]
        name = Path(ds.filename).name
        if missing:
            raise DataError(folder, f"{name} lacks {', '.join(missing)}: cannot place the slice in the volume")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(folder, f"{name} is a multi-frame (enhanced) DICOM file: only series of single-frame "
                                    "slices are supported")
    first = headers[0]
    for key in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        ref = np.asarray(first.get(key), dtype=np.float64)
        for ds in headers[1:]:
            if not np.allclose(np.asarray(ds.get(key), dtype=np.float64), ref, atol=1e-4):
                raise DataError(folder, f"{key} differs between slices: {first.get(key)} in "
                                        f"{Path(first.filename).name}, {ds.get(key)} in {Path(ds.filename).name}")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    if axis != 2:
        raise DataError(folder, f"non-axial stack: the slice normal {np.round(normal, 3).tolist()} (LPS) runs along "
                                f"the patient's {_AXES[axis]}; only axial series are supported")
    if len(headers) < 2:
        return headers
    pos = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    order = np.argsort(pos @ normal, kind="stable")
    headers, pos = [headers[i] for i in order], pos[order]
    _check_positions(folder, headers, pos, normal, float(np.asarray(first.PixelSpacing, float).min()))
    numbers = [int(ds.InstanceNumber) for ds in headers]
    steps = np.diff(numbers)
    if not ((steps > 0).all() or (steps < 0).all()):
        raise DataError(folder, "the InstanceNumber order does not follow the slice positions (InstanceNumbers by "
                                f"position: {numbers[:12]}{' ...' if len(numbers) > 12 else ''}); the slices "
                                "would be stacked out of order")
    return headers


def missing_identity_tags(headers) -> list[str]:
    """The :data:`IDENTITY_TAGS` absent or empty in any of ``headers`` (e.g. an anonymised series),
    in that order; [] for a series a DICOM SEG can reference."""
    return [t for t in IDENTITY_TAGS if any(str(ds.get(t, "") or "").strip() == "" for ds in headers)]


def _check_positions(folder: Path, headers: list, pos: np.ndarray, normal: np.ndarray, pixel: float) -> None:
    """Duplicate, sheared, missing and unevenly spaced slices, from positions sorted along ``normal``."""
    dist = pos @ normal
    steps = np.diff(dist)
    name = lambda i: Path(headers[i].filename).name  # noqa: E731
    tol = 1e-3 + 1e-2 * max(pixel, 1e-3)
    dup = np.nonzero(steps < tol)[0]
    if dup.size:
        i = int(dup[0])
        raise DataError(folder, f"two slices at the same position {np.round(pos[i], 3).tolist()} ({name(i)}, "
                                f"{name(i + 1)}): duplicate or mixed acquisitions")
    off_axis = np.linalg.norm((pos - pos[0]) - np.outer(dist - dist[0], normal), axis=1)
    if off_axis.max() > tol + 1e-3 * abs(dist[-1] - dist[0]):
        k = int(np.argmax(off_axis))
        tilt = float(np.degrees(np.arctan2(off_axis[k], abs(dist[k] - dist[0]))))
        raise DataError(folder, f"slices are not stacked along their normal (sheared by {tilt:.1f} degrees, "
                                "e.g. gantry tilt): resample the series to an orthogonal grid first")
    step = float(np.median(steps))
    rel = steps / step
    bad = np.nonzero(np.abs(rel - 1.0) > 0.01)[0]
    if not bad.size:
        return
    i = int(bad[0])
    where = (f"between {name(i)} and {name(i + 1)} (positions {dist[i]:.2f} and {dist[i + 1]:.2f} mm along the "
             "slice normal)")
    if all(abs(r - round(r)) < 0.05 and round(r) >= 1 for r in rel):
        n_missing = int(sum(round(r) - 1 for r in rel))
        raise DataError(folder, f"missing slices: {n_missing} slice(s) missing from the series; the step is "
                                f"{step:.2f} mm but {steps[i]:.2f} mm {where}")
    raise DataError(folder, f"inconsistent slice spacing: steps between neighbouring slices range from "
                            f"{steps.min():.2f} to {steps.max():.2f} mm (first irregular step {steps[i]:.2f} mm "
                            f"{where})")


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
