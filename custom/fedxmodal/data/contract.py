"""The site data contract (docs/data-contract.md): a site folder's ``dataset.json``, its cases,
and the mapping from the site's own label ids to a job's structures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

SPLITS = ("training", "validation", "test")
MODALITIES = ("CT", "MR")
# Canonical structure names shared by every site; sites may use others too (converters do).
CANONICAL_STRUCTURES = (
    "liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder", "stomach", "heart",
)
ABDOMEN_STRUCTURES = ("liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder")
HEART_STRUCTURES = ("heart",)
TASK_STRUCTURES = {"abdomen": ABDOMEN_STRUCTURES, "heart": HEART_STRUCTURES}
_MODALITY_ALIASES = {"CT": "CT", "MR": "MR", "MRI": "MR", "T1": "MR", "T2": "MR"}


@dataclass(frozen=True)
class Case:
    """One image (and its label, if any) of a site, with absolute paths. Training and test cases
    may have no label; validation cases always have one."""

    image: Path
    label: Path | None
    split: str
    slices: tuple[int, int] | None = None  # axial slab [start, stop) in the file's own index order
    id: str | None = None  # optional explicit case id (e.g. TotalSegmentator's every image is ct.nii.gz)

    @property
    def case_id(self) -> str:
        name = self.id or self.image.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return name if self.slices is None else f"{name}[{self.slices[0]}:{self.slices[1]}]"

    def overlaps(self, other: "Case") -> bool:
        """Same image and intersecting slabs (a whole volume intersects everything)."""
        if self.image != other.image:
            return False
        if self.slices is None or other.slices is None:
            return True
        return self.slices[0] < other.slices[1] and other.slices[0] < self.slices[1]


@dataclass
class SiteDataset:
    """A parsed and schema-checked ``dataset.json``. File contents are checked by ``check_site``."""

    root: Path
    name: str
    modality: str
    labels: dict[int, str]
    background_label_ids: frozenset[int] | str = field(default_factory=frozenset)
    cases: dict[str, list[Case]] = field(default_factory=dict)

    @property
    def json_path(self) -> Path:
        return self.root / "dataset.json"

    @classmethod
    def load(cls, site_dir) -> "SiteDataset":
        """Parse ``site_dir/dataset.json``; raises ``DataError`` naming the file and every schema
        problem found."""
        root = Path(site_dir).resolve()
        path = root / "dataset.json"
        if not root.is_dir():
            raise DataError(root, "site folder does not exist")
        if not path.is_file():
            raise DataError(path, "missing: a site folder needs a dataset.json (see docs/data-contract.md)")
        try:
            spec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(path, f"not valid JSON ({exc})") from None
        problems: list[str] = []
        modality = _parse_modality(spec.get("modality"), problems)
        labels = _parse_labels(spec.get("labels"), problems)
        background = _parse_background(spec.get("background_label_ids", []), labels, problems)
        cases: dict[str, list[Case]] = {}
        for split in SPLITS:
            entries = spec.get(split, [])
            if not isinstance(entries, list):
                problems.append(f"'{split}' must be a list of {{'image': ..., 'label': ...}}")
                continue
            cases[split] = []
            for i, entry in enumerate(entries):
                if isinstance(entry, str):  # MSD test lists may be bare image paths
                    entry = {"image": entry}
                if not isinstance(entry, dict) or "image" not in entry:
                    problems.append(f"'{split}'[{i}] needs an 'image' path")
                    continue
                label = entry.get("label")
                # Training cases may be unlabelled (self-supervised methods); validation is scored.
                if label is None and split == "validation":
                    problems.append(f"'{split}'[{i}] ({entry['image']}) needs a 'label' path")
                    continue
                if label is not None and (not isinstance(label, str) or not label):
                    problems.append(f"'{split}'[{i}] ({entry['image']}) 'label' must be a path or absent")
                    continue
                slab = entry.get("slices")
                if slab is not None and not (isinstance(slab, list) and len(slab) == 2
                                             and all(isinstance(v, int) for v in slab) and 0 <= slab[0] < slab[1]):
                    problems.append(f"'{split}'[{i}] 'slices' must be [start, stop) with 0 <= start < stop")
                    continue
                cases[split].append(
                    Case(image=_resolve(root, entry["image"]), label=_resolve(root, label) if label else None,
                         split=split, slices=tuple(slab) if slab else None,
                         id=str(entry["id"]) if entry.get("id") is not None else None)
                )
        if problems:
            raise DataError(path, "; ".join(problems))
        return cls(root=root, name=str(spec.get("name") or root.name), modality=modality, labels=labels,
                   background_label_ids=background, cases=cases)

    def split(self, split: str) -> list[Case]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.cases.get(split, [])

    def unlabelled(self, split: str = "training") -> list[Case]:
        """The cases of ``split`` listed without a label (allowed in 'training' and 'test')."""
        return [c for c in self.split(split) if c.label is None]

    def label_mapper(self, structures) -> "LabelMapper":
        return LabelMapper.for_site(self, structures)


def _resolve(root: Path, rel) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p)


def _parse_modality(value, problems) -> str:
    if isinstance(value, dict):  # MSD form {"0": "CT"}
        value = next(iter(value.values()), None) if len(value) == 1 else None
    if not isinstance(value, str) or value.upper() not in _MODALITY_ALIASES:
        problems.append(f"'modality' must be one of {MODALITIES} (got {value!r})")
        return ""
    return _MODALITY_ALIASES[value.upper()]


def _parse_labels(value, problems) -> dict[int, str]:
    if not isinstance(value, dict) or not value:
        problems.append("'labels' must map label ids to structure names, e.g. {\"0\": \"background\", \"1\": \"liver\"}")
        return {}
    labels: dict[int, str] = {}
    for key, name in value.items():
        try:
            label_id = int(key)
        except (TypeError, ValueError):
            problems.append(f"label id {key!r} in 'labels' is not an integer")
            continue
        if label_id < 0 or not isinstance(name, str) or not name:
            problems.append(f"label {key!r}: {name!r} must be a non-negative id with a structure name")
            continue
        labels[label_id] = name
    names = [n for i, n in labels.items() if i != 0]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"structure names used by more than one label id: {dupes}")
    return labels


def _parse_background(value, labels, problems):
    if value == "unlisted":
        return "unlisted"
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        problems.append("'background_label_ids' must be a list of non-negative integers or the string \"unlisted\"")
        return frozenset()
    clash = sorted(set(value) & {i for i in labels if i != 0})
    if clash:
        problems.append(f"ids {clash} are both in 'labels' and in 'background_label_ids'")
    return frozenset(value)


@dataclass
class LabelMapper:
    """Maps a site's label ids to a job's class indices: 0 = background, c = ``structures[c-1]``.

    Ids of structures the job does not segment and ids in ``background_label_ids`` become 0; any
    other id is an error naming the file, so a mislabelled volume never trains silently.
    """

    site_to_class: dict[int, int]
    allow_unlisted: bool
    structures: tuple[str, ...]
    missing_structures: tuple[str, ...] = ()  # job structures this site has no label for

    @classmethod
    def for_site(cls, site: SiteDataset, structures) -> "LabelMapper":
        structures = tuple(structures)
        unknown = [s for s in structures if s not in site.labels.values()]
        mapping = {0: 0}
        for label_id, name in site.labels.items():
            mapping[label_id] = structures.index(name) + 1 if name in structures else 0
        if site.background_label_ids != "unlisted":
            for label_id in site.background_label_ids:
                mapping[label_id] = 0
        return cls(site_to_class=mapping, allow_unlisted=site.background_label_ids == "unlisted",
                   structures=structures, missing_structures=tuple(unknown))

    def __call__(self, label: np.ndarray, where="label") -> np.ndarray:
        """(X, Y, Z) site ids -> (X, Y, Z) uint8 class indices."""
        label = np.asarray(label)
        if label.dtype.kind == "f":
            if not np.isfinite(label).all():
                raise DataError(where, "label volume contains NaN/inf values")
            rounded = np.rint(label)
            if not np.array_equal(rounded, label):
                raise DataError(where, "label volume has non-integer values (is it an image, not a mask?)")
            label = rounded
        label = label.astype(np.int64)
        ids = np.unique(label)
        if ids.size and ids[0] < 0:
            raise DataError(where, f"negative label ids {ids[ids < 0].tolist()}")
        stray = [int(i) for i in ids if int(i) not in self.site_to_class]
        if stray and not self.allow_unlisted:
            raise DataError(
                where,
                f"label ids {stray} are neither mapped in dataset.json 'labels' nor declared in "
                "'background_label_ids'",
            )
        lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint8)
        for site_id, cls_idx in self.site_to_class.items():
            if site_id < lut.size:
                lut[site_id] = cls_idx
        return lut[label]
