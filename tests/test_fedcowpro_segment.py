"""`segment --support` (one-shot from one labelled volume) writes the mask in the input's own grid
and affine for an LPS and an RAS NIfTI and for a DICOM series; `superpixels` renders a PNG; a
supervised model is refused with --support. A raw-intensity checkpoint (no training) stands in for
a trained encoder: the geometry is what is tested."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fedxmodal.cli import main
from fedxmodal.data.io import load_volume
from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.engine.episodic import EpisodicConfig
from fedxmodal.methods import build_trainer

SHAPE = (40, 40, 10)  # voxels of 3 x 3 x 5 mm, RAS array order


def abdomen(seed: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like volume (RAS voxel order): a body, a bright 'liver' (label 1), a dimmer 'spleen' (2)."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:SHAPE[0], :SHAPE[1]]
    img = rng.normal(50, 5, SHAPE).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    body = ((x - 20) / 17) ** 2 + ((y - 20) / 14) ** 2 < 1
    liver = ((x - 12 - shift) / 6) ** 2 + ((y - 19) / 7) ** 2 < 1
    spleen = ((x - 29) / 3.5) ** 2 + ((y - 22 - shift) / 4) ** 2 < 1
    for z in range(1, SHAPE[2] - 1):
        img[body, z] = 300 + rng.normal(0, 5, int(body.sum()))
        img[liver, z] = 800 + rng.normal(0, 5, int(liver.sum()))
        img[spleen, z] = 500 + rng.normal(0, 5, int(spleen.sum()))
        lab[liver, z], lab[spleen, z] = 1, 2
    return img, lab


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def oneshot_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("oneshot")
    trainer = build_trainer(("liver", "spleen"), network={"kind": "intensity", "downsample": 2},
                            train=EpisodicConfig(method="fedcowpro"), preprocess=PreprocessConfig(spacing=3.0, size=64),
                            device="cpu")
    model = trainer.save(root / "raw_intensity.pt")
    ras = np.diag([3.0, 3.0, 5.0, 1.0])
    s_img, s_lab = abdomen(1)
    nib.save(nib.Nifti1Image(s_img, ras), str(root / "support.nii.gz"))
    nib.save(nib.Nifti1Image(s_lab, ras), str(root / "support_seg.nii.gz"))
    q_img, q_lab = abdomen(2, shift=1)
    lps = np.diag([-3.0, -3.0, 5.0, 1.0])
    lps[:3, 3] = [3.0 * (SHAPE[0] - 1), 3.0 * (SHAPE[1] - 1), 0.0]  # same world positions, axes flipped
    nib.save(nib.Nifti1Image(q_img, ras), str(root / "query_ras.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(q_img[::-1, ::-1]), lps), str(root / "query_lps.nii.gz"))
    return root, model, q_lab


@pytest.mark.parametrize("orientation", ["ras", "lps"])
def test_segment_with_support_keeps_the_inputs_geometry(oneshot_files, orientation, tmp_path):
    root, model, q_lab = oneshot_files
    image = root / f"query_{orientation}.nii.gz"
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", str(image), "--model", str(model), "--support", str(root / "support.nii.gz"),
                 str(root / "support_seg.nii.gz"), "--structure", "liver", "--support-label-id", "1",
                 "--modality", "MR", "--support-modality", "MR", "--out", str(out),
                 "--overlay", str(tmp_path / "o.png")]) == 0
    mask, img = nib.load(str(out)), nib.load(str(image))
    assert mask.shape == img.shape and np.allclose(mask.affine, img.affine)
    truth = q_lab == 1 if orientation == "ras" else (q_lab == 1)[::-1, ::-1]
    pred = np.asarray(mask.dataobj) == 1
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert dice(pred, truth) > 0.7, dice(pred, truth)
    assert (tmp_path / "o.png").stat().st_size > 1000


def _write_dicom_series(folder, volume: np.ndarray, spacing=(3.0, 3.0, 5.0)) -> None:
    """volume (X, Y, Z) -> an axial MR series, one file per z (DICOM rows along y, columns along x)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "p", study, series, "MR"
        pixels = volume[:, :, k].T.astype(np.int16)  # rows run along y, columns along x
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, spacing[2] * k], [1.0, 0, 0, 0, 1.0, 0]
        ds.InstanceNumber = k + 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(folder / f"{k:03d}.dcm"), enforce_file_format=True)


def test_segment_with_support_takes_a_dicom_series(oneshot_files, tmp_path):
    root, model, _ = oneshot_files
    q_img, _ = abdomen(3, shift=-1)
    series = tmp_path / "dicom"
    _write_dicom_series(series, q_img)
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", str(series), "--model", str(model), "--support", str(root / "support.nii.gz"),
                 str(root / "support_seg.nii.gz"), "--structure", "liver", "--support-label-id", "1",
                 "--support-modality", "MR", "--out", str(out)]) == 0  # modality from the DICOM tag
    loaded = load_volume(series)
    mask = nib.load(str(out))
    assert mask.shape == tuple(loaded.shape[1:]) and np.allclose(mask.affine, np.asarray(loaded.affine), atol=1e-4)
    truth = loaded[0].numpy() > 650  # the bright liver, wherever the reader put it
    assert dice(np.asarray(mask.dataobj) == 1, truth) > 0.7


def test_support_errors_are_clear(oneshot_files, tmp_path, capsys, good_site):
    root, model, _ = oneshot_files
    args = ["segment", str(root / "query_ras.nii.gz"), "--model", str(model), "--support",
            str(root / "support.nii.gz"), str(root / "support_seg.nii.gz"), "--structure", "liver",
            "--modality", "MR", "--support-modality", "MR", "--out", str(tmp_path / "m.nii.gz")]
    assert main(args) == 2
    assert "holds labels [1, 2]; pass --support-label-id" in capsys.readouterr().err
    assert main(args + ["--support-label-id", "7"]) == 2
    assert "no voxel has label 7" in capsys.readouterr().err


def test_superpixels_command_writes_a_png(good_site, tmp_path):
    out = tmp_path / "sp.png"
    assert main(["superpixels", str(good_site), "--out", str(out), "--n", "2", "--size", "64", "--quiet"]) == 0
    assert out.stat().st_size > 1000
    assert any((good_site / ".fedxmodal_cache" / "superpixels").rglob("*.npz"))
