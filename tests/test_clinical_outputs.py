"""Clinical outputs: DICOM SEG for PACS (read back with highdicom and pydicom and compared with the
NIfTI mask voxel by voxel), refusals of bad DICOM input, ``evaluate``'s argument order and overlays,
and the model as a MONAI bundle run by ``python -m monai.bundle`` in an environment without fedxmodal."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import blob_case, write_site
from dicom_series import ras_frames, ras_volume_as_series, write_series
from pydicom.sr.codedict import codes

from fedxmodal.engine.base import SliceData
from fedxmodal import __version__
from fedxmodal.cli import main
from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.engine.base import seed_everything
from fedxmodal.engine.supervised import TrainConfig
from fedxmodal.methods import build_trainer
from fedxmodal.networks.unet import UNetConfig

SMALL = PreprocessConfig(size=64)
TINY_NET = UNetConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
STRUCTURES = ("liver", "spleen")


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A tiny U-Net trained for a few seconds on blob volumes (liver box, spleen box), saved."""
    root = tmp_path_factory.mktemp("model")
    site = write_site(root / "s", {s: [blob_case(i) for i in range(2)] for s in ("training", "validation", "test")})
    images, labels = SiteSlices(site, STRUCTURES, SMALL, progress=False).slices("training", foreground_only=False)
    seed_everything(0)
    engine = build_trainer(STRUCTURES, network=TINY_NET, preprocess=SMALL,
                           train=TrainConfig(method="none", batch_size=4, lr=3e-3, seed=0, spatial_augment=False,
                                             amp=False))  # float32: thresholds must not depend on the CPU
    engine.fit(SliceData(images, labels), epochs=10)
    return engine.save(root / "model.pt")


def _sources(series_dir: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(f) for f in series_dir.iterdir()), key=lambda ds: int(ds.InstanceNumber))


def _nifti_at_dicom_pixels(nifti_path: Path, sources) -> np.ndarray:
    """The NIfTI mask sampled at every DICOM pixel centre: (n, rows, cols), by the DICOM geometry
    (pixel (r, c) at IPP + c*dc*row_dir + r*dr*col_dir, LPS) and the NIfTI affine (RAS) only."""
    img = nib.load(str(nifti_path))
    data, inv = np.asarray(img.dataobj), np.linalg.inv(img.affine)
    out = []
    for ds in sources:
        iop = np.asarray(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        lps = np.asarray(ds.ImagePositionPatient, float) + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.round(ijk).astype(int)
        assert np.allclose(ijk, idx, atol=1e-3), "DICOM pixel centres fall between NIfTI voxels"
        out.append(data[idx[..., 0], idx[..., 1], idx[..., 2]])
    return np.stack(out)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_segment_dicom_series_writes_nifti_and_dicom_seg_that_agree(tmp_path, trained_model, orientation):
    img, lab = blob_case(9)
    series = tmp_path / "series"
    ras_volume_as_series(series, img, orientation=orientation)
    rc = main(["segment", str(series), "--model", str(trained_model), "--out", str(tmp_path / "mask.nii.gz")])
    assert rc == 0
    sources = _sources(series)
    seg = hd.seg.segread(tmp_path / "mask.dcm")

    # one segment per structure: label, coded anatomy, algorithm name and version
    assert seg.number_of_segments == 2
    for number, name, code in ((1, "liver", codes.SCT.Liver), (2, "spleen", codes.SCT.Spleen)):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == name
        assert desc.segmented_property_type == code
        assert desc.segmented_property_category == codes.SCT.AnatomicalStructure
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert desc.algorithm_identification[0].AlgorithmName == "fedxmodal none 2D U-Net"
        assert desc.algorithm_identification[0].AlgorithmVersion == __version__
    # references the source series and its instances, same patient / study / frame of reference
    raw = pydicom.dcmread(tmp_path / "mask.dcm")
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert raw.StudyInstanceUID == sources[0].StudyInstanceUID and raw.PatientID == sources[0].PatientID
    assert raw.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in raw.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}

    # frames in the source's own geometry == the NIfTI mask, voxel by voxel
    frames = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    nifti = _nifti_at_dicom_pixels(tmp_path / "mask.nii.gz", sources)
    assert frames.shape == (len(sources), sources[0].Rows, sources[0].Columns)
    assert np.array_equal(frames, nifti)
    # and it is the blobs' segmentation (in the DICOM pixels the series was written from)
    truth = ras_frames(lab, orientation)
    for c in (1, 2):
        assert 2 * ((frames == c) & (truth == c)).sum() / ((frames == c).sum() + (truth == c).sum()) > 0.7


def test_out_dcm_writes_only_the_seg_and_needs_dicom_input(tmp_path, trained_model, capsys):
    img, _ = blob_case(9)
    ras_volume_as_series(tmp_path / "series", img)
    assert main(["segment", str(tmp_path / "series"), "--model", str(trained_model), "--out",
                 str(tmp_path / "out" / "seg.dcm")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seg.dcm"]
    assert hd.seg.segread(tmp_path / "out" / "seg.dcm").number_of_segments == 2
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 4.0, 1.0])), str(tmp_path / "in.nii.gz"))
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "in.nii.gz"), "--model", str(trained_model), "--out",
                 str(tmp_path / "x.dcm")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "x.dcm") in err and "needs a DICOM series as input" in err


@pytest.mark.parametrize("problem, expected", [
    ("missing", "missing slices"), ("mixed", "mixed series in one folder"),
    ("spacing", "inconsistent slice spacing"), ("sagittal", "non-axial stack")])
def test_bad_dicom_input_is_refused_by_segment(tmp_path, trained_model, capsys, problem, expected):
    frames = np.full((6, 16, 16), 40.0, np.float32)
    series = tmp_path / "series"
    if problem == "missing":
        write_series(series, frames)[2].unlink()
    elif problem == "mixed":
        write_series(series, frames, names=[f"a{k}.dcm" for k in range(6)])
        write_series(series, frames[:2], names=["b0.dcm", "b1.dcm"])
    elif problem == "spacing":
        write_series(series, frames, positions=[(0.0, 0.0, z) for z in (0, 4, 8, 13, 17, 21)])
    else:
        write_series(series, frames, iop=(0, 1, 0, 0, 0, -1))
    rc = main(["segment", str(series), "--model", str(trained_model), "--out", str(tmp_path / "mask.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{series}: {expected}" in err
    assert not (tmp_path / "mask.nii.gz").exists() and not (tmp_path / "mask.dcm").exists()


def test_structure_codes_are_snomed_ct():
    from fedxmodal.apps.dicom_seg import structure_code

    expected = {"liver": "10200004", "kidney_right": "9846003", "kidney_left": "18639004", "spleen": "78961009",
                "pancreas": "15776009", "gallbladder": "28231008", "heart": "80891009"}
    for name, value in expected.items():
        code = structure_code(name)
        assert (code.value, code.scheme_designator) == (value, "SCT")
    with pytest.raises(ValueError, match="no SNOMED CT code for structure 'aorta'"):
        structure_code("aorta")


def test_evaluate_takes_site_folders_before_or_after_model_and_writes_overlays(tmp_path, trained_model, capsys):
    site = write_site(tmp_path / "site1", {"test": [blob_case(7)]})
    # --model takes several values: the site folder after it used to be swallowed into --model
    assert main(["evaluate", "--model", str(trained_model), str(site), "--out", str(tmp_path / "ev1"),
                 "--overlays", str(tmp_path / "ov")]) == 0
    assert main(["evaluate", str(site), "--model", str(trained_model), "--out", str(tmp_path / "ev2")]) == 0
    a = (tmp_path / "ev1" / "evaluation.json").read_text()
    assert a == (tmp_path / "ev2" / "evaluation.json").read_text()
    pngs = list((tmp_path / "ov").glob("*.png"))
    assert [p.name for p in pngs] == ["site1_test_0.png"] and pngs[0].stat().st_size > 10_000
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained_model)]) == 2
    assert "no site folder to evaluate on (--model got " in capsys.readouterr().err
    assert main(["evaluate", "--model", str(trained_model), str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: not found (neither a model checkpoint nor a site folder)" in capsys.readouterr().err


# ---- MONAI bundle ----------------------------------------------------------------------------
def _monai_only_python(root: Path) -> Path:
    """A Python that sees this environment's packages (MONAI, torch, nibabel, ...) but not fedxmodal:
    a fresh venv whose site-packages lists ours in a .pth line. Lines add the folder only, the .pth
    files inside it (the editable fedxmodal install) are not run."""
    env = root / "monai-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([str(python), "-I", "-c", "import monai, torch, nibabel\ntry:\n    import fedxmodal\n"
                            "except ImportError:\n    print('no fedxmodal')"], cwd=root, capture_output=True, text=True)
    assert probe.stdout.strip() == "no fedxmodal", (probe.stdout, probe.stderr)
    return python


def test_export_bundle_runs_with_monai_alone_and_matches_segment(tmp_path, trained_model):
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--model", str(trained_model), "--out", str(bundle)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["fedxmodal"]["default_modality"] == "auto"
    readme = (bundle / "docs" / "README.md").read_text()
    assert "MONAI, PyTorch, nibabel and python-fire" in readme and "`auto` unless given" in readme
    assert meta["structures"] == ["liver", "spleen"]
    assert meta["label_ids"] == {"background": 0, "liver": 1, "spleen": 2}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver",
                                                                              "2": "spleen"}
    assert (bundle / "configs" / "inference.json").is_file() and (bundle / "models" / "model.pt").is_file()

    # inputs: CT stored RAS and LPS; an MR-like volume (no Hounsfield air) for the MR normalisation
    inputs = tmp_path / "in"
    inputs.mkdir()
    img, _ = blob_case(9)
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 4.0, 1.0])), str(inputs / "ct_ras.nii.gz"))
    lps = np.diag([-2.0, -2.0, 4.0, 1.0])
    lps[:2, 3] = [2.0 * (img.shape[0] - 1), 2.0 * (img.shape[1] - 1)]
    nib.save(nib.Nifti1Image(img[::-1, ::-1].copy(), lps), str(inputs / "ct_lps.nii.gz"))
    mr = np.clip(img + 900.0, 0, None) * np.random.default_rng(3).uniform(0.9, 1.1, img.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.diag([2.0, 2.0, 4.0, 1.0])), str(tmp_path / "mr.nii.gz"))

    python = _monai_only_python(tmp_path)
    # the CT volumes with --modality CT; the MR one without: the bundle's default, auto, guesses as segment does
    runs = [(str(inputs / "*.nii.gz"), ["--modality", "CT"]), (str(tmp_path / "mr.nii.gz"), [])]
    for image, modality in runs:
        proc = subprocess.run([str(python), "-I", "-m", "monai.bundle", "run", "--config_file",
                               str(bundle / "configs" / "inference.json"), "--image", image, *modality,
                               "--output_dir", str(tmp_path / "bundle_out")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for name, modality in (("ct_ras", ["--modality", "CT"]), ("ct_lps", ["--modality", "CT"]), ("mr", [])):
        src = inputs / f"{name}.nii.gz" if name != "mr" else tmp_path / "mr.nii.gz"
        assert main(["segment", str(src), "--model", str(trained_model), *modality, "--out",
                     str(tmp_path / f"{name}_segment.nii.gz")]) == 0
        ours, theirs = nib.load(str(tmp_path / f"{name}_segment.nii.gz")), nib.load(
            str(tmp_path / "bundle_out" / f"{name}_seg.nii.gz"))
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert a.shape == b.shape and np.allclose(ours.affine, theirs.affine, atol=1e-5)
        assert len(np.unique(a)) == 3, "the comparison needs a mask with every class"
        # Same transforms, same weights, same arithmetic: identical, voxel for voxel (with MONAI's
        # NormalizeIntensityd, population instead of sample std, 1 of 9600 MR voxels flipped).
        assert np.array_equal(a, b), f"{name}: {(a != b).sum()} of {a.size} voxels differ"


def test_export_bundle_refuses_multi_branch_networks(tmp_path, capsys):
    engine = build_trainer(STRUCTURES, network=UNetConfig(channels=(8, 16, 32), strides=(2, 2), norm_branches=2),
                           preprocess=SMALL, train=TrainConfig(method="dsbn"))
    ckpt = engine.save(tmp_path / "dsbn.pt")
    assert main(["export-bundle", "--model", str(ckpt), "--out", str(tmp_path / "b")]) == 2
    assert "2 normalisation branches (method 'dsbn')" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_export_bundle_of_an_nvflare_global_model_with_its_job(tmp_path):
    """``--job``: structures, network and preprocessing come from the job; the bundle's network_def,
    parsed by MONAI's ConfigParser, takes the exported weights."""
    import torch
    from monai.bundle import ConfigParser

    from fedxmodal.networks.unet import SegmentationUNet

    job = Path(__file__).resolve().parents[1] / "jobs" / "fedgin"
    torch.save({"model": SegmentationUNet(6, init_seed=0).state_dict()}, tmp_path / "FL_global_model.pt")
    assert main(["export-bundle", "--model", str(tmp_path / "FL_global_model.pt"), "--job", str(job),
                 "--out", str(tmp_path / "b"), "--modality", "MR"]) == 0
    meta = json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())
    assert meta["structures"] == ["liver", "kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder"]
    assert meta["label_ids"]["gallbladder"] == 6 and meta["fedxmodal"]["default_modality"] == "MR"
    parser = ConfigParser()
    parser.read_config(str(tmp_path / "b" / "configs" / "inference.json"))
    assert parser["modality"] == "MR" and parser["inferer"]["roi_size"] == [128, 128]
    net = parser.get_parsed_content("network_def")
    state = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    assert net.load_state_dict(state).missing_keys == []
