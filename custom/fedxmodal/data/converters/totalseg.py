"""TotalSegmentator data sets (CT: Zenodo 10047292, MR: Zenodo 11367004; Wasserthal et al.,
CC-BY-4.0) and TotalSegmentator outputs -> one site folder per modality, ``totalseg-ct`` and/or
``totalseg-mr``.

Expected source layout (``src_dir`` holds subject folders, or is one subject folder)::

    meta.csv                                  optional; ';'-separated, columns image_id and split
                                              (train / val / test) -- the data sets' own split
    <subject>/ct.nii.gz                       the image: ct.nii.gz -> CT, mri.nii.gz or mr.nii.gz -> MR,
                                              image.nii.gz -> the ``modality`` argument
    <subject>/segmentations/<structure>.nii.gz   one binary mask per structure (the data sets), or
    <subject>/seg.nii.gz                      one multilabel mask with TotalSegmentator ids (also
                                              <subject>/<subject>.nii.gz or <subject>.nii.gz beside
                                              the subject folder, as ``TotalSegmentator --ml`` writes it)

What is written, per modality (``modality="CT"`` or ``"MR"`` keeps only that one):

* per-structure masks: the requested ``structures`` (default liver, spleen, kidney_right,
  kidney_left, pancreas, gallbladder, stomach, heart -- those whose mask files exist; an explicit
  list must exist for every subject) are merged into one label map per subject,
  ``<site>/labels/<subject>.nii.gz`` (ids 1..n in the order of ``structures``, written with the
  image's own NIfTI geometry so both load with identical affines); labels ``{"1": "liver", ...}``.
* multilabel masks: the mask is used as it is; ``labels`` lists the ids of the requested
  structures in the TotalSegmentator map ("total" for CT: spleen 1, kidney_right 2,
  kidney_left 3, gallbladder 4, liver 5, stomach 6, pancreas 7, heart 51; "total_mr" for MR: the
  same 1..7, heart 22; ``label_map`` overrides it) and ``"background_label_ids": "unlisted"``
  makes every other id (vertebrae, vessels, muscles, ...) background explicitly.

Images (and multilabel masks) are not copied: ``dataset.json`` points at the originals (relative to
the site folder when both share a tree, else absolute), or ``link=True`` symlinks them as
``<site>/images|labels/<subject>.nii.gz``.

Splits: subjects listed in ``meta.csv`` keep its split; the others are split by the fractions and
the seed. A subject with an image but no label is an error (nothing unlabelled is converted).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from .common import (SiteWriter, check_fractions, label_dtype, list_nifti, log, natural_key, progress,
                     require_source_dir, write_like)

DEFAULT_STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "gallbladder", "stomach", "heart")

# image file name -> modality (None: ask the ``modality`` argument)
IMAGE_NAMES = {
    "ct.nii.gz": "CT", "ct.nii": "CT", "mri.nii.gz": "MR", "mri.nii": "MR", "mr.nii.gz": "MR", "mr.nii": "MR",
    "image.nii.gz": None, "image.nii": None, "img.nii.gz": None, "img.nii": None,
}

# TotalSegmentator v2 label maps (totalsegmentator/map_to_binary.py), the trunk organs and vessels.
_ORGANS_1_7 = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
               "pancreas": 7}
TOTAL_IDS = {
    **_ORGANS_1_7, "adrenal_gland_right": 8, "adrenal_gland_left": 9, "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12, "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14, "esophagus": 15, "trachea": 16, "thyroid_gland": 17, "small_bowel": 18,
    "duodenum": 19, "colon": 20, "urinary_bladder": 21, "prostate": 22, "kidney_cyst_left": 23,
    "kidney_cyst_right": 24, "heart": 51, "aorta": 52, "superior_vena_cava": 62, "inferior_vena_cava": 63,
    "portal_vein_and_splenic_vein": 64,
}
TOTAL_MR_IDS = {
    **_ORGANS_1_7, "adrenal_gland_right": 8, "adrenal_gland_left": 9, "lung_left": 10, "lung_right": 11,
    "esophagus": 12, "small_bowel": 13, "duodenum": 14, "colon": 15, "urinary_bladder": 16, "prostate": 17,
    "heart": 22, "aorta": 23, "inferior_vena_cava": 24, "portal_vein_and_splenic_vein": 25,
}
LABEL_MAPS = {"total": TOTAL_IDS, "total_mr": TOTAL_MR_IDS}

_SPLIT_NAMES = {"train": "training", "training": "training", "val": "validation", "valid": "validation",
                "validation": "validation", "test": "test", "testing": "test"}


@dataclass
class _Subject:
    name: str
    folder: Path
    image: Path
    modality: str
    layout: str  # "structures" | "multilabel"
    label: Path  # the segmentations/ folder or the multilabel file


def _find_image(folder: Path) -> Path | None:
    for name in IMAGE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _find_label(subject_dir: Path, src: Path) -> tuple[str, Path] | None:
    seg_dir = subject_dir / "segmentations"
    if seg_dir.is_dir() and list_nifti(seg_dir):
        return "structures", seg_dir
    candidates = [subject_dir / "seg.nii.gz", subject_dir / "seg.nii", subject_dir / f"{subject_dir.name}.nii.gz",
                  subject_dir / f"{subject_dir.name}.nii"]
    if subject_dir != src:
        candidates += [subject_dir.parent / f"{subject_dir.name}.nii.gz", subject_dir.parent / f"{subject_dir.name}.nii"]
    for c in candidates:
        if c.is_file():
            return "multilabel", c
    return None


def _normalise_modality(modality) -> str | None:
    if modality is None:
        return None
    m = str(modality).upper()
    m = {"MRI": "MR"}.get(m, m)
    if m not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT', 'MR' or None, got {modality!r}")
    return m


def _discover(src: Path, modality: str | None) -> list[_Subject]:
    folders = [src] if _find_image(src) else sorted(
        (d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: natural_key(d.name))
    subjects = []
    for folder in folders:
        image = _find_image(folder)
        if image is None:
            if (folder / "segmentations").is_dir() or (folder / "seg.nii.gz").is_file():
                raise DataError(folder, f"has segmentations but no image ({' / '.join(list(IMAGE_NAMES)[:4])})")
            continue
        found = IMAGE_NAMES[image.name]
        if found is None and modality is None:
            raise DataError(image, "cannot tell CT from MR from the file name: pass modality='CT' or 'MR'")
        if modality is not None and found is not None and found != modality:
            continue  # another modality's subject
        label = _find_label(folder, src)
        if label is None:
            raise DataError(image, "image has no label: expected segmentations/<structure>.nii.gz or seg.nii.gz "
                                   f"in {folder}")
        subjects.append(_Subject(folder.name, folder, image, found or modality, *label))
    if not subjects:
        what = f"{modality} " if modality else ""
        raise DataError(src, f"unknown layout: no {what}subject folder with ct.nii.gz / mri.nii.gz and "
                             "segmentations/ or seg.nii.gz (TotalSegmentator format)")
    return subjects


def _read_meta(src: Path) -> dict[str, str]:
    path = src / "meta.csv"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text else ""
    delimiter = ";" if first.count(";") >= first.count(",") else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        log.warning("%s has no image_id and split columns: ignored", path)
        return {}
    out = {}
    for row in rows:
        image_id, split = (row.get("image_id") or "").strip(), (row.get("split") or "").strip().lower()
        if not image_id:
            continue
        if split not in _SPLIT_NAMES:
            raise DataError(path, f"unknown split {split!r} for {image_id} (expected train, val or test)")
        out[image_id] = _SPLIT_NAMES[split]
    return out


def _same_geometry(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage) -> bool:
    sa, sb = tuple(a.shape), tuple(b.shape)
    same_shape = sa == sb or tuple(s for s in sa if s != 1) == tuple(s for s in sb if s != 1)
    return same_shape and np.allclose(a.affine, b.affine, atol=1e-3, rtol=1e-4)


def _geometry_problem(what: str, img, ref) -> str:
    return (f"{what} shape {tuple(img.shape)} / affine\n{np.round(img.affine, 3)}\ndiffers from the image's "
            f"{tuple(ref.shape)} /\n{np.round(ref.affine, 3)}")


def _merge_structures(subject: _Subject, structures: list[str], out_path: Path) -> None:
    ref = nib.load(str(subject.image))
    merged = np.zeros(ref.shape, dtype=label_dtype(len(structures)))
    overlap = 0
    for label_id, name in enumerate(structures, start=1):
        path = subject.label / f"{name}.nii.gz"
        if not path.is_file():
            path = subject.label / f"{name}.nii"
        if not path.is_file():
            raise DataError(subject.label / f"{name}.nii.gz", f"mask of '{name}' is missing for subject {subject.name}")
        try:
            mask_img = nib.load(str(path))
        except Exception as exc:
            raise DataError(path, f"unreadable mask ({type(exc).__name__}: {exc})") from None
        if not _same_geometry(mask_img, ref):
            raise DataError(path, _geometry_problem("mask", mask_img, ref))
        mask = np.asanyarray(mask_img.dataobj).reshape(ref.shape) > 0
        overlap += int((mask & (merged > 0)).sum())
        merged[mask] = label_id
    if overlap:
        log.warning("%s: %d voxels belong to more than one structure (the later one in %s wins)",
                    subject.folder, overlap, structures)
    write_like(subject.image, merged, out_path)


def _resolve_label_map(label_map, modality: str) -> dict[str, int]:
    if label_map is None:
        return LABEL_MAPS["total" if modality == "CT" else "total_mr"]
    if isinstance(label_map, str):
        if label_map not in LABEL_MAPS:
            raise ValueError(f"label_map must be one of {sorted(LABEL_MAPS)} or a dict, got {label_map!r}")
        return LABEL_MAPS[label_map]
    # {id: name} (as in TotalSegmentator's class_map) or {name: id}
    items = list(dict(label_map).items())
    if items and isinstance(items[0][0], str) and not items[0][0].isdigit():
        return {str(k): int(v) for k, v in items}
    return {str(v): int(k) for k, v in items}


def convert_totalseg(src_dir, out_dir, *, modality=None, structures=None, val_fraction: float = 0.2,
                     test_fraction: float = 0.2, seed: int = 0, link: bool = False,
                     label_map=None) -> dict[str, Path]:
    """Write ``out_dir/totalseg-ct`` and/or ``out_dir/totalseg-mr``; returns ``{site_name: site_dir}``.
    See the module docstring."""
    check_fractions(val_fraction, test_fraction)
    modality = _normalise_modality(modality)
    explicit = structures is not None
    structures = list(DEFAULT_STRUCTURES if structures is None else structures)
    if not structures or len(set(structures)) != len(structures):
        raise ValueError(f"structures must be a non-empty list of distinct names, got {structures!r}")
    src = require_source_dir(src_dir, "TotalSegmentator")
    subjects = _discover(src, modality)
    meta = _read_meta(src)
    out = Path(out_dir).absolute()
    result = {}
    for mod in ("CT", "MR"):
        group = [s for s in subjects if s.modality == mod]
        if not group:
            continue
        layouts = {s.layout for s in group}
        if len(layouts) > 1:
            raise DataError(src, f"the {mod} subjects mix per-structure masks (segmentations/) and multilabel masks "
                                 "(seg.nii.gz): convert them into separate sites")
        layout = layouts.pop()
        site = f"totalseg-{mod.lower()}"
        if layout == "structures":
            available = [s for s in structures
                         if any((g.label / f"{s}.nii.gz").is_file() or (g.label / f"{s}.nii").is_file() for g in group)]
            missing = [s for s in structures if s not in available]
            if not available or (explicit and missing):
                raise DataError(group[0].label, f"no mask file for {missing} (segmentations/<structure>.nii.gz) "
                                                "in any subject")
            if missing:
                log.warning("%s: no %s masks, those structures are left out", src, missing)
            labels, background = {i: s for i, s in enumerate(available, start=1)}, []
        else:
            ids = _resolve_label_map(label_map, mod)
            unknown = [s for s in structures if s not in ids]
            if unknown:
                raise ValueError(f"structures {unknown} are not in the TotalSegmentator "
                                 f"{'total' if mod == 'CT' else 'total_mr'} label map used for {mod}; "
                                 f"known: {sorted(ids)}")
            labels, background = {ids[s]: s for s in structures}, "unlisted"
        writer = SiteWriter(
            out / site, name=site, modality=mod, labels=labels, background_label_ids=background,
            description=f"TotalSegmentator {mod} subjects ({', '.join(labels.values())}), converted by fedxmodal",
            reference="https://github.com/wasserth/TotalSegmentator (Wasserthal et al., Radiology: AI 2023; "
                      "Akinci D'Antonoli et al. 2024 for MRI)",
            licence="CC-BY-4.0", source=src)
        not_in_meta = 0
        for subject in progress(group, desc=f"TotalSegmentator {mod}"):
            case_id = subject.name
            image_ref = writer.source_file(subject.image, "images", case_id, link)
            if layout == "structures":
                label_path = writer.path_for("labels", case_id)
                _merge_structures(subject, list(labels.values()), label_path)
                label_ref = writer.own_file(label_path)
            else:
                try:
                    seg, img = nib.load(str(subject.label)), nib.load(str(subject.image))
                except Exception as exc:
                    raise DataError(subject.label, f"unreadable ({type(exc).__name__}: {exc})") from None
                if not _same_geometry(seg, img):
                    raise DataError(subject.label, _geometry_problem("multilabel mask", seg, img))
                label_ref = writer.source_file(subject.label, "labels", case_id, link)
            split = meta.get(subject.name)
            if meta and split is None:
                not_in_meta += 1
            writer.add(case_id, image_ref, label_ref, split)
        if not_in_meta:
            log.warning("%s: %d subjects are not in meta.csv; they are split by the fractions", src, not_in_meta)
        writer.write(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        result[site] = writer.site_dir
    return result
