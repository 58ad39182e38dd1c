"""Shared helpers of the converters: finding source files, referencing or linking them from a
site folder, deterministic train/validation/test splits and writing the site's ``dataset.json``
(docs/data-contract.md).

A converter collects the cases of one site in a :class:`SiteWriter` and calls
:meth:`SiteWriter.write`. Files the converter creates (NIfTI converted from DICOM, merged label
maps) go to ``<site>/images`` and ``<site>/labels``; the split of a case lives only in
``dataset.json``, so re-running with another seed never leaves stale files in split folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError

log = logging.getLogger("fedxmodal.data.converters")

SPLITS = ("training", "validation", "test")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def natural_key(text) -> list:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_nifti(folder: Path) -> list[Path]:
    """NIfTI files of a folder in natural order, without hidden files (``._x`` from macOS zips)."""
    return sorted((p for p in Path(folder).iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(NIFTI_SUFFIXES)),
                  key=lambda p: natural_key(p.name))


def require_source_dir(src_dir, what: str) -> Path:
    """The source folder as an absolute path; ``DataError`` if it is missing, not a folder or empty."""
    src = Path(src_dir).expanduser().absolute()
    if not src.exists():
        raise DataError(src, f"{what} source folder is missing")
    if not src.is_dir():
        raise DataError(src, f"{what} source must be a folder, not a file")
    if not any(p for p in src.iterdir() if not p.name.startswith(".")):
        raise DataError(src, f"{what} source folder is empty")
    return src


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction}): "
                         "nothing would be left for training")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` cases: rounded fractions, but at least one case in every split
    whose fraction is > 0 as long as at least one training case remains (n >= 3 for all three)."""
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n >= 2 and test_fraction > 0:
        n_test = max(1, n_test)
    if n >= 3 and val_fraction > 0:
        n_val = max(1, n_val)
    while n_val + n_test > n - 1 and (n_val or n_test):  # keep one training case
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(case_ids, val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic random split: the same ids, fractions and seed always give the same split,
    whatever order the ids come in (they are sorted first, then permuted by ``numpy``'s PCG64)."""
    ids = sorted(set(case_ids), key=natural_key)
    n_val, n_test = split_counts(len(ids), val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    out = {cid: "test" for cid in shuffled[:n_test]}
    out.update({cid: "validation" for cid in shuffled[n_test:n_test + n_val]})
    out.update({cid: "training" for cid in shuffled[n_test + n_val:]})
    return out


def reference_path(target: Path, site_dir: Path) -> str:
    """How ``dataset.json`` names a file outside the site: relative to the site folder when both
    live in the same tree (they share more than the file system root), else absolute."""
    target = Path(os.path.abspath(target))
    site_dir = Path(os.path.abspath(site_dir))
    try:
        common = Path(os.path.commonpath([target, site_dir]))
    except ValueError:  # different drives (Windows)
        return target.as_posix()
    if common == Path(common.anchor):
        return target.as_posix()
    return Path(os.path.relpath(target, site_dir)).as_posix()


def write_like(reference: Path, array: np.ndarray, path: Path) -> Path:
    """Write ``array`` as NIfTI with the header geometry (qform, sform and their codes) of the
    NIfTI file ``reference``, so both files load with bit-identical affines."""
    ref = nib.load(str(reference))
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)):
        header = ref.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = 0, 0
        img = type(ref)(array, None, header=header)
    else:  # e.g. an Analyze pair: fall back to the affine
        img = nib.Nifti1Image(array, ref.affine)
    nib.save(img, str(path))
    return path


def label_dtype(max_id: int):
    return np.uint8 if max_id < 256 else np.uint16


def progress(iterable, desc: str, total: int | None = None):
    """tqdm progress bar (on stderr, hidden when stderr is not a terminal)."""
    return tqdm(iterable, desc=desc, total=total, unit="case", disable=None, leave=False)


@dataclass
class SiteCase:
    case_id: str
    image: str  # path as written in dataset.json
    label: str | None
    split: str | None  # a fixed split, or None: drawn by the seeded split


class SiteWriter:
    """Collects the cases of one site folder and writes its ``dataset.json``.

    ``labels`` maps the site's label ids to (canonical) structure names; id 0 is added as
    ``background``. Cases added without a split are split by the fractions and the seed; cases
    without a label always go to ``test`` (the contract allows unlabelled test entries only).
    """

    def __init__(self, site_dir, *, name: str, modality: str, labels: dict, background_label_ids=(),
                 description: str = "", reference: str | None = None, licence: str | None = None,
                 source=None):
        if modality not in ("CT", "MR"):
            raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
        self.site_dir = Path(site_dir).absolute()
        self.name = name
        self.modality = modality
        self.labels = {"0": "background"}
        self.labels.update({str(int(k)): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))
                            if int(k) != 0})
        self.background_label_ids = (background_label_ids if background_label_ids == "unlisted"
                                     else sorted(int(i) for i in background_label_ids))
        self.description = description
        self.reference = reference
        self.licence = licence
        self.source = str(source) if source is not None else None
        self.cases: dict[str, SiteCase] = {}
        self.site_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.cases)

    # -- files -------------------------------------------------------------------------------
    def path_for(self, kind: str, case_id: str, suffix: str = ".nii.gz") -> Path:
        """Where a file the converter creates goes: ``<site>/images|labels/<case_id><suffix>``."""
        return self.site_dir / kind / f"{case_id}{suffix}"

    def source_file(self, src: Path, kind: str, case_id: str, link: bool) -> str:
        """The ``dataset.json`` path of an existing source file: a reference to the original
        (``link=False``), or a symlink ``<site>/<kind>/<case_id><suffix>`` to it (``link=True``)."""
        src = Path(src).absolute()
        if not link:
            return reference_path(src, self.site_dir)
        suffix = ".nii.gz" if src.name.lower().endswith(".nii.gz") else "".join(src.suffixes[-1:])
        dst = self.path_for(kind, case_id, suffix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            if dst.is_dir() and not dst.is_symlink():
                raise DataError(dst, "exists and is a folder; cannot replace it with a link")
            dst.unlink()
        dst.symlink_to(src.resolve())
        return dst.relative_to(self.site_dir).as_posix()

    def own_file(self, path: Path) -> str:
        return Path(path).absolute().relative_to(self.site_dir).as_posix()

    # -- cases ---------------------------------------------------------------------------------
    def add(self, case_id: str, image: str, label: str | None = None, split: str | None = None) -> None:
        if case_id in self.cases:
            raise DataError(self.site_dir, f"case {case_id!r} would be written twice (two sources with the same name)")
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if label is None and split not in (None, "test"):
            raise ValueError(f"case {case_id}: a {split} case needs a label")
        self.cases[case_id] = SiteCase(case_id, image, label, split)

    def resolve_splits(self, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[SiteCase]]:
        free = [c.case_id for c in self.cases.values() if c.split is None and c.label is not None]
        drawn = assign_splits(free, val_fraction, test_fraction, seed)
        out: dict[str, list[SiteCase]] = {s: [] for s in SPLITS}
        for cid in sorted(self.cases, key=natural_key):
            case = self.cases[cid]
            split = case.split or (drawn[cid] if case.label is not None else "test")
            out[split].append(case)
        return out

    def write(self, *, val_fraction: float, test_fraction: float, seed: int) -> Path:
        if not self.cases:
            raise DataError(self.site_dir, "no cases to write")
        splits = self.resolve_splits(val_fraction, test_fraction, seed)
        for split in SPLITS:
            if not splits[split]:
                log.warning("%s: the '%s' split is empty (%d labelled cases in all); check-data will "
                            "report it", self.site_dir, split, sum(c.label is not None for c in self.cases.values()))
        spec = {
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "licence": self.licence,
            "source": self.source,
            "tensorImageSize": "3D",
            "modality": self.modality,
            "labels": self.labels,
            "background_label_ids": self.background_label_ids,
            "numTraining": len(splits["training"]),
            "numValidation": len(splits["validation"]),
            "numTest": len(splits["test"]),
            "split_seed": seed,
        }
        spec = {k: v for k, v in spec.items() if v is not None}
        for split in SPLITS:
            spec[split] = [{"id": c.case_id, "image": c.image, **({"label": c.label} if c.label is not None else {})}
                           for c in splits[split]]
        path = self.site_dir / "dataset.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(tmp, path)
        log.info("%s: %d training, %d validation, %d test cases", self.site_dir,
                 len(splits["training"]), len(splits["validation"]), len(splits["test"]))
        return path
