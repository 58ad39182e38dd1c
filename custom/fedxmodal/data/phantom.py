"""Procedural CT/MR phantom federation (``fedxmodal demo-data``).

:func:`write_phantom_federation` writes ``ct-site/`` and ``mr-site/`` (by default; ``sites`` also
offers ``mr-t1-site`` and ``cect-site``, see :mod:`.phantom_domains`), site folders per
``docs/data-contract.md`` with *different* random subjects, so that the whole pipeline can be run
without downloading data.  Every subject is an independent random anatomy draw
(``numpy.random.default_rng([seed, site_code, task_code, case_index])``), rasterised on the site's
own grid and rendered as CT (Hounsfield units) or MR (non-monotonic tissue mapping, bias field,
Rician noise).  World coordinates are nibabel's RAS+ (+x = patient Right, +y = Anterior,
+z = Superior); CT arrays are stored RAS, MR arrays LPS (x and y flipped, matching affine), so
loaders must reorient while the anatomy stays correct in world space.

Tasks: ``"abdomen"`` (liver, kidneys, spleen, pancreas, gallbladder; the MR sites, mr-site and
mr-t1-site, number their labels in TotalSegmentator order, the CT sites ct-site and cect-site not) and ``"heart"`` (whole heart, binary).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .phantom_domains import (DEFAULT_SITES, FACTORY_SITES, LATE_SITES, RENDERERS, SITES, check_sites,  # noqa: F401
                              stored_affine, to_stored)
from .phantom_anatomy import _ID, ABDOMEN_STRUCTURES, make_abdomen_subject, make_heart_subject  # noqa: F401
from .phantom_render import render_ct, render_mr

SITE_LABELS = {
    ("abdomen", "CT"): {"0": "background", "1": "liver", "2": "kidney_right", "3": "kidney_left",
                        "4": "spleen", "5": "pancreas", "6": "gallbladder"},
    ("abdomen", "MR"): {"0": "background", "1": "spleen", "2": "kidney_right", "3": "kidney_left",
                        "4": "gallbladder", "5": "liver", "6": "pancreas"},
    ("heart", "CT"): {"0": "background", "1": "heart"},
    ("heart", "MR"): {"0": "background", "1": "heart"},
}
TASKS = {"abdomen": 1, "heart": 2}


@dataclass
class PhantomCase:
    image: np.ndarray  # int16, stored orientation
    label: np.ndarray  # uint8, site numbering, stored orientation
    tissue: np.ndarray  # uint8 tissue ids (phantom_render.TISSUES), stored orientation
    affine: np.ndarray
    labels: dict


# ------------------------------------------------------------------------------------ API
def generate_case(task: str, modality: str | None, seed: int, index: int, site: str | None = None) -> PhantomCase:
    """Subject ``index`` of a ``task`` federation's site ``site`` (default: the first site of ``modality``,
    ct-site or mr-site), in the site's stored geometry."""
    if task not in TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose from {sorted(TASKS)}")
    site = SITES[check_sites(site or next(k for k, v in SITES.items() if v["modality"] == modality))[0]]
    if modality not in (None, site["modality"]):
        raise ValueError(f"modality {modality!r} does not match the site's {site['modality']}")
    modality = site["modality"]
    rng = np.random.default_rng([int(seed), site["code"], TASKS[task], int(index)])
    grid = site["grid"]
    cv = (make_abdomen_subject if task == "abdomen" else make_heart_subject)(rng, grid)
    if site["domain"] == "ct":
        image = render_ct(cv.tissue, rng, contrast=rng.uniform(0, 1), coarse=cv.coarse)
    elif site["domain"] == "mr":
        image = render_mr(cv.tissue, rng, "t2" if task == "abdomen" else "ssfp", coarse=cv.coarse)
    else:
        image = RENDERERS[site["domain"]](cv.tissue, rng, coarse=cv.coarse)
    labels = SITE_LABELS[(task, modality)]
    lut = np.zeros(256, np.uint8)
    if task == "abdomen":
        for k, name in labels.items():
            if name != "background":
                lut[_ID[name]] = int(k)
    else:
        lut[1] = 1
    image, label, tissue = (to_stored(v, site["orientation"]) for v in (image, lut[cv.label], cv.tissue))
    return PhantomCase(image, label, tissue, stored_affine(grid, site["orientation"]), labels)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: pathlib.Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_phantom_federation(out_dir, seed: int = 0, task: str = "abdomen", n_train: int = 6, n_val: int = 2,
                             n_test: int = 3, progress: bool = True, *,
                             sites=DEFAULT_SITES) -> dict[str, pathlib.Path]:
    """Writes out_dir/<site>/ for each of ``sites`` (default ct-site and mr-site; any of :data:`SITES`),
    each a site folder per docs/data-contract.md; returns {site: path}.  Training and validation cases
    live in imagesTr/labelsTr, test cases in imagesTs/labelsTs; deterministic for a given ``seed`` (>= 0)."""
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose from {sorted(TASKS)}")
    sites = check_sites(sites)
    if min(n_train, n_val, n_test) < 0 or int(seed) < 0:
        raise ValueError("seed and case counts must be >= 0")
    out = pathlib.Path(out_dir)
    splits = (("training", n_train, "Tr"), ("validation", n_val, "Tr"), ("test", n_test, "Ts"))
    result = {}
    with tqdm(total=len(sites) * (n_train + n_val + n_test), desc=f"phantom {task}", unit="case",
              disable=not progress) as bar:
        for site_name, site in ((s, SITES[s]) for s in sites):
            site_dir = out / site_name
            for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
                (site_dir / sub).mkdir(parents=True, exist_ok=True)
            entries: dict[str, list] = {}
            index = 0
            for split, n, suffix in splits:
                entries[split] = []
                for _ in range(n):
                    case = generate_case(task, site["modality"], seed, index, site=site_name)
                    fname = f"{site['prefix']}_{index:03d}.nii.gz"
                    entry = {"image": f"images{suffix}/{fname}", "label": f"labels{suffix}/{fname}"}
                    _save_nifti(case.image, case.affine, site_dir / entry["image"])
                    _save_nifti(case.label, case.affine, site_dir / entry["label"])
                    entries[split].append(entry)
                    index += 1
                    bar.update()
            sx, sy, sz = site["grid"].spacing
            dataset = {
                "name": site_name,
                "description": (f"Procedural {task} phantom ({site['modality']}, seed {seed}) generated by "
                                f"fedxmodal.data.phantom: synthetic subjects, not patient data; "
                                f"{site['grid'].shape} voxels of {sx} x {sy} x {sz} mm, stored "
                                f"{site['orientation']}."),
                "modality": site["modality"],
                "labels": SITE_LABELS[(task, site["modality"])],
                "background_label_ids": [],
                **entries,
            }
            (site_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
            result[site_name] = site_dir
    return result
