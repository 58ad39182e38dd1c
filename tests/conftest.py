"""Shared fixtures: tiny site folders built in tmp dirs, and the real TotalSegmentator pair."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg-ct-mr"


def load_experiment(name: str):
    """experiments/<name>.py (a script, not a package module) imported as a module."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_site(root: Path, cases: dict[str, list[tuple[np.ndarray, np.ndarray]]], modality="CT",
               labels=None, affine=None, **extra) -> Path:
    """Write a site folder from in-memory (image, label) arrays per split."""
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 4.0, 1.0]) if affine is None else affine
    spec = {"name": root.name, "modality": modality,
            "labels": labels or {"0": "background", "1": "liver", "2": "spleen"},
            "background_label_ids": [], **extra}
    for split, items in cases.items():
        spec[split] = []
        for i, (img, lab) in enumerate(items):
            ip, lp = f"images/{split}_{i}.nii.gz", f"labels/{split}_{i}.nii.gz"
            (root / "images").mkdir(exist_ok=True)
            (root / "labels").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(img, affine), str(root / ip))
            nib.save(nib.Nifti1Image(lab, affine), str(root / lp))
            spec[split].append({"image": ip, "label": lp})
    (root / "dataset.json").write_text(json.dumps(spec, indent=1))
    return root


def blob_case(seed=0, shape=(40, 40, 6)):
    """A small CT-like volume with a 'liver' (1) and 'spleen' (2) box."""
    rng = np.random.default_rng(seed)
    img = rng.normal(-800, 10, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[5:20, 8:25, 1:5] = 1
    lab[25:35, 10:20, 2:5] = 2
    img[lab == 1] = 60
    img[lab == 2] = 45
    img[5:35, 5:35][lab[5:35, 5:35] == 0] = -100
    return img, lab


@pytest.fixture
def good_site(tmp_path):
    return write_site(tmp_path / "site", {"training": [blob_case(0), blob_case(1)],
                                          "validation": [blob_case(2)], "test": [blob_case(3)]})


@pytest.fixture(scope="session")
def totalseg_sites(tmp_path_factory):
    """Site folders that POINT AT the real CT and MR pair in ../shared (never copied), each volume
    split into disjoint axial slabs for training / validation / test."""
    from fedxmodal.data.sites import TOTALSEG_ABDOMEN_LABELS, write_slab_site

    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the real data must sit beside the project as ../shared")
    root = tmp_path_factory.mktemp("totalseg")
    return {mod: write_slab_site(SHARED_DATA / sub / f"{sub}.nii.gz", SHARED_DATA / sub / "seg.nii.gz",
                                 root / f"ts-{sub}", mod, TOTALSEG_ABDOMEN_LABELS)
            for mod, sub in (("CT", "ct"), ("MR", "mr"))}


@pytest.fixture
def one_torch_thread():
    """Tests of the generative and adaptation trainers run with one torch thread (as a site does):
    small convolutions are slower with two on these 2-core machines."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
