"""DICOM series input: good series load in the right geometry, bad folders are refused with the
folder and the problem named (never a silently wrong volume)."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_series import AXIAL_LPS, ras_volume_as_series, write_series

from fedxmodal.data.errors import DataError
from fedxmodal.data.io import check_dicom_series, load_volume


def _frames(n=6, rows=12, cols=10, seed=0):
    return np.random.default_rng(seed).integers(-200, 300, (n, rows, cols)).astype(np.float32)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_series_loads_with_the_world_geometry_of_its_pixels(tmp_path, orientation):
    """Stored with columns to the left (LPS) or to the right (RAS): the volume's RAS affine puts
    every voxel where the DICOM geometry puts that pixel."""
    vol = np.random.default_rng(1).integers(-100, 200, (10, 12, 5)).astype(np.float32)
    ras_volume_as_series(tmp_path / "s", vol, spacing=(2.0, 2.0, 4.0), orientation=orientation)
    loaded = load_volume(tmp_path / "s")
    affine = np.asarray(loaded.affine, dtype=np.float64)
    data = loaded[0].numpy()
    # Map every loaded voxel to RAS world and back to the source array's grid diag(2, 2, 4).
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in data.shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    src = np.round(world / np.array([2.0, 2.0, 4.0])).astype(int)
    assert np.allclose(world / np.array([2.0, 2.0, 4.0]), src, atol=1e-4)
    assert np.array_equal(data.reshape(-1), vol[src[:, 0], src[:, 1], src[:, 2]])


def test_descending_slices_and_shuffled_file_names_are_fine(tmp_path):
    frames = _frames()
    n = len(frames)
    write_series(tmp_path / "s", frames, step=-3.0, names=[f"x{(k * 7) % n}.dcm" for k in range(n)])
    headers = check_dicom_series(tmp_path / "s")
    z = [float(ds.ImagePositionPatient[2]) for ds in headers]
    assert z == sorted(z) and len(headers) == n


def test_mixed_series_in_one_folder(tmp_path):
    write_series(tmp_path / "s", _frames(4), description="T1 axial", names=[f"a{k}.dcm" for k in range(4)])
    write_series(tmp_path / "s", _frames(3), description="T2 axial", names=[f"b{k}.dcm" for k in range(3)])
    with pytest.raises(DataError, match="mixed series in one folder: 2 series") as err:
        load_volume(tmp_path / "s")
    assert err.value.where == str(tmp_path / "s")
    assert "'T1 axial', 4 files" in str(err.value) and "'T2 axial', 3 files" in str(err.value)


def test_missing_slices(tmp_path):
    frames = _frames(8)
    paths = write_series(tmp_path / "s", frames, step=2.5)
    paths[3].unlink()
    paths[4].unlink()
    with pytest.raises(DataError, match=r"missing slices: 2 slice\(s\) missing.*step is 2.50 mm but 7.50 mm "
                                        r"between IM0002.dcm and IM0005.dcm") as err:
        load_volume(tmp_path / "s")
    assert err.value.where == str(tmp_path / "s")


def test_inconsistent_spacing(tmp_path):
    z = [0.0, 2.0, 4.0, 7.0, 9.0, 11.0]
    write_series(tmp_path / "s", _frames(6), positions=[(0.0, 0.0, v) for v in z])
    with pytest.raises(DataError, match=r"inconsistent slice spacing: steps between neighbouring slices range "
                                        r"from 2.00 to 3.00 mm") as err:
        load_volume(tmp_path / "s")
    assert err.value.where == str(tmp_path / "s")


@pytest.mark.parametrize("iop, axis", [((0, 1, 0, 0, 0, -1), "left-right"), ((1, 0, 0, 0, 0, -1), "anterior-posterior")])
def test_non_axial_stacks(tmp_path, iop, axis):
    write_series(tmp_path / "s", _frames(5), iop=iop)
    with pytest.raises(DataError, match=f"non-axial stack: .* patient's {axis}") as err:
        load_volume(tmp_path / "s")
    assert err.value.where == str(tmp_path / "s")


def test_instance_numbers_out_of_position_order(tmp_path):
    write_series(tmp_path / "s", _frames(5), instance_numbers=[1, 2, 4, 3, 5])
    with pytest.raises(DataError, match="InstanceNumber order does not follow the slice positions"):
        load_volume(tmp_path / "s")


def test_duplicate_position_sheared_stack_and_stray_files(tmp_path):
    write_series(tmp_path / "dup", _frames(4), positions=[(0.0, 0.0, v) for v in (0.0, 2.0, 2.0, 4.0)])
    with pytest.raises(DataError, match="two slices at the same position"):
        check_dicom_series(tmp_path / "dup")
    tilt = [(0.0, 0.5 * k, 2.0 * k) for k in range(5)]  # y shifts with z: a 14 degree gantry tilt
    write_series(tmp_path / "tilt", _frames(5), positions=tilt, iop=AXIAL_LPS)
    with pytest.raises(DataError, match=r"not stacked along their normal \(sheared by 14.0 degrees"):
        check_dicom_series(tmp_path / "tilt")
    write_series(tmp_path / "stray", _frames(4))
    (tmp_path / "stray" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not a readable DICOM file") as err:
        check_dicom_series(tmp_path / "stray")
    assert "notes.txt" in err.value.where
    write_series(tmp_path / "size", _frames(3), series_uid="1.2.826.0.1.3680043.8.498.1")
    write_series(tmp_path / "size", _frames(1, rows=14), names=["IM9.dcm"], series_uid="1.2.826.0.1.3680043.8.498.1",
                 origin=(0.0, 0.0, 12.0))
    with pytest.raises(DataError, match="Rows differs between slices: 12 in IM0000.dcm, 14 in IM9.dcm"):
        check_dicom_series(tmp_path / "size")
