"""The phantom's extra imaging domains (fedxmodal.data.phantom_domains): mr-t1-site (T1-like MR) and
cect-site (portal-venous CT), the ``sites`` choice of write_phantom_federation and the CLI options
(demo-data --sites/--factory/--preview, totalseg-pair --with-phantom-sites)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedxmodal.cli import main
from fedxmodal.data import phantom_domains
from fedxmodal.data.check import check_site
from fedxmodal.data.phantom import (FACTORY_SITES, LATE_SITES, SITE_LABELS, SITES, generate_case,
                                    write_phantom_federation)
from fedxmodal.data.phantom_render import TISSUES, tissue_property

SEED = 3
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder")
ALL = FACTORY_SITES + LATE_SITES
# sha256[:16] of training case 0 (image + label arrays and affine) of write_phantom_federation(seed=3,
# n_train=1, n_val=0, n_test=0), computed on commit bd8407a, before the extra domains existed
BEFORE = {"abdomen/ct-site": "8deddf1ef841a9da", "abdomen/mr-site": "a7605666d5dc2ead",
          "heart/ct-site": "d0767884c3ddf346", "heart/mr-site": "00463d25140a8f25"}


@functools.lru_cache(maxsize=None)
def case(site, index=0, task="abdomen"):
    return generate_case(task, None, SEED, index, site=site)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom_four")
    return write_phantom_federation(out, seed=SEED, n_train=1, n_val=1, n_test=1, progress=False, sites=ALL)


def _entries(site_dir):
    ds = json.loads((site_dir / "dataset.json").read_text())
    return ds, [e for split in ("training", "validation", "test") for e in ds[split]]


def _hash(site_dir, entry) -> str:
    h = hashlib.sha256()
    for key in ("image", "label"):
        img = nib.load(site_dir / entry[key])
        a = np.asarray(img.dataobj)
        h.update(a.dtype.str.encode())
        h.update(a.tobytes())
        h.update(np.asarray(img.affine, np.float64).tobytes())
    return h.hexdigest()[:16]


def _centroid_world(mask, affine):
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


# ------------------------------------------------------------------------ the default is unchanged
@pytest.mark.parametrize("task", ["abdomen", "heart"])
def test_default_output_is_bit_identical_to_before(tmp_path, task):
    sites = write_phantom_federation(tmp_path, seed=SEED, task=task, n_train=1, n_val=0, n_test=0, progress=False)
    assert list(sites) == ["ct-site", "mr-site"]
    for name, path in sites.items():
        assert _hash(path, _entries(path)[0]["training"][0]) == BEFORE[f"{task}/{name}"], name


def test_site_constants():
    assert FACTORY_SITES == ("ct-site", "mr-site", "mr-t1-site") and LATE_SITES == ("cect-site",)
    assert sorted(s["code"] for s in SITES.values()) == [1, 2, 3, 4]  # one rng stream per site
    assert len({s["prefix"] for s in SITES.values()}) == len({(s["grid"], s["orientation"]) for s in SITES.values()}) == 4


# ---------------------------------------------------------------------------------- contract
def test_new_sites_pass_the_data_contract_check(four):
    assert list(four) == list(ALL)
    for name in ("mr-t1-site", "cect-site"):
        report = check_site(four[name])
        assert report.ok, report.render()
        assert report.n_cases == {"training": 1, "validation": 1, "test": 1}
        assert set(report.structures_found) == set(ORGANS)


def test_dataset_json_geometry_and_label_numbering(four):
    expected = {"mr-t1-site": ("MR", "mrt1", (150, 150, 36), (2.6, 2.6, 5.5), ("L", "A", "S")),
                "cect-site": ("CT", "cect", (168, 168, 46), (2.3, 2.3, 4.4), ("R", "A", "I"))}
    for name, (modality, prefix, shape, zooms, codes) in expected.items():
        ds, entries = _entries(four[name])
        assert ds["name"] == name and ds["modality"] == modality and ds["background_label_ids"] == []
        assert ds["labels"] == SITE_LABELS[("abdomen", modality)]  # cect: CT numbering, mr-t1: MR numbering
        assert "phantom" in ds["description"] and "".join(codes) in ds["description"]
        for e in entries:
            assert Path(e["image"]).name.startswith(prefix + "_")
            img, lab = nib.load(four[name] / e["image"]), nib.load(four[name] / e["label"])
            assert img.shape == lab.shape == shape and nib.aff2axcodes(img.affine) == codes
            np.testing.assert_allclose(img.header.get_zooms(), zooms, rtol=1e-5)
            np.testing.assert_array_equal(img.affine, lab.affine)
            assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8


def test_labels_are_the_same_structures_in_world_coordinates(four):
    """Every site's label names outline the same organs: right liver, left spleen, ... whatever the
    numbering and the stored orientation (RAS, LPS, LAS, RAI)."""
    for name, path in four.items():
        ds, entries = _entries(path)
        ids = {n: int(k) for k, n in ds["labels"].items()}
        for e in entries:
            img = nib.as_closest_canonical(nib.load(path / e["image"]))
            lab = nib.as_closest_canonical(nib.load(path / e["label"]))
            lb, aff = np.asarray(lab.dataobj), img.affine
            ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
            vol = {n: (lb == ids[n]).sum() * ml for n in ORGANS}
            assert max(vol, key=vol.get) == "liver" and 600 < vol["liver"] < 2600, (name, vol)
            assert min(vol.values()) > 8, (name, vol)
            c = {n: _centroid_world(lb == ids[n], aff) for n in ORGANS}
            assert c["liver"][0] > 20 and c["spleen"][0] < -40, name  # patient's right / left
            assert c["kidney_right"][0] > c["kidney_left"][0] + 50
            assert c["liver"][2] > c["kidney_right"][2] and c["gallbladder"][1] > c["kidney_right"][1]
            assert not lb[:, :, 0].any() and not lb[:, :, -1].any()


def test_sites_are_different_subjects():
    livers = [(case(s).label == int({n: k for k, n in case(s).labels.items()}["liver"])).sum()
              * abs(np.linalg.det(case(s).affine[:3, :3])) for s in ALL]
    assert len({round(float(v)) for v in livers}) == 4


# ------------------------------------------------------------------------------- intensities
def _organ(c, name):
    k = int({n: k for k, n in c.labels.items()}[name])
    return c.image[c.label == k].astype(np.float32)


def _tissue(c, name):
    return float(np.median(c.image[c.tissue == TISSUES[name]]))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_t1_contrast_differs_from_t2(index):
    t2, t1 = case("mr-site", index), case("mr-t1-site", index)
    r2 = np.median(_organ(t2, "liver")) / np.median(_organ(t2, "spleen"))
    r1 = np.median(_organ(t1, "liver")) / np.median(_organ(t1, "spleen"))
    assert r2 < 0.8 and r1 > 1.1  # liver darker than spleen in T2, brighter in T1
    assert t1.image.min() >= 0
    fat, liver = _tissue(t1, "fat"), float(np.median(_organ(t1, "liver")))
    for dark in ("fluid", "csf", "kidney_medulla", "gallbladder"):
        if (t1.tissue == TISSUES[dark]).sum() > 50:
            assert _tissue(t1, dark) < 0.6 * liver, dark  # water-rich tissues dark in T1 ...
            assert _tissue(t2, dark) > 1.5 * float(np.median(_organ(t2, "liver"))), dark  # ... bright in T2
    assert fat > liver and _tissue(t1, "muscle") < liver
    assert _tissue(t1, "kidney_medulla") < _tissue(t1, "kidney_cortex")


def test_cect_enhances_organs_but_not_fat_air_bone():
    ct = [case("ct-site", i) for i in range(3)]
    ce = [case("cect-site", i) for i in range(3)]
    liver_ct = np.mean([np.median(_organ(c, "liver")) for c in ct])
    liver_ce = np.mean([np.median(_organ(c, "liver")) for c in ce])
    assert liver_ce - liver_ct > 30, (liver_ct, liver_ce)
    for c in ce:
        assert 95 < np.median(_organ(c, "liver")) < 145
        assert _tissue(c, "kidney_cortex") > 140 and _tissue(c, "blood") > 140
        assert _tissue(c, "kidney_cortex") > _tissue(c, "kidney_medulla")
    for t, tol in (("fat", 15), ("air", 5), ("gallbladder", 15), ("bone_cortex", 120)):
        a, b = np.mean([_tissue(c, t) for c in ct]), np.mean([_tissue(c, t) for c in ce])
        assert abs(a - b) < tol, (t, a, b)


def test_four_domains_have_different_liver_statistics():
    """Liver relative to fat (a scale-free statistic): its own value in each domain."""
    rel = {s: float(np.median(_organ(case(s), "liver")) - _tissue(case(s), "fat"))
              / abs(_tissue(case(s), "fat")) for s in ALL}
    vals = sorted(rel.values())
    assert min(np.diff(vals)) > 0.1, rel


def test_new_domains_render_the_heart_task():
    for site in ("mr-t1-site", "cect-site"):
        c = case(site, 0, "heart")
        assert c.labels == {"0": "background", "1": "heart"} and 1000 < (c.label == 1).sum()
    ce = case("cect-site", 0, "heart")
    assert _tissue(ce, "blood") > _tissue(ce, "myocardium") + 40  # enhanced blood pool
    t1 = case("mr-t1-site", 0, "heart")
    assert _tissue(t1, "fat") > _tissue(t1, "myocardium") > _tissue(t1, "lung")


def test_docstring_table_matches_the_renderers():
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^(\w+)\s{2,}(.+)$", phantom_domains.__doc__, re.M)
            if m.group(1) in TISSUES}
    assert set(rows) == set(TISSUES)
    ct_hu, t2 = tissue_property("ct_hu"), tissue_property("mr_t2")
    for name, i in TISSUES.items():
        cols = [c for c in rows[name] if c != ".."]
        assert float(cols[-3]) == ct_hu[i] + phantom_domains.PV_ENHANCEMENT[i], name
        assert float(cols[-2]) == t2[i] and float(cols[-1]) == phantom_domains.T1_LEVEL[i], name


# ------------------------------------------------------------------------------------- errors
def test_unknown_site_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="ct-site, mr-site, mr-t1-site, cect-site"):
        write_phantom_federation(tmp_path, sites=("ct-site", "pet-site"), progress=False)
    assert not (tmp_path / "ct-site").exists()
    with pytest.raises(ValueError, match="does not match"):
        generate_case("abdomen", "MR", 0, 0, site="cect-site")


# ---------------------------------------------------------------------------------------- CLI
def test_cli_sites_writes_exactly_the_chosen_folders(tmp_path, capsys):
    rc = main(["demo-data", "--out", str(tmp_path), "--sites", "mr-t1-site", "cect-site", "--n-train", "1",
               "--n-val", "0", "--n-test", "0", "--quiet", "--preview", str(tmp_path / "p.png")])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cect-site", "mr-t1-site", "p.png"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = main(["demo-data", "--out", str(tmp_path / "bad"), "--sites", "ct-site", "brain-site", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "brain-site" in err and all(s in err for s in SITES)
    assert not (tmp_path / "bad").exists()


def test_cli_factory_flag(monkeypatch, tmp_path):
    import fedxmodal.data.phantom as phantom

    seen = {}
    monkeypatch.setattr(phantom, "write_phantom_federation", lambda out, **kw: seen.update(kw) or {})
    assert main(["demo-data", "--out", str(tmp_path), "--factory", "--quiet"]) == 0
    assert seen["sites"] == ("ct-site", "mr-site", "mr-t1-site", "cect-site")
    assert main(["demo-data", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["sites"] == ("ct-site", "mr-site") and seen["task"] == "abdomen"


TOTALSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg-ct-mr"


def test_totalseg_pair_with_phantom_sites(tmp_path, monkeypatch, capsys):
    if not (TOTALSEG / "ct" / "ct.nii.gz").is_file():  # as tests/conftest.py: the real data must sit in ../shared
        pytest.fail(f"{TOTALSEG} is missing: the real data must sit beside the project as ../shared")
    import fedxmodal.data.phantom as phantom

    real = phantom.write_phantom_federation
    monkeypatch.setattr(phantom, "write_phantom_federation",
                        lambda out, **kw: real(out, **{**kw, "n_train": 1, "n_val": 1, "n_test": 1}))
    rc = main(["totalseg-pair", "--src", str(TOTALSEG), "--out", str(tmp_path), "--with-phantom-sites", "mr-t1-site",
               "cect-site"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cect-site", "ct-site", "mr-site", "mr-t1-site"]
    for site in ("ct-site", "mr-site"):  # the real pair: pointers into ../shared, nothing copied
        ds = json.loads((tmp_path / site / "dataset.json").read_text())
        assert Path(ds["training"][0]["image"]).is_absolute() and list((tmp_path / site).iterdir()) == [
            tmp_path / site / "dataset.json"]
    assert check_site(tmp_path / "mr-t1-site").ok
    assert main(["totalseg-pair", "--src", str(TOTALSEG), "--out", str(tmp_path / "x"),
                 "--with-phantom-sites", "mr-site"]) == 2
    assert "real pair" in capsys.readouterr().err
