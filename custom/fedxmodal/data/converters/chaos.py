"""CHAOS (Combined Healthy Abdominal Organ Segmentation, https://chaos.grand-challenge.org,
Zenodo 3362844) -> two site folders, ``chaos-ct`` and ``chaos-mr``.

Expected source layout (the extracted ``CHAOS_Train_Sets.zip``; ``src_dir`` is the folder holding
``Train_Sets``, ``Train_Sets`` itself, or a folder with one sub-folder holding ``Train_Sets``)::

    Train_Sets/CT/<patient>/DICOM_anon/*.dcm          one axial series
    Train_Sets/CT/<patient>/Ground/*.png              liver masks, 0 / 255, one PNG per slice
    Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm
    Train_Sets/MR/<patient>/T2SPIR/Ground/*.png
    Train_Sets/MR/<patient>/T1DUAL/DICOM_anon/InPhase/*.dcm
    Train_Sets/MR/<patient>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    Train_Sets/MR/<patient>/T1DUAL/Ground/*.png       (shared by both phases)
    Test_Sets/...                                     same without Ground (only with include_unlabelled)

MR masks are grey-coded: liver 63 (55-70), right kidney 126 (110-135), left kidney 189 (175-200),
spleen 252 (240-255); any other grey value becomes background (logged).

What is written (everything as NIfTI inside the site folder, ``<site>/images/<case>.nii.gz`` and
``<site>/labels/<case>.nii.gz``, cases ``chaos_ct_<patient>`` / ``chaos_mr_<patient>``):

* ``chaos-ct``: the CT series, labels ``{"1": "liver"}``;
* ``chaos-mr``: one MR sequence per patient, ``mr_sequence="T2SPIR"`` (default), ``"T1DUAL"``
  (= in-phase) or ``"T1DUAL_OutPhase"``; labels liver 1, kidney_right 2, kidney_left 3, spleen 4.

Geometry. The image is read with ``load_volume`` (MONAI's ``PydicomReader``), which stacks the
slices in ``InstanceNumber`` order along the last voxel axis and swaps the in-plane axes, so
voxel ``[c, r, k]`` is pixel (row ``r``, column ``c``) of the ``k``-th slice by
``InstanceNumber``; its affine (RAS) comes from the first and last slice positions. The label is
built on exactly that grid: PNG row = DICOM row, PNG column = DICOM column, and the PNG of a slice
is the PNG with the same file stem as the DICOM file (MR: ``IMG-0004-00001.dcm`` /
``IMG-0004-00001.png``) or, when the names do not correspond (CT: ``i0000,0000b.dcm`` /
``liver_GT_000.png``), the i-th PNG in natural file-name order for the i-th DICOM slice by
``InstanceNumber``. Image and label are written with the same affine. The converter checks that
the reader really used this layout (it compares sampled slices of the loaded volume with the DICOM
pixel data) and raises ``DataError`` otherwise, so a MONAI change can never misalign masks silently.

Splits: per site, patients are split into training / validation / test by the fractions and the
seed. The test-set patients (no ground truth) are skipped unless ``include_unlabelled=True``, which
adds them to ``test`` without a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from ..errors import DataError
from ..io import load_volume, save_nifti, volume_affine
from .common import SiteWriter, check_fractions, log, natural_key, progress, require_source_dir

CT_LABELS = {1: "liver"}
MR_LABELS = {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "spleen"}
# inclusive grey-value ranges of the CHAOS MR masks -> label id
MR_GREY_RANGES = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))

_SEQUENCES = {
    "T2SPIR": ("T2SPIR", None), "T2": ("T2SPIR", None),
    "T1DUAL": ("T1DUAL", "InPhase"), "T1DUALINPHASE": ("T1DUAL", "InPhase"), "T1INPHASE": ("T1DUAL", "InPhase"),
    "INPHASE": ("T1DUAL", "InPhase"), "T1IN": ("T1DUAL", "InPhase"),
    "T1DUALOUTPHASE": ("T1DUAL", "OutPhase"), "T1OUTPHASE": ("T1DUAL", "OutPhase"),
    "OUTPHASE": ("T1DUAL", "OutPhase"), "T1OUT": ("T1DUAL", "OutPhase"),
}


def _parse_sequence(mr_sequence: str) -> tuple[str, str | None]:
    key = "".join(ch for ch in str(mr_sequence).upper() if ch.isalnum())
    if key not in _SEQUENCES:
        raise ValueError(f"mr_sequence must be 'T2SPIR', 'T1DUAL' (in-phase) or 'T1DUAL_OutPhase', got {mr_sequence!r}")
    return _SEQUENCES[key]


@dataclass
class _Slice:
    path: Path
    instance: int


def _dicom_slices(dicom_dir: Path) -> list[_Slice]:
    """The DICOM files of a series in the order MONAI's PydicomReader stacks them (InstanceNumber)."""
    if not dicom_dir.is_dir():
        raise DataError(dicom_dir, "DICOM series folder is missing")
    files = [f for f in sorted(dicom_dir.iterdir(), key=lambda p: natural_key(p.name))
             if f.is_file() and not f.name.startswith(".") and pydicom.misc.is_dicom(str(f))]
    if not files:
        raise DataError(dicom_dir, "holds no DICOM file (files with the 'DICM' preamble)")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:
            raise DataError(f, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
        if getattr(ds, "InstanceNumber", None) in (None, ""):
            raise DataError(f, "DICOM slice has no InstanceNumber: the slice order is undefined")
        slices.append(_Slice(f, int(ds.InstanceNumber)))
    by_name = [s.path for s in slices]
    slices.sort(key=lambda s: (s.instance, natural_key(s.path.name)))
    numbers = [s.instance for s in slices]
    if len(set(numbers)) != len(numbers):
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        raise DataError(dicom_dir, f"duplicate InstanceNumber(s) {dupes[:5]}: the slice order is ambiguous")
    if [s.path for s in slices] != by_name:
        log.warning("%s: file-name order differs from InstanceNumber order; slices follow InstanceNumber", dicom_dir)
    return slices


def _png_files(ground_dir: Path) -> list[Path]:
    if not ground_dir.is_dir():
        raise DataError(ground_dir, "ground-truth folder is missing: the image has no label")
    pngs = sorted((p for p in ground_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png"),
                  key=lambda p: natural_key(p.name))
    if not pngs:
        raise DataError(ground_dir, "holds no PNG mask: the image has no label")
    return pngs


def _pair_pngs(slices: list[_Slice], pngs: list[Path], dicom_dir: Path, ground_dir: Path) -> list[Path]:
    """The PNG of every slice, in slice order."""
    if len(pngs) != len(slices):
        raise DataError(ground_dir, f"{len(pngs)} PNG masks but the DICOM series {dicom_dir} has {len(slices)} slices")
    by_stem = {p.stem: p for p in pngs}
    if all(s.path.stem in by_stem for s in slices):
        return [by_stem[s.path.stem] for s in slices]
    return pngs


def _read_png(path: Path, rows: int, cols: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as exc:
        raise DataError(path, f"unreadable PNG ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise DataError(path, f"PNG mask is {arr.shape[0]} x {arr.shape[1]} (rows x columns) but its DICOM slice is "
                              f"{rows} x {cols}")
    return arr


def grey_to_labels(grey: np.ndarray, modality: str) -> tuple[np.ndarray, int]:
    """CHAOS grey-coded mask -> label ids; also the number of non-zero voxels left unmapped."""
    out = np.zeros(grey.shape, dtype=np.uint8)
    if modality == "CT":
        out[grey >= (1 if grey.max(initial=0) <= 1 else 128)] = 1
    else:
        for lo, hi, label_id in MR_GREY_RANGES:
            out[(grey >= lo) & (grey <= hi)] = label_id
    return out, int(((grey > 0) & (out == 0)).sum())


def _image_dtype(arr: np.ndarray):
    if np.array_equal(arr, np.round(arr)):
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= -32768 and hi <= 32767:
            return np.int16
        if lo >= -(2**31) and hi < 2**31:
            return np.int32
    return np.float32


def _check_layout(volume: np.ndarray, slices: list[_Slice], dicom_dir: Path) -> None:
    """The loaded (X, Y, Z) volume must be the DICOM pixel data transposed, stacked by InstanceNumber."""
    n = len(slices)
    for k in sorted({0, n // 2, n - 1}):
        ds = pydicom.dcmread(str(slices[k].path))
        pixels = ds.pixel_array.astype(np.float32)
        pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        if not np.allclose(volume[:, :, k], pixels.T, rtol=1e-4, atol=1e-3):
            raise DataError(slices[k].path, "the DICOM reader did not stack this series as (columns, rows, "
                                            "InstanceNumber order): cannot align the PNG masks with it")


def convert_series(dicom_dir: Path, ground_dir: Path | None, modality: str, image_out: Path,
                   label_out: Path | None) -> int:
    """Convert one DICOM series (+ its PNG masks) to NIfTI; returns the number of unmapped mask voxels."""
    slices = _dicom_slices(dicom_dir)
    pngs = _pair_pngs(slices, _png_files(ground_dir), dicom_dir, ground_dir) if ground_dir is not None else None
    image = load_volume(dicom_dir, role="image")
    n_cols, n_rows, n_slices = (int(s) for s in image.shape[1:])
    if n_slices != len(slices):
        raise DataError(dicom_dir, f"the DICOM reader stacked {n_slices} slices, the folder holds {len(slices)} "
                                   "(slices of another series or unreadable files?)")
    array = image[0].numpy()
    _check_layout(array, slices, dicom_dir)
    affine = volume_affine(image)
    save_nifti(array, affine, image_out, dtype=_image_dtype(array))
    if pngs is None:
        return 0
    label = np.zeros((n_cols, n_rows, n_slices), dtype=np.uint8)
    unmapped = 0
    for k, png in enumerate(pngs):
        ids, bad = grey_to_labels(_read_png(png, n_rows, n_cols), modality)
        label[:, :, k] = ids.T  # PNG (row, col) -> voxel (col, row), like the image
        unmapped += bad
    if unmapped:
        log.warning("%s: %d mask pixels have grey values outside the CHAOS label ranges (set to background)",
                    ground_dir, unmapped)
    save_nifti(label, affine, label_out, dtype=np.uint8)
    return unmapped


def _find_sets(src: Path) -> tuple[Path, Path | None]:
    """(Train_Sets folder, Test_Sets folder or None)."""
    candidates = [src / "Train_Sets", src] + [d / "Train_Sets" for d in sorted(src.iterdir()) if d.is_dir()]
    for cand in candidates:
        if (cand / "CT").is_dir() or (cand / "MR").is_dir():
            tests = [cand.parent / "Test_Sets", *sorted(cand.parent.parent.glob("*/Test_Sets"))]
            return cand, next((t for t in tests if t.is_dir() and t != cand), None)
    raise DataError(src, "unknown layout: expected CHAOS Train_Sets/CT/<patient>/DICOM_anon + Ground and/or "
                         "Train_Sets/MR/<patient>/T2SPIR|T1DUAL/...")


def _patients(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: natural_key(d.name))


def _case_id(modality: str, patient: str, test: bool = False) -> str:
    p = f"{int(patient):02d}" if patient.isdigit() else patient
    return f"chaos_{modality.lower()}_{'test_' if test else ''}{p}"


def _series_dirs(patient_dir: Path, modality: str, sequence: str, phase: str | None) -> tuple[Path, Path]:
    """(DICOM series folder, Ground folder) of one patient."""
    if modality == "CT":
        base = patient_dir
    else:
        base = patient_dir / sequence
        if not base.is_dir():
            raise DataError(patient_dir, f"unknown layout: no {sequence}/ folder in this MR patient folder")
    dicom = base / "DICOM_anon"
    if phase is not None:
        dicom = dicom / phase
    if not dicom.is_dir():
        raise DataError(base, f"unknown layout: {dicom.relative_to(base)}/ is missing")
    return dicom, base / "Ground"


def convert_chaos(src_dir, out_dir, *, mr_sequence: str = "T2SPIR", val_fraction: float = 0.2,
                  test_fraction: float = 0.2, seed: int = 0, modalities=("CT", "MR"),
                  include_unlabelled: bool = False) -> dict[str, Path]:
    """Write ``out_dir/chaos-ct`` and ``out_dir/chaos-mr`` (those in ``modalities`` with data);
    returns ``{site_name: site_dir}``. See the module docstring."""
    check_fractions(val_fraction, test_fraction)
    sequence, phase = _parse_sequence(mr_sequence)
    wanted = {str(m).upper() for m in modalities}
    if not wanted <= {"CT", "MR"}:
        raise ValueError(f"modalities must be a subset of ('CT', 'MR'), got {modalities!r}")
    src = require_source_dir(src_dir, "CHAOS")
    train_sets, test_sets = _find_sets(src)
    out = Path(out_dir).absolute()
    result = {}
    for modality in ("CT", "MR"):
        if modality not in wanted or not (train_sets / modality).is_dir():
            continue
        patients = _patients(train_sets / modality)
        if not patients:
            raise DataError(train_sets / modality, "holds no patient folder")
        site = f"chaos-{modality.lower()}"
        seq_text = "" if modality == "CT" else f" {sequence}{' ' + phase if phase else ''}"
        writer = SiteWriter(
            out / site, name=site, modality=modality, labels=CT_LABELS if modality == "CT" else MR_LABELS,
            description=f"CHAOS {modality}{seq_text} training patients, converted from DICOM + PNG by fedxmodal",
            reference="https://chaos.grand-challenge.org/ (Kavur et al., Medical Image Analysis 69, 2021)",
            licence="CC-BY-NC-SA-4.0", source=train_sets / modality)
        jobs = [(p, False) for p in patients]
        if include_unlabelled and test_sets is not None and (test_sets / modality).is_dir():
            jobs += [(p, True) for p in _patients(test_sets / modality)]
        for patient_dir, is_test in progress(jobs, desc=f"CHAOS {modality}"):
            case_id = _case_id(modality, patient_dir.name, is_test)
            dicom_dir, ground_dir = _series_dirs(patient_dir, modality, sequence, phase)
            image_out = writer.path_for("images", case_id)
            label_out = None if is_test else writer.path_for("labels", case_id)
            convert_series(dicom_dir, None if is_test else ground_dir, modality, image_out, label_out)
            writer.add(case_id, writer.own_file(image_out), writer.own_file(label_out) if label_out else None,
                       "test" if is_test else None)
        writer.write(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        result[site] = writer.site_dir
    if not result:
        raise DataError(train_sets, f"no {' or '.join(sorted(wanted))} folder found")
    return result
