"""Converters (fedxmodal.data.converters) on miniature copies of the real source layouts, built
here with nibabel / pydicom / Pillow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from fedxmodal.data.check import check_site
from fedxmodal.data.contract import SPLITS, SiteDataset
from fedxmodal.data.converters import convert_amos, convert_chaos, convert_totalseg
from fedxmodal.data.errors import DataError
from fedxmodal.data.io import load_volume, volume_affine

SHARED_TOTALSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg-ct-mr"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(array, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))
    return path


def _load_site(site_dir: Path) -> tuple[dict, SiteDataset]:
    spec = json.loads((site_dir / "dataset.json").read_text())
    return spec, SiteDataset.load(site_dir)


def _assert_valid_site(site_dir: Path, modality: str, *, all_splits=True) -> dict:
    """dataset.json parses under the contract, splits are disjoint (and non-empty), every file
    exists and loads, labels share the image grid."""
    spec, site = _load_site(site_dir)
    assert spec["modality"] == modality and site.modality == modality
    images = [c.image for s in SPLITS for c in site.split(s)]
    assert len(images) == len(set(images)), "a case is listed twice"
    if all_splits:
        assert all(site.split(s) for s in SPLITS), {s: len(site.split(s)) for s in SPLITS}
    for split in SPLITS:
        for case in site.split(split):
            assert case.image.exists(), case.image
            image = load_volume(case.image)
            if case.label is None:
                assert split == "test"
                continue
            label = load_volume(case.label, role="label")
            assert tuple(label.shape) == tuple(image.shape)
            np.testing.assert_allclose(volume_affine(label), volume_affine(image), atol=1e-5)
    if all_splits:  # the project's own validator (check-data) agrees
        report = check_site(site_dir)
        assert report.ok, report.render()
    return spec


# ---------------------------------------------------------------------------------------------
# AMOS22
# ---------------------------------------------------------------------------------------------
AMOS_JSON_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
                    "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava",
                    "10": "pancreas", "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum",
                    "14": "bladder", "15": "prostate/uterus"}


def _amos_case(root: Path, part: str, case: str, labelled: bool = True) -> None:
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    _nifti(root / f"images{part}" / f"{case}.nii.gz", rng.integers(-1000, 1000, (8, 8, 4)).astype(np.int16))
    if labelled:
        lab = np.zeros((8, 8, 4), np.uint8)
        lab[1:3, 1:3, 1] = 6  # liver
        lab[5, 5, 2] = 1  # spleen
        _nifti(root / f"labels{part}" / f"{case}.nii.gz", lab)


@pytest.fixture
def amos_src(tmp_path) -> Path:
    root = tmp_path / "data" / "amos22"
    tr = ["amos_0001", "amos_0004", "amos_0005", "amos_0507", "amos_0508"]
    va = ["amos_0008", "amos_0510"]
    ts = ["amos_0002", "amos_0540"]
    for c in tr:
        _amos_case(root, "Tr", c)
    for c in va:
        _amos_case(root, "Va", c)
    for c in ts:
        _amos_case(root, "Ts", c, labelled=False)
    spec = {"name": "AMOS", "modality": {"0": "CT"}, "labels": AMOS_JSON_LABELS,
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in tr],
            "validation": [{"image": f"./imagesVa/{c}.nii.gz", "label": f"./labelsVa/{c}.nii.gz"} for c in va],
            "test": [{"image": f"./imagesTs/{c}.nii.gz"} for c in ts]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_amos_references_originals_split_by_modality(amos_src, tmp_path):
    out = tmp_path / "sites"
    sites = convert_amos(amos_src, out)
    assert sites == {"amos-ct": out / "amos-ct", "amos-mr": out / "amos-mr"}
    ct = _assert_valid_site(sites["amos-ct"], "CT")
    mr = _assert_valid_site(sites["amos-mr"], "MR")
    assert ct["labels"] == {"0": "background", "1": "spleen", "2": "kidney_right", "3": "kidney_left",
                            "4": "gallbladder", "5": "esophagus", "6": "liver", "7": "stomach", "8": "aorta",
                            "9": "inferior_vena_cava", "10": "pancreas", "11": "adrenal_gland_right",
                            "12": "adrenal_gland_left", "13": "duodenum", "14": "urinary_bladder",
                            "15": "prostate_uterus"}
    assert ct["background_label_ids"] == []

    def ids(spec):
        return sorted(Path(e["image"]).name[:9] for s in SPLITS for e in spec[s])
    assert ids(ct) == ["amos_0001", "amos_0004", "amos_0005", "amos_0008"]  # CT: ids <= 500, labelled only
    assert ids(mr) == ["amos_0507", "amos_0508", "amos_0510"]
    # nothing copied: relative references to the original files
    for spec, site in ((ct, sites["amos-ct"]), (mr, sites["amos-mr"])):
        for entry in (e for s in SPLITS for e in spec[s]):
            assert not os.path.isabs(entry["image"]) and entry["image"].startswith("../")
            assert (site / entry["image"]).resolve().parent.parent == amos_src.resolve()
    assert not (sites["amos-ct"] / "images").exists()
    # label values survive (the file is the original)
    _, site = _load_site(sites["amos-ct"])
    lab = load_volume(site.split("training")[0].label, role="label")[0].numpy()
    assert lab[1, 1, 1] == 6 and lab[5, 5, 2] == 1 and lab[0, 0, 0] == 0
    # deterministic: same seed -> same file, another output tree -> same split
    again = convert_amos(amos_src, tmp_path / "again")
    spec_again = json.loads((again["amos-ct"] / "dataset.json").read_text())
    assert [[Path(e["image"]).name for e in spec_again[s]] for s in SPLITS] == \
        [[Path(e["image"]).name for e in ct[s]] for s in SPLITS]


def test_amos_link_unlabelled_and_official_validation(amos_src, tmp_path):
    out = tmp_path / "linked"
    sites = convert_amos(amos_src, out, link=True, include_unlabelled=True, official_validation=True)
    ct = _assert_valid_site(sites["amos-ct"], "CT")
    for entry in (e for s in SPLITS for e in ct[s]):
        link = sites["amos-ct"] / entry["image"]
        assert entry["image"].startswith("images/") and link.is_symlink()
    unlabelled = [e for e in ct["test"] if "label" not in e]
    assert [Path(e["image"]).name for e in unlabelled] == ["amos_0002.nii.gz"]
    assert [Path(e["image"]).name for e in ct["validation"]] == ["amos_0008.nii.gz"]  # imagesVa
    mr = json.loads((sites["amos-mr"] / "dataset.json").read_text())
    assert [Path(e["image"]).name for e in mr["validation"]] == ["amos_0510.nii.gz"]


def test_amos_labels_come_from_the_source_json(amos_src, tmp_path):
    spec = json.loads((amos_src / "dataset.json").read_text())
    spec["labels"] = {"0": "background", "1": "spleen", "6": "liver"}
    (amos_src / "dataset.json").write_text(json.dumps(spec))
    sites = convert_amos(amos_src, tmp_path / "o")
    assert json.loads((sites["amos-mr"] / "dataset.json").read_text())["labels"] == \
        {"0": "background", "1": "spleen", "6": "liver"}


def test_amos_errors(amos_src, tmp_path):
    with pytest.raises(DataError, match="missing"):
        convert_amos(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        convert_amos(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="unknown layout"):
        convert_amos(tmp_path / "other", tmp_path / "o")
    (amos_src / "labelsTr" / "amos_0004.nii.gz").unlink()
    with pytest.raises(DataError, match="no label") as err:
        convert_amos(amos_src, tmp_path / "o")
    assert str(amos_src / "imagesTr" / "amos_0004.nii.gz") in str(err.value)


# ---------------------------------------------------------------------------------------------
# CHAOS (DICOM series + PNG masks)
# ---------------------------------------------------------------------------------------------
def _write_dicom(path: Path, pixels: np.ndarray, *, modality: str, instance: int, ipp, iop, spacing, study, series,
                 patient: str, intercept: float) -> None:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(spacing[2])
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.InstanceNumber = instance
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = pixels.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def _write_series(dicom_dir: Path, ground_dir: Path | None, *, modality: str, rows: int, cols: int, n: int,
                  marker: tuple[int, int, int], masks: dict[int, np.ndarray], dicom_names, png_names,
                  z0: float, dz: float, iop, patient: str, intercept: float = 0.0) -> None:
    """Slice k (0-based) has InstanceNumber k+1 and position z0 + k*dz along the slice normal; the
    DICOM pixel (marker row, col) of slice marker[0] is bright; masks[k] is the PNG of slice k."""
    study, series = generate_uid(), generate_uid()
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_dir, col_dir)
    spacing = (0.9, 0.7, abs(dz))
    for k in range(n):
        pixels = np.full((rows, cols), 100 + k, np.int16)
        if k == marker[0]:
            pixels[marker[1], marker[2]] = 3000
        ipp = np.array([-20.0, 15.0, 0.0]) + normal * (z0 + k * dz)
        _write_dicom(dicom_dir / dicom_names[k], pixels, modality=modality, instance=k + 1, ipp=ipp, iop=iop,
                     spacing=spacing, study=study, series=series, patient=patient, intercept=intercept)
        if ground_dir is not None:
            ground_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks.get(k, np.zeros((rows, cols), np.uint8))).save(ground_dir / png_names[k])


def _png(rows, cols, pixels: dict[tuple[int, int], int]) -> np.ndarray:
    m = np.zeros((rows, cols), np.uint8)
    for (r, c), v in pixels.items():
        m[r, c] = v
    return m


CT_GEOM = dict(rows=8, cols=6, n=4, z0=10.0, dz=2.5, iop=[1, 0, 0, 0, 1, 0])
MR_GEOM = dict(rows=7, cols=5, n=5, z0=50.0, dz=-4.0,  # slices descend; in-plane rotated 30 degrees
               iop=[0.8660254, 0.5, 0.0, -0.5, 0.8660254, 0.0])
CT_MARK = (2, 5, 1)  # slice index (InstanceNumber - 1), row, column
MR_MARK = (3, 1, 4)


@pytest.fixture
def chaos_src(tmp_path) -> Path:
    train = tmp_path / "CHAOS_Train_Sets" / "Train_Sets"
    for p in ("1", "2", "5"):
        g = CT_GEOM
        _write_series(train / "CT" / p / "DICOM_anon", train / "CT" / p / "Ground", modality="CT", patient=p,
                      marker=CT_MARK, intercept=-1024.0,
                      masks={CT_MARK[0]: _png(g["rows"], g["cols"], {CT_MARK[1:]: 255})},
                      dicom_names=[f"i{k:04d},0000b.dcm" for k in range(g["n"])],
                      png_names=[f"liver_GT_{k:03d}.png" for k in range(g["n"])], **g)
    for p in ("1", "3", "8"):
        g = MR_GEOM
        # T2SPIR: file numbers run opposite to InstanceNumber; PNGs share the DICOM file stems
        names = [f"IMG-0002-{g['n'] - k:05d}" for k in range(g["n"])]
        masks = {MR_MARK[0]: _png(g["rows"], g["cols"], {MR_MARK[1:]: 63, (0, 0): 126, (6, 0): 189, (6, 4): 252,
                                                         (3, 2): 30})}
        _write_series(train / "MR" / p / "T2SPIR" / "DICOM_anon", train / "MR" / p / "T2SPIR" / "Ground",
                      modality="MR", patient=p, marker=MR_MARK, masks=masks,
                      dicom_names=[f"{s}.dcm" for s in names], png_names=[f"{s}.png" for s in names], **g)
        for phase, off in (("InPhase", 0), ("OutPhase", 1)):
            names = [f"IMG-0004-{2 * k + 1 + off:05d}" for k in range(g["n"])]
            _write_series(train / "MR" / p / "T1DUAL" / "DICOM_anon" / phase,
                          train / "MR" / p / "T1DUAL" / "Ground" if phase == "InPhase" else None,
                          modality="MR", patient=p, marker=MR_MARK, masks=masks,
                          dicom_names=[f"{s}.dcm" for s in names], png_names=[f"{s}.png" for s in names], **g)
    return tmp_path / "CHAOS_Train_Sets"


def _marker_voxel(volume: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(volume)), volume.shape))


def test_chaos_labels_align_with_dicom_pixels(chaos_src, tmp_path):
    sites = convert_chaos(chaos_src, tmp_path / "sites")
    assert set(sites) == {"chaos-ct", "chaos-mr"}
    ct = _assert_valid_site(sites["chaos-ct"], "CT")
    mr = _assert_valid_site(sites["chaos-mr"], "MR")
    assert ct["labels"] == {"0": "background", "1": "liver"}
    assert mr["labels"] == {"0": "background", "1": "liver", "2": "kidney_right", "3": "kidney_left", "4": "spleen"}
    for site_dir, mark, g in ((sites["chaos-ct"], CT_MARK, CT_GEOM), (sites["chaos-mr"], MR_MARK, MR_GEOM)):
        _, site = _load_site(site_dir)
        cases = [c for s in SPLITS for c in site.split(s)]
        assert len(cases) == 3
        for case in cases:
            image = load_volume(case.image)
            label = load_volume(case.label, role="label")[0].numpy()
            img = image[0].numpy()
            assert img.shape == (g["cols"], g["rows"], g["n"])
            # the bright DICOM pixel and the PNG liver pixel of the same slice land on the same voxel
            voxel = _marker_voxel(img)
            assert img[voxel] == pytest.approx(3000 + (-1024 if g is CT_GEOM else 0))
            assert label[voxel] == 1
            assert voxel == (mark[2], mark[1], mark[0])  # (column, row, InstanceNumber order)
            # the marker's world position is the DICOM pixel's position (LPS -> RAS)
            iop = np.asarray(g["iop"], float)
            normal = np.cross(iop[:3], iop[3:])
            lps = (np.array([-20.0, 15.0, 0.0]) + normal * (g["z0"] + mark[0] * g["dz"])
                   + iop[:3] * 0.7 * mark[2] + iop[3:] * 0.9 * mark[1])
            world = volume_affine(image) @ np.array([*voxel, 1.0])
            np.testing.assert_allclose(world[:3], lps * np.array([-1, -1, 1]), atol=1e-3)
            if g is CT_GEOM:
                assert int((label > 0).sum()) == 1
            else:
                k = mark[0]
                assert label[0, 0, k] == 2 and label[0, 6, k] == 3 and label[4, 6, k] == 4
                assert label[2, 3, k] == 0  # grey 30 is no CHAOS label
                assert int((label > 0).sum()) == 4


def test_chaos_t1dual_and_modalities(chaos_src, tmp_path):
    sites = convert_chaos(chaos_src, tmp_path / "t1", mr_sequence="T1DUAL", modalities=("MR",))
    assert set(sites) == {"chaos-mr"}
    spec = _assert_valid_site(sites["chaos-mr"], "MR")
    assert "T1DUAL InPhase" in spec["description"]
    _, site = _load_site(sites["chaos-mr"])
    case = site.split("training")[0]
    img, lab = load_volume(case.image)[0].numpy(), load_volume(case.label, role="label")[0].numpy()
    assert lab[_marker_voxel(img)] == 1
    with pytest.raises(ValueError, match="mr_sequence"):
        convert_chaos(chaos_src, tmp_path / "x", mr_sequence="DWI")


def test_chaos_unlabelled_test_sets(chaos_src, tmp_path):
    test_series = tmp_path / "CHAOS_Test_Sets" / "Test_Sets" / "MR" / "11" / "T2SPIR" / "DICOM_anon"
    shutil.copytree(chaos_src / "Train_Sets" / "MR" / "1" / "T2SPIR" / "DICOM_anon", test_series)
    assert json.loads((convert_chaos(chaos_src, tmp_path / "a", modalities=["MR"])["chaos-mr"]
                       / "dataset.json").read_text())["numTest"] == 1  # skipped by default
    sites = convert_chaos(chaos_src, tmp_path / "b", modalities=["MR"], include_unlabelled=True)
    spec = _assert_valid_site(sites["chaos-mr"], "MR")
    assert [e for e in spec["test"] if "label" not in e] == [{"id": "chaos_mr_test_11", "image": "images/chaos_mr_test_11.nii.gz"}]


def test_chaos_errors(chaos_src, tmp_path):
    ground = chaos_src / "Train_Sets" / "CT" / "2" / "Ground"
    (ground / "liver_GT_003.png").unlink()
    with pytest.raises(DataError, match="3 PNG masks but the DICOM series") as err:
        convert_chaos(chaos_src, tmp_path / "o", modalities=("CT",))
    assert str(ground) in str(err.value)
    for f in ground.iterdir():
        f.unlink()
    ground.rmdir()
    with pytest.raises(DataError, match="no label") as err:
        convert_chaos(chaos_src, tmp_path / "o", modalities=("CT",))
    assert str(ground) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        convert_chaos(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DataError, match="unknown layout"):
        convert_chaos(chaos_src / "Train_Sets" / "CT", tmp_path / "o")


# ---------------------------------------------------------------------------------------------
# TotalSegmentator
# ---------------------------------------------------------------------------------------------
def _write_meta(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["image_id", "age", "gender", "institute", "study_type", "split"])
        for image_id, split in rows:
            w.writerow([image_id, 60, "m", "A", "ct abdomen", split])


TS_AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


@pytest.fixture
def totalseg_ct_structures(tmp_path) -> Path:
    """CT data set layout: sXXXX/ct.nii.gz + sXXXX/segmentations/<structure>.nii.gz + meta.csv."""
    src = tmp_path / "Totalsegmentator_dataset_v201"
    subjects = ["s0000", "s0001", "s0002", "s0003"]
    for i, s in enumerate(subjects):
        _nifti(src / s / "ct.nii.gz", np.full((8, 8, 4), -100 + i, np.int16), TS_AFFINE)
        for name, (x, y, z) in {"liver": (1, 1, 1), "spleen": (6, 6, 2), "kidney_left": (2, 6, 3),
                                "vertebrae_L1": (4, 4, 0)}.items():
            m = np.zeros((8, 8, 4), np.uint8)
            m[x, y, z] = 1
            _nifti(src / s / "segmentations" / f"{name}.nii.gz", m, TS_AFFINE)
    _write_meta(src / "meta.csv", [("s0000", "train"), ("s0001", "val"), ("s0002", "test"), ("s0003", "train"),
                                   ("s9999", "train")])
    return src


def test_totalseg_per_structure_masks_are_merged(totalseg_ct_structures, tmp_path):
    sites = convert_totalseg(totalseg_ct_structures, tmp_path / "sites")
    assert set(sites) == {"totalseg-ct"}
    spec = _assert_valid_site(sites["totalseg-ct"], "CT")
    # default structures, in their order, limited to the masks that exist
    assert spec["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left"}
    assert spec["background_label_ids"] == []
    # meta.csv split
    assert [[Path(e["image"]).parent.name for e in spec[s]] for s in SPLITS] == \
        [["s0000", "s0003"], ["s0001"], ["s0002"]]
    _, site = _load_site(sites["totalseg-ct"])
    case = site.split("validation")[0]
    assert case.label.parent == sites["totalseg-ct"] / "labels"
    lab = load_volume(case.label, role="label")[0].numpy()
    assert lab[1, 1, 1] == 1 and lab[6, 6, 2] == 2 and lab[2, 6, 3] == 3
    assert lab[4, 4, 0] == 0 and int((lab > 0).sum()) == 3  # vertebrae not requested
    # header geometry is copied bit for bit
    assert np.array_equal(nib.load(str(case.label)).affine, nib.load(str(case.image)).affine)
    np.testing.assert_allclose(volume_affine(load_volume(case.label)), volume_affine(load_volume(case.image)))


def test_totalseg_explicit_structures_and_errors(totalseg_ct_structures, tmp_path):
    sites = convert_totalseg(totalseg_ct_structures, tmp_path / "a", structures=["spleen", "vertebrae_L1"], link=True)
    spec = json.loads((sites["totalseg-ct"] / "dataset.json").read_text())
    assert spec["labels"] == {"0": "background", "1": "spleen", "2": "vertebrae_L1"}
    assert (sites["totalseg-ct"] / spec["training"][0]["image"]).is_symlink()
    with pytest.raises(DataError, match="heart"):
        convert_totalseg(totalseg_ct_structures, tmp_path / "b", structures=["liver", "heart"])
    (totalseg_ct_structures / "s0002" / "segmentations" / "spleen.nii.gz").unlink()
    with pytest.raises(DataError, match="missing") as err:
        convert_totalseg(totalseg_ct_structures, tmp_path / "c")
    assert "s0002" in str(err.value)
    # an image without any label
    _nifti(totalseg_ct_structures / "s0009" / "ct.nii.gz", np.zeros((8, 8, 4), np.int16))
    with pytest.raises(DataError, match="no label") as err:
        convert_totalseg(totalseg_ct_structures, tmp_path / "d")
    assert str(totalseg_ct_structures / "s0009" / "ct.nii.gz") in str(err.value)
    with pytest.raises(DataError, match="unknown layout"):
        convert_totalseg(totalseg_ct_structures, tmp_path / "e", modality="MR")


def test_totalseg_multilabel_masks_kept_as_they_are(tmp_path):
    """MR data set naming (mri.nii.gz) with multilabel masks: seg.nii.gz, and <subject>.nii.gz beside the folder."""
    src = tmp_path / "ts_mr"
    for i in range(4):
        s = f"s{i:04d}"
        _nifti(src / s / "mri.nii.gz", np.full((6, 7, 5), 200 + i, np.int16), TS_AFFINE)
        seg = np.zeros((6, 7, 5), np.uint8)
        seg[1, 1, 1], seg[2, 2, 2], seg[3, 3, 3], seg[4, 4, 4] = 5, 22, 19, 1  # liver, heart, vertebrae, spleen
        _nifti(src / s / "seg.nii.gz" if i < 3 else src / f"{s}.nii.gz", seg, TS_AFFINE)
    sites = convert_totalseg(src, tmp_path / "sites", seed=3)
    spec = _assert_valid_site(sites["totalseg-mr"], "MR")
    assert spec["labels"] == {"0": "background", "1": "spleen", "2": "kidney_right", "3": "kidney_left",
                              "4": "gallbladder", "5": "liver", "6": "stomach", "7": "pancreas", "22": "heart"}
    assert spec["background_label_ids"] == "unlisted"
    entries = [e for s in SPLITS for e in spec[s]]
    assert sorted(e["label"].rsplit("/", 1)[-1] for e in entries) == \
        ["s0003.nii.gz", "seg.nii.gz", "seg.nii.gz", "seg.nii.gz"]
    # the job's mapper turns id 19 (vertebrae) into background, keeps liver / heart
    _, site = _load_site(sites["totalseg-mr"])
    case = site.split("training")[0]
    classes = site.label_mapper(["liver", "heart"])(load_volume(case.label, role="label")[0].numpy())
    assert classes[1, 1, 1] == 1 and classes[2, 2, 2] == 2 and classes[3, 3, 3] == 0 and classes[4, 4, 4] == 0
    # structures outside the id map are refused
    with pytest.raises(ValueError, match="label map"):
        convert_totalseg(src, tmp_path / "x", structures=["liver", "brain_stem_x"])
    # a mask on another grid is refused, naming the file
    _nifti(src / "s0001" / "seg.nii.gz", np.zeros((6, 7, 4), np.uint8), TS_AFFINE)
    with pytest.raises(DataError, match="differs") as err:
        convert_totalseg(src, tmp_path / "y")
    assert str(src / "s0001" / "seg.nii.gz") in str(err.value)


def test_totalseg_real_example_scans(tmp_path):
    """The real CT (RAS) and MR (LPS) example scans of ../shared/data: one subject each."""
    if not SHARED_TOTALSEG.is_dir():
        pytest.fail(f"{SHARED_TOTALSEG} is missing: the real data must sit beside the project as ../shared")
    sites = convert_totalseg(SHARED_TOTALSEG, tmp_path / "sites", structures=["liver", "spleen"])
    assert set(sites) == {"totalseg-ct", "totalseg-mr"}
    for name, modality, liver_voxels in (("totalseg-ct", "CT", 41692), ("totalseg-mr", "MR", 18480)):
        spec = _assert_valid_site(sites[name], modality, all_splits=False)
        assert spec["labels"] == {"0": "background", "1": "spleen", "5": "liver"}
        assert os.path.isabs(spec["training"][0]["image"]) or spec["training"][0]["image"].startswith("../")
        _, site = _load_site(sites[name])
        mapped = site.label_mapper(["liver"])(load_volume(site.split("training")[0].label, role="label")[0].numpy())
        assert int((mapped == 1).sum()) == liver_voxels
