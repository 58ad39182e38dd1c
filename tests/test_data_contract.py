"""The site data contract: parsing, label mapping, check-data on every bad input, preprocessing
and its exact inverse, on tiny synthetic sites and on the real TotalSegmentator CT/MR pair."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from fedxmodal.cli import main
from fedxmodal.data.check import check_site
from fedxmodal.data.contract import ABDOMEN_STRUCTURES, SiteDataset
from fedxmodal.data.errors import DataError
from fedxmodal.data.slices import SiteSlices

from conftest import SHARED_DATA, blob_case, write_site

README_VOXELS = {  # ../shared/data/totalseg-ct-mr/README.md
    "CT": {"spleen": 9668, "kidney_right": 7134, "kidney_left": 5090, "gallbladder": 1319, "liver": 41692,
           "pancreas": 695},
    "MR": {"spleen": 1941, "kidney_right": 1721, "kidney_left": 1442, "gallbladder": 1121, "liver": 18480,
           "pancreas": 1176},
}


def _problems(site, structures=("liver", "spleen")):
    report = check_site(site, structures)
    return report, "\n".join(report.problems)


def _edit_json(site, **changes):
    spec = json.loads((site / "dataset.json").read_text())
    spec.update(changes)
    (site / "dataset.json").write_text(json.dumps(spec))


def test_good_site_passes_check_and_cli(good_site, capsys):
    report, text = _problems(good_site)
    assert report.ok, text
    assert report.structures_found == {"liver": 4, "spleen": 4}
    assert main(["check-data", str(good_site), "--structures", "liver,spleen", "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out


def test_missing_file_is_named(good_site):
    (good_site / "images/training_1.nii.gz").unlink()
    report, text = _problems(good_site)
    assert not report.ok
    assert "training_1.nii.gz: image file is missing" in text


def test_truncated_image_is_named(good_site):
    path = good_site / "images/validation_0.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    _, text = _problems(good_site)
    assert "validation_0.nii.gz: unreadable" in text


def test_shape_and_affine_mismatch(good_site):
    img, lab = blob_case(5)
    nib.save(nib.Nifti1Image(lab[:, :30], np.diag([2.0, 2.0, 4.0, 1.0])), str(good_site / "labels/training_0.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.diag([2.5, 2.0, 4.0, 1.0])), str(good_site / "labels/test_0.nii.gz"))
    _, text = _problems(good_site)
    assert "labels/training_0.nii.gz: label shape (40, 30, 6) differs from image shape (40, 40, 6)" in text
    assert "labels/test_0.nii.gz: label affine differs" in text


def test_unknown_label_id_reported_unless_declared_background(good_site):
    img, lab = blob_case(6)
    lab[1:3, 1:3, 1] = 9
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 4.0, 1.0])), str(good_site / "labels/training_0.nii.gz"))
    _, text = _problems(good_site)
    assert "labels/training_0.nii.gz: label ids [9] are neither mapped" in text
    _edit_json(good_site, background_label_ids=[9])
    report, text = _problems(good_site)
    assert report.ok, text
    _edit_json(good_site, background_label_ids="unlisted")
    assert check_site(good_site, ("liver", "spleen")).ok


def test_empty_split_and_nan_and_2d(good_site):
    _edit_json(good_site, validation=[])
    img, lab = blob_case(7)
    img[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 4.0, 1.0])), str(good_site / "images/test_0.nii.gz"))
    nib.save(nib.Nifti1Image(img[:, :, 0], np.diag([2.0, 2.0, 4.0, 1.0])), str(good_site / "images/training_1.nii.gz"))
    report, text = _problems(good_site)
    assert "the 'validation' split is empty" in text
    assert "images/test_0.nii.gz: image contains 1 NaN/inf voxels" in text
    assert "images/training_1.nii.gz: image has shape (40, 40): a 3D volume is expected" in text
    assert len(report.problems) == 3  # every problem at once, nothing else


def test_bad_json_and_overlapping_splits(good_site, capsys):
    spec = json.loads((good_site / "dataset.json").read_text())
    spec["test"] = spec["training"][:1]
    (good_site / "dataset.json").write_text(json.dumps(spec))
    _, text = _problems(good_site)
    assert "listed in 'training' and 'test'" in text
    (good_site / "dataset.json").write_text("{not json")
    assert main(["check-data", str(good_site), "--quiet"]) == 1
    assert "dataset.json: not valid JSON" in capsys.readouterr().out
    _edit_json_raw = {"modality": "PET", "labels": {"x": "liver"}, "training": []}
    (good_site / "dataset.json").write_text(json.dumps(_edit_json_raw))
    with pytest.raises(DataError, match=r"dataset.json: 'modality' must be one of .*label id 'x'"):
        SiteDataset.load(good_site)


def test_training_raises_the_same_clear_error(good_site):
    img, lab = blob_case(8)
    lab[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 4.0, 1.0])), str(good_site / "labels/training_1.nii.gz"))
    with pytest.raises(DataError, match=r"training_1.nii.gz: label ids \[4\]"):
        SiteSlices(good_site, ("liver", "spleen"), progress=False).slices("training")


def test_name_based_mapping_and_unused_structures(tmp_path):
    img, lab = blob_case(0)
    # This site numbers spleen 1 and liver 2; the job asks for (liver, spleen).
    site = write_site(tmp_path / "s", {s: [(img, lab)] if s == "training" else [blob_case(1)]
                                       for s in ("training", "validation", "test")},
                      labels={"0": "background", "1": "spleen", "2": "liver"})
    vols = SiteSlices(site, ("liver", "spleen"), progress=False).volumes("training")
    ref = vols[0].ref_label
    assert (ref[lab == 1] == 2).all() and (ref[lab == 2] == 1).all()
    # A structure the job does not segment becomes background.
    ref_liver_only = SiteSlices(site, ("liver",), progress=False).volumes("training")[0].ref_label
    assert set(np.unique(ref_liver_only)) == {0, 1} and (ref_liver_only[lab == 1] == 0).all()


def test_preprocessing_inverse_is_exact_for_labels(good_site):
    site = SiteSlices(good_site, ("liver", "spleen"), progress=False)
    vol = site.volumes("test")[0]
    assert vol.image.shape == (6, 1, 128, 128) and vol.label.shape == (6, 128, 128)
    onehot = torch.nn.functional.one_hot(vol.label.long(), 3).permute(0, 3, 1, 2).float()
    back = site.preprocessor.invert(vol, onehot).argmax(0).numpy()
    # 2 mm -> 3 mm -> 2 mm nearest/bilinear round trip: boundaries may move by a voxel at most.
    agree = (back == vol.ref_label).mean()
    assert back.shape == vol.ref_label.shape and agree > 0.97


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_real_totalseg_pair_through_the_contract(totalseg_sites, modality):
    site_dir = totalseg_sites[modality]
    report = check_site(site_dir, ABDOMEN_STRUCTURES)
    assert report.ok, report.render()
    site = SiteSlices(site_dir, ABDOMEN_STRUCTURES, progress=False)
    counts = {s: 0 for s in ABDOMEN_STRUCTURES}
    for split in ("training", "validation", "test"):
        for vol in site.volumes(split):
            for c, s in enumerate(ABDOMEN_STRUCTURES, start=1):
                counts[s] += int((vol.ref_label == c).sum())
            # Intensities after preprocessing: CT window then z-score, MR clip then z-score.
            assert torch.isfinite(vol.image).all()
            assert -4 < float(vol.image.min()) < 0 < float(vol.image.max()) < 12
    assert counts == README_VOXELS[modality]  # slabs are disjoint and cover the volume exactly
    # Both volumes (RAS and LPS on disk) end up in RAS: +x is the patient's right, where the
    # liver lies; the spleen is on the left.
    images, labels = site.slices("training", foreground_only=True)
    # Liver, kidneys, spleen, pancreas reach training (the CT gallbladder lies inside the held-out slabs).
    assert set(torch.unique(labels).tolist()) >= set(range(6))
    xs = torch.arange(labels.shape[1]).view(1, -1, 1).expand_as(labels).float()
    liver_x = xs[labels == 1].mean()
    spleen_x = xs[labels == 4].mean()
    assert liver_x > spleen_x + 20


def test_real_ct_window_range(totalseg_sites):
    site = SiteSlices(totalseg_sites["CT"], ABDOMEN_STRUCTURES, progress=False)
    vol = site.volumes("training")[0]
    raw = nib.load(str(SHARED_DATA / "ct/ct.nii.gz")).get_fdata()
    assert raw.min() < -1000 and raw.max() > 3000  # raw HU exceed the window ...
    img = vol.image[vol.label.flatten(1).amax(1) >= 0]
    # ... which is clipped to [-125, 275] HU: z-scored, only two plateau values bound the range.
    lo, hi = float(img.min()), float(img.max())
    assert (img <= lo + 1e-4).float().mean() > 0.05 and (img >= hi - 1e-4).float().mean() > 0.001


def test_unlabelled_training_cases_are_accepted_and_reported(good_site, capsys):
    spec = json.loads((good_site / "dataset.json").read_text())
    del spec["training"][1]["label"]
    (good_site / "dataset.json").write_text(json.dumps(spec))
    report, text = _problems(good_site)
    assert report.ok, text
    assert report.unlabelled_training == ["training_1"]
    assert report.structures_found == {"liver": 3, "spleen": 3}  # the unlabelled case counts nothing
    assert main(["check-data", str(good_site), "--quiet"]) == 0
    assert "unlabelled training cases: 1 of 2" in capsys.readouterr().out
    # The supervised loader refuses the site before loading anything, naming the site and the case.
    data = SiteSlices(good_site, ("liver", "spleen"), progress=False)
    with pytest.raises(DataError, match=r"dataset.json: site 'site': 1 'training' case\(s\) have no label \(training_1\)"):
        data.slices("training")
    assert not data._volumes  # refused before any volume was prepared
    assert data.volumes("training")[1].label is None  # a self-supervised method can still read the images


def test_validation_still_needs_labels_and_bad_label_values(good_site):
    spec = json.loads((good_site / "dataset.json").read_text())
    del spec["validation"][0]["label"]
    spec["training"][0]["label"] = 5
    (good_site / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"'training'\[0\] .*'label' must be a path or absent; 'validation'\[0\] .*needs a 'label' path"):
        SiteDataset.load(good_site)
