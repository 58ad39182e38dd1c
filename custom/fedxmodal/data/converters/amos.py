"""AMOS22 (https://amos22.grand-challenge.org, Zenodo 7262581) -> two site folders, ``amos-ct``
and ``amos-mr``.

Expected source layout (the extracted ``amos22.zip``; ``src_dir`` may also be its parent)::

    amos22/
        dataset.json                  # MSD style; only its "labels" are read
        imagesTr/amos_0001.nii.gz     labelsTr/amos_0001.nii.gz
        imagesVa/amos_0008.nii.gz     labelsVa/amos_0008.nii.gz   (labelsVa: post-challenge release)
        imagesTs/amos_0002.nii.gz     (no labels)

Modality: AMOS numbers its cases so that ``amos_0001`` .. ``amos_0500`` are CT and ``amos_0501``
and above (up to 0600) are MR (500 CT + 100 MR scans in all; nnU-Net's AMOS conversion
scripts, Dataset218/219, use the same "id <= 500 is CT" rule; the NIfTI headers do not say it). The source's
``dataset.json`` declares ``"modality": {"0": "CT"}`` for everything, so it is not used for this.

Labels: read from the source ``dataset.json`` (15 organs; AMOS spells "arota", "postcava",
"gall bladder", ...) and mapped to canonical names (``aorta``, ``inferior_vena_cava``,
``gallbladder``, ...); the AMOS ids are kept, so the label files are used as they are. Without a
``dataset.json`` (or without its "labels") the standard AMOS22 table is used.

What is written: ``out_dir/amos-ct/dataset.json`` and ``out_dir/amos-mr/dataset.json``. No image is
copied: by default the entries point at the original files (relative to the site folder when
the source and the output share a tree, else absolute); ``link=True`` creates symlinks
``<site>/images/<case>.nii.gz`` and ``<site>/labels/<case>.nii.gz`` instead.

Splits: every labelled case (imagesTr + imagesVa with labelsVa) of a modality is pooled and
split into training / validation / test by ``val_fraction`` / ``test_fraction`` with ``seed``
(AMOS's own Tr/Va division is a release artefact, not a protocol). ``official_validation=True``
keeps the labelled imagesVa cases as the validation split instead and splits imagesTr into
training / test (``test_fraction`` of imagesTr).
Unlabelled cases (imagesTs, and imagesVa when labelsVa is absent) are skipped unless
``include_unlabelled=True``, which lists them in ``test`` without a label (they can then be
segmented but not scored).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError
from .common import SiteWriter, check_fractions, list_nifti, log, progress, require_source_dir, strip_nifti_suffix

AMOS_LAST_CT_ID = 500  # amos_0001..amos_0500: CT; amos_0501..: MR

AMOS_LABELS = {
    0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gall bladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "arota", 9: "postcava", 10: "pancreas", 11: "right adrenal gland",
    12: "left adrenal gland", 13: "duodenum", 14: "bladder", 15: "prostate/uterus",
}

# AMOS spelling (normalised: lower case, separators -> one space) -> canonical name
_CANONICAL = {
    "spleen": "spleen",
    "right kidney": "kidney_right", "kidney right": "kidney_right",
    "left kidney": "kidney_left", "kidney left": "kidney_left",
    "gall bladder": "gallbladder", "gallbladder": "gallbladder",
    "esophagus": "esophagus", "oesophagus": "esophagus",
    "liver": "liver",
    "stomach": "stomach",
    "arota": "aorta", "aorta": "aorta",
    "postcava": "inferior_vena_cava", "inferior vena cava": "inferior_vena_cava", "ivc": "inferior_vena_cava",
    "pancreas": "pancreas",
    "right adrenal gland": "adrenal_gland_right", "adrenal gland right": "adrenal_gland_right",
    "left adrenal gland": "adrenal_gland_left", "adrenal gland left": "adrenal_gland_left",
    "duodenum": "duodenum",
    "bladder": "urinary_bladder", "urinary bladder": "urinary_bladder",
    "prostate uterus": "prostate_uterus", "prostate or uterus": "prostate_uterus",
}

_CASE_RE = re.compile(r"^amos_(\d+)$", re.IGNORECASE)


def canonical_amos_name(name: str) -> str:
    key = re.sub(r"[\s_\-/]+", " ", str(name).strip().lower()).strip()
    if key in _CANONICAL:
        return _CANONICAL[key]
    fallback = key.replace(" ", "_")
    log.warning("AMOS label %r has no canonical name; using %r", name, fallback)
    return fallback


def _read_labels(src: Path) -> dict[int, str]:
    path = src / "dataset.json"
    if not path.is_file():
        log.warning("%s not found: using the standard AMOS22 label table", path)
        return dict(AMOS_LABELS)
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    raw = spec.get("labels") if isinstance(spec, dict) else None
    if not isinstance(raw, dict) or not raw:
        log.warning("%s has no 'labels': using the standard AMOS22 label table", path)
        return dict(AMOS_LABELS)
    labels: dict[int, str] = {}
    for key, value in raw.items():
        # MSD style {"1": "spleen"} or nnU-Net v2 style {"spleen": 1}
        ident, name = (value, key) if isinstance(value, int) and not str(key).isdigit() else (key, value)
        try:
            labels[int(ident)] = str(name)
        except (TypeError, ValueError):
            raise DataError(path, f"'labels' entry {key!r}: {value!r} is not an id -> name pair") from None
    return labels


def amos_modality(image: Path) -> str:
    m = _CASE_RE.match(strip_nifti_suffix(image.name))
    if not m:
        raise DataError(image, "cannot tell CT from MR: AMOS case files are named amos_NNNN.nii.gz "
                               f"(ids up to {AMOS_LAST_CT_ID} are CT, above are MR)")
    return "CT" if int(m.group(1)) <= AMOS_LAST_CT_ID else "MR"


def _find_root(src: Path) -> Path:
    for cand in (src, src / "amos22", src / "AMOS22"):
        if (cand / "imagesTr").is_dir() or (cand / "imagesVa").is_dir():
            return cand
    raise DataError(src, "unknown layout: expected an AMOS22 folder with imagesTr/ + labelsTr/ "
                         "(and optionally imagesVa/ + labelsVa/, imagesTs/, dataset.json)")


def _collect(root: Path) -> list[tuple[Path, Path | None, str]]:
    """(image, label or None, source part 'Tr'|'Va'|'Ts') for every image of the release."""
    out = []
    for part in ("Tr", "Va", "Ts"):
        images_dir, labels_dir = root / f"images{part}", root / f"labels{part}"
        if not images_dir.is_dir():
            continue
        if part == "Va" and not labels_dir.is_dir():
            log.warning("%s is missing: the imagesVa cases are unlabelled here", labels_dir)
        for image in list_nifti(images_dir):
            label = labels_dir / image.name
            if label.is_file():
                out.append((image, label, part))
            elif part == "Tr" or (part == "Va" and labels_dir.is_dir()):
                raise DataError(image, f"image has no label (expected {label})")
            else:
                out.append((image, None, part))
    return out


def convert_amos(src_dir, out_dir, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 link: bool = False, include_unlabelled: bool = False,
                 official_validation: bool = False) -> dict[str, Path]:
    """Write ``out_dir/amos-ct`` and ``out_dir/amos-mr`` from an AMOS22 release; returns
    ``{site_name: site_dir}`` for the sites that got cases. See the module docstring."""
    check_fractions(val_fraction, test_fraction)
    src = require_source_dir(src_dir, "AMOS22")
    root = _find_root(src)
    labels = {i: canonical_amos_name(n) for i, n in _read_labels(root).items() if i != 0}
    cases = _collect(root)
    if not any(label is not None for _, label, _ in cases):
        raise DataError(root, "no labelled case found (imagesTr/ + labelsTr/ are empty)")
    out = Path(out_dir).absolute()
    writers: dict[str, SiteWriter] = {}
    for image, label, part in progress(cases, desc="AMOS22"):
        modality = amos_modality(image)
        if label is None and not include_unlabelled:
            continue
        site = f"amos-{modality.lower()}"
        if site not in writers:
            writers[site] = SiteWriter(
                out / site, name=site, modality=modality, labels=labels,
                description=f"AMOS22 {modality} cases (abdominal multi-organ, 15 structures), converted by fedxmodal",
                reference="https://amos22.grand-challenge.org/ (Ji et al., NeurIPS 2022 Datasets and Benchmarks)",
                licence="CC-BY-4.0", source=root)
        writer = writers[site]
        case_id = strip_nifti_suffix(image.name)
        split = None
        if label is None:
            split = "test"
        elif official_validation:
            split = "validation" if part == "Va" else None
        writer.add(case_id, writer.source_file(image, "images", case_id, link),
                   writer.source_file(label, "labels", case_id, link) if label is not None else None, split)
    result = {}
    for site, writer in sorted(writers.items()):
        # official_validation: imagesVa is the validation split and test_fraction applies to
        # imagesTr; a modality without labelled imagesVa cases is split as usual.
        has_official_val = any(c.split == "validation" for c in writer.cases.values())
        writer.write(val_fraction=0.0 if has_official_val else val_fraction, test_fraction=test_fraction, seed=seed)
        result[site] = writer.site_dir
    return result
