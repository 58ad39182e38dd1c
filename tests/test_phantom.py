"""Tests of the procedural CT/MR phantom federation (fedxmodal.data.phantom)."""

from __future__ import annotations

import functools
import json

import nibabel as nib
import numpy as np
import pytest

from fedxmodal.apps.previews import save_preview_png
from fedxmodal.data.phantom import SITE_LABELS, write_phantom_federation
from fedxmodal.data.phantom import generate_case as _generate_case
from fedxmodal.data.phantom_render import TISSUES, bias_field

SEED = 3
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder")
# plausible organ volumes (ml) for an adult abdomen phantom
VOLUME_ML = {"liver": (600, 2600), "kidney_right": (50, 300), "kidney_left": (50, 300), "spleen": (50, 450),
             "pancreas": (15, 150), "gallbladder": (8, 90)}


@functools.lru_cache(maxsize=None)
def generate_case(task, modality, seed, index):
    """Cached (the cases are deterministic; tests must not modify the arrays)."""
    return _generate_case(task, modality, seed, index)


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom_abdomen")
    return write_phantom_federation(out, seed=SEED, task="abdomen", n_train=1, n_val=1, n_test=1, progress=False)


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom_heart")
    return write_phantom_federation(out, seed=SEED, task="heart", n_train=1, n_val=0, n_test=1, progress=False)


def _cases(site_dir):
    ds = json.loads((site_dir / "dataset.json").read_text())
    return ds, [e for split in ("training", "validation", "test") for e in ds[split]]


def _load(site_dir, entry, canonical=True):
    img, lab = nib.load(site_dir / entry["image"]), nib.load(site_dir / entry["label"])
    if canonical:
        img, lab = nib.as_closest_canonical(img), nib.as_closest_canonical(lab)
    return img, lab


def _centroid_world(mask, affine):
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _body_mask(image, modality):
    image = np.asarray(image, np.float32)
    return image > -500 if modality == "CT" else image > 0.1 * np.percentile(image, 99)


def _ids(ds):
    return {name: int(k) for k, name in ds["labels"].items()}


# ------------------------------------------------------------------------------ contract
def test_returns_both_sites_with_dataset_json(abdomen):
    assert set(abdomen) == {"ct-site", "mr-site"}
    for site, path in abdomen.items():
        ds, entries = _cases(path)
        assert ds["name"] == site
        assert ds["modality"] == {"ct-site": "CT", "mr-site": "MR"}[site]
        assert ds["background_label_ids"] == []
        assert "phantom" in ds["description"].lower() and f"seed {SEED}" in ds["description"]
        assert ds["labels"] == SITE_LABELS[("abdomen", ds["modality"])]
        assert [len(ds[s]) for s in ("training", "validation", "test")] == [1, 1, 1]
        assert ds["validation"][0]["image"].startswith("imagesTr/")
        assert ds["test"][0]["image"].startswith("imagesTs/") and ds["test"][0]["label"].startswith("labelsTs/")
        for e in entries:
            assert not e["image"].startswith("/") and (path / e["image"]).is_file()
            assert (path / e["label"]).is_file() and e["image"].endswith(".nii.gz")


def test_label_numbering_differs_between_sites_but_names_match():
    ct, mr = SITE_LABELS[("abdomen", "CT")], SITE_LABELS[("abdomen", "MR")]
    assert ct["1"] == "liver" and mr["1"] == "spleen" and mr["5"] == "liver"
    assert sorted(ct.values()) == sorted(mr.values()) == sorted(("background",) + ORGANS)


def test_geometry_dtypes_and_orientation(abdomen):
    expected = {"ct-site": ((160, 160, 40), (2.4, 2.4, 5.0), ("R", "A", "S")),
                "mr-site": ((144, 144, 34), (2.7, 2.7, 6.0), ("L", "P", "S"))}
    for site, path in abdomen.items():
        shape, zooms, codes = expected[site]
        for e in _cases(path)[1]:
            img, lab = _load(path, e, canonical=False)
            assert img.shape == lab.shape == shape
            np.testing.assert_allclose(img.header.get_zooms(), zooms, rtol=1e-5)
            np.testing.assert_array_equal(img.affine, lab.affine)
            assert nib.aff2axcodes(img.affine) == codes
            assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
            assert set(np.unique(np.asarray(lab.dataobj))) <= {int(k) for k in _cases(path)[0]["labels"]}


# ------------------------------------------------------------------------------ anatomy
def test_every_structure_present_with_plausible_volume(abdomen):
    for path in abdomen.values():
        ds, entries = _cases(path)
        ids = _ids(ds)
        for e in entries:
            img, lab = _load(path, e)
            lb = np.asarray(lab.dataobj)
            voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
            vol = {name: (lb == ids[name]).sum() * voxel_ml for name in ORGANS}
            for name, (lo, hi) in VOLUME_ML.items():
                assert lo < vol[name] < hi, (path.name, e["image"], name, vol[name])
            assert max(vol, key=vol.get) == "liver"
            assert set(sorted(vol, key=vol.get)[:2]) == {"pancreas", "gallbladder"}
            # the volume covers more than the organs: top (lung bases) and bottom slices have no organ
            assert not lb[:, :, 0].any() and not lb[:, :, -1].any()


def test_anatomy_is_correct_in_world_coordinates_in_both_orientations(abdomen):
    """RAS+ world: +x = patient Right.  The liver must be on the patient's right in both sites, although the
    MR arrays are stored LPS (flipped x/y) and the CT arrays RAS."""
    for path in abdomen.values():
        ds, entries = _cases(path)
        ids = _ids(ds)
        for e in entries:
            img, lab = _load(path, e)
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            lb, aff = np.asarray(lab.dataobj), img.affine
            body = _centroid_world(_body_mask(img.dataobj, ds["modality"]), aff)
            c = {name: _centroid_world(lb == ids[name], aff) for name in ORGANS}
            assert c["liver"][0] > body[0] + 20  # patient's right
            assert c["spleen"][0] < body[0] - 40  # patient's left
            assert c["kidney_right"][0] > body[0] + 25 and c["kidney_left"][0] < body[0] - 25
            assert c["spleen"][1] < c["liver"][1] and c["kidney_left"][1] < c["pancreas"][1]  # posterior
            assert c["gallbladder"][1] > c["kidney_right"][1]  # gallbladder anterior
            assert c["liver"][2] > c["kidney_right"][2]  # liver superior to the right kidney
            assert c["gallbladder"][2] < c["liver"][2]  # at the inferior edge of the liver


def test_ct_and_mr_subjects_are_different_draws(abdomen):
    feats = {}
    for site, path in abdomen.items():
        ds, entries = _cases(path)
        img, lab = _load(path, entries[0])
        lb = np.asarray(lab.dataobj)
        liver = lb == _ids(ds)["liver"]
        feats[site] = (liver.sum() * np.prod(img.header.get_zooms()[:3]), _centroid_world(liver, img.affine))
    (v_ct, c_ct), (v_mr, c_mr) = feats["ct-site"], feats["mr-site"]
    assert abs(v_ct - v_mr) / v_ct > 0.005 or np.linalg.norm(c_ct - c_mr) > 1.0
    # and the subjects within a site differ too
    a, b = generate_case("abdomen", "CT", SEED, 0), generate_case("abdomen", "CT", SEED, 1)
    assert (a.label == 1).sum() != (b.label == 1).sum()


# ---------------------------------------------------------------------------- intensities
@pytest.mark.parametrize("index", [0, 1])
def test_ct_hounsfield_and_mr_mapping_is_non_monotonic(index):
    ct, mr = generate_case("abdomen", "CT", SEED, index), generate_case("abdomen", "MR", SEED, index)

    def means(case):
        names = {n: int(k) for k, n in case.labels.items()}
        out = {n: float(case.image[case.label == names[n]].mean()) for n in ORGANS}
        # tissue-map means away from edges (erode by requiring the tissue in the fat/bone core)
        for t in ("fat", "bone_cortex", "air"):
            out[t] = float(np.median(case.image[case.tissue == TISSUES[t]]))
        return out

    c, m = means(ct), means(mr)
    # CT: realistic HU ordering
    assert -1010 < c["air"] < -970 and -140 < c["fat"] < -60
    assert 30 < c["liver"] < 140 and c["bone_cortex"] > 300
    assert c["fat"] < c["gallbladder"] < c["liver"] < c["bone_cortex"]
    assert c["gallbladder"] < c["spleen"] and c["gallbladder"] < 40
    # MR: arbitrary units >= 0, re-ordered tissues (T2-like)
    assert mr.image.min() >= 0 and m["air"] > 0  # Rician noise floor
    assert m["fat"] > m["liver"] and m["gallbladder"] > m["liver"] and m["bone_cortex"] < m["liver"]
    assert m["spleen"] > m["liver"] and m["kidney_left"] > m["liver"]
    # non-monotonic: the CT order of these pairs is reversed in MR
    assert (c["fat"] < c["liver"]) and (m["fat"] > m["liver"])
    assert (c["gallbladder"] < c["liver"]) and (m["gallbladder"] > m["liver"])
    assert (c["bone_cortex"] > c["liver"]) and (m["bone_cortex"] < m["liver"])


def test_ct_noise_and_mr_bias_field():
    ct = generate_case("abdomen", "CT", SEED, 0)
    air = ct.image[:8, :8, :].astype(np.float32)  # corner: air only
    assert 5 < air.std() < 25
    field = bias_field(np.random.default_rng(0), (40, 30, 20), 0.25)
    assert np.abs(np.log(field)).max() == pytest.approx(0.25, rel=1e-4)  # +-25 % multiplicative
    assert np.abs(np.diff(np.log(field), axis=0)).max() < 0.05  # smooth
    mr = generate_case("abdomen", "MR", SEED, 0)
    fat = mr.tissue == TISSUES["fat"]
    core = fat & np.roll(fat, 2, 0) & np.roll(fat, -2, 0) & np.roll(fat, 2, 1) & np.roll(fat, -2, 1)
    # the same tissue has a different mean in different octants of the volume (bias field, not noise)
    half = [n // 2 for n in mr.image.shape]
    block_means = []
    for i in (slice(None, half[0]), slice(half[0], None)):
        for j in (slice(None, half[1]), slice(half[1], None)):
            for k in (slice(None, half[2]), slice(half[2], None)):
                m = core[i, j, k]
                if m.sum() > 200:
                    block_means.append(mr.image[i, j, k][m].mean())
    assert max(block_means) / min(block_means) > 1.1


# ----------------------------------------------------------------------------- determinism
def test_same_seed_identical_arrays_different_seed_differs(abdomen, tmp_path):
    again = write_phantom_federation(tmp_path, seed=SEED, task="abdomen", n_train=1, n_val=0, n_test=0,
                                     progress=False)
    for site in ("ct-site", "mr-site"):
        e0 = _cases(abdomen[site])[1][0]
        e1 = _cases(again[site])[1][0]
        for key in ("image", "label"):
            a = np.asarray(nib.load(abdomen[site] / e0[key]).dataobj)
            b = np.asarray(nib.load(again[site] / e1[key]).dataobj)
            np.testing.assert_array_equal(a, b)
    a, b = generate_case("abdomen", "MR", SEED, 0), generate_case("abdomen", "MR", SEED + 1, 0)
    assert not np.array_equal(a.image, b.image) and not np.array_equal(a.label, b.label)


# ----------------------------------------------------------------------------------- heart
def test_heart_task(heart):
    for site, path in heart.items():
        ds, entries = _cases(path)
        assert ds["labels"] == {"0": "background", "1": "heart"} and ds["validation"] == []
        for e in entries:
            img, lab = _load(path, e)
            lb = np.asarray(lab.dataobj)
            assert set(np.unique(lb)) == {0, 1}
            vol_ml = lb.sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000
            assert 300 < vol_ml < 1300, (site, vol_ml)
            body = _centroid_world(_body_mask(img.dataobj, ds["modality"]), img.affine)
            hc = _centroid_world(lb == 1, img.affine)
            assert hc[0] < body[0] and hc[1] > body[1] - 20  # left of centre, not posterior
            per_slice = lb.reshape(-1, lb.shape[2]).any(axis=0)
            assert 0.25 < per_slice.mean() < 0.9  # slices above and below the heart


def test_heart_contrasts():
    ct, mr = generate_case("heart", "CT", SEED, 0), generate_case("heart", "MR", SEED, 0)
    lung = TISSUES["lung"]
    for case in (ct, mr):
        assert (case.tissue == lung).sum() > 0.05 * case.tissue.size
    c_lung, c_fat = (float(np.median(ct.image[ct.tissue == TISSUES[t]])) for t in ("lung", "fat"))
    c_heart = float(ct.image[ct.label == 1].mean())
    assert c_lung < -600 and c_fat < 0 < c_heart
    m = {t: float(np.median(mr.image[mr.tissue == TISSUES[t]])) for t in ("lung", "fat", "blood", "myocardium")}
    assert m["lung"] < m["myocardium"] < m["blood"] and m["fat"] > m["myocardium"]  # bright blood, bright fat


# ------------------------------------------------------------------------------------ misc
def test_preview_png(abdomen, tmp_path):
    out = save_preview_png(abdomen["mr-site"], tmp_path / "mr.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_task_rejected(tmp_path):
    with pytest.raises(ValueError):
        write_phantom_federation(tmp_path, task="brain", progress=False)
