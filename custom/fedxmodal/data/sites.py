"""Building site folders over files that live elsewhere (nothing is copied)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .preprocess import axial_axis

TOTALSEG_ABDOMEN_LABELS = {"0": "background", "1": "spleen", "2": "kidney_right", "3": "kidney_left",
                           "4": "gallbladder", "5": "liver", "6": "stomach", "7": "pancreas"}


def write_slab_site(image, label, out_dir, modality: str, labels: dict, name: str | None = None,
                    cuts=(0.3, 0.5, 0.7), background_label_ids="unlisted") -> Path:
    """A site over ONE volume, split into disjoint axial slabs. The slices holding any structure
    of ``labels`` are cut at the fractions ``cuts`` = (a, b, c): validation takes [a, b), test
    [b, c) of that range, training everything else (both outer parts, organ-free slices too).
    The dataset.json points at the original files by absolute path."""
    image, label = Path(image).resolve(), Path(label).resolve()
    lab = nib.load(str(label))
    axis = axial_axis(lab.affine)
    ids = [int(k) for k in labels if int(k) != 0]
    fg = np.nonzero(np.moveaxis(np.isin(np.asarray(lab.dataobj), ids), axis, -1).any((0, 1)))[0]
    n = lab.shape[axis]
    if fg.size < 5:
        raise ValueError(f"{label}: only {fg.size} slices hold a structure; too few to split")
    z0, span = int(fg[0]), int(fg[-1]) + 1 - int(fg[0])
    a, b, c = (z0 + round(span * f) for f in cuts)
    if not (a < b < c):
        raise ValueError(f"{label}: cannot cut {span} labelled slices at {cuts}")
    slabs = {"training": [[0, a], [c, n]], "validation": [[a, b]], "test": [[b, c]]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"name": name or out.name, "modality": modality, "labels": labels,
            "background_label_ids": background_label_ids,
            "description": f"one volume ({n} axial slices, structures in {z0}..{int(fg[-1])}) split into "
                           f"disjoint axial slabs {slabs}"}
    for split, ranges in slabs.items():
        spec[split] = [{"image": str(image), "label": str(label), "slices": r} for r in ranges if r[0] < r[1]]
    (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    return out
