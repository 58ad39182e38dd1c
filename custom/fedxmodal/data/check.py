"""``check-data``: validate a whole site before any training and report every problem at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .contract import SPLITS, SiteDataset
from .errors import DataError
from .io import load_volume
from .preprocess import _check_same_grid, crop_slab


@dataclass
class SiteReport:
    site_dir: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_cases: dict[str, int] = field(default_factory=dict)
    structures_found: dict[str, int] = field(default_factory=dict)  # structure -> n volumes containing it
    unlabelled_training: list[str] = field(default_factory=list)  # case ids listed without a label

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"site {self.site_dir}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")]
        if self.n_cases:
            lines.append("  cases: " + ", ".join(f"{k} {v}" for k, v in self.n_cases.items()))
        if self.unlabelled_training:
            lines.append(f"  unlabelled training cases: {len(self.unlabelled_training)} of "
                         f"{self.n_cases.get('training', 0)} (self-supervised methods such as fedcowpro "
                         "train on them; supervised training refuses this site)")
        if self.structures_found:
            lines.append("  structures (volumes containing them): "
                         + ", ".join(f"{k} {v}" for k, v in self.structures_found.items()))
        lines += [f"  ERROR {p}" for p in self.problems]
        lines += [f"  warning {w}" for w in self.warnings]
        return "\n".join(lines)


def check_site(site_dir, structures=None, progress: bool = False) -> SiteReport:
    """Load every listed file of a site and collect every problem (never stops at the first).

    ``structures``: the job's structures; ``None`` checks against all structures the site names.
    """
    report = SiteReport(Path(site_dir))
    try:
        site = SiteDataset.load(site_dir)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    names = tuple(structures) if structures else tuple(n for i, n in sorted(site.labels.items()) if i != 0)
    mapper = site.label_mapper(names)
    if mapper.missing_structures:
        report.warnings.append(f"{site.json_path}: no label id for {list(mapper.missing_structures)} "
                               "(this site cannot teach or score those structures)")
    seen: list = []
    counts = {s: 0 for s in names}
    cases = [c for split in SPLITS for c in site.split(split)]
    report.unlabelled_training = [c.case_id for c in site.unlabelled("training")]
    for split in SPLITS:
        report.n_cases[split] = len(site.split(split))
        if not site.split(split):
            report.problems.append(f"{site.json_path}: the '{split}' split is empty")
    for case in tqdm(cases, desc=f"checking {site.name}", unit="vol", disable=not progress):
        for other in seen:
            if case.overlaps(other):
                report.problems.append(f"{case.image}: listed in '{other.split}' and '{case.split}' with "
                                       "overlapping slices (a voxel must belong to one split)")
        seen.append(case)
        try:
            image = crop_slab(load_volume(case.image, role="image"), case)
        except DataError as exc:
            report.problems.append(str(exc))
            image = None
        if case.label is None:
            continue
        try:
            label = crop_slab(load_volume(case.label, role="label"), case)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        if image is not None:
            try:
                _check_same_grid(case, image, label)
            except DataError as exc:
                report.problems.append(str(exc))
        try:
            classes = mapper(label[0].numpy(), where=case.label)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        present = np.unique(classes)
        for c in present[present > 0]:
            counts[names[int(c) - 1]] += 1
        if case.split == "training" and present.max(initial=0) == 0:
            report.warnings.append(f"{case.label}: no structure of {list(names)} in this training label")
    report.structures_found = counts
    return report
