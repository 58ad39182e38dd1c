"""Pictures in radiological convention: checked on the rendered pixels, for volumes stored RAS and
LPS, with a marker at a known side of the patient."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fedxmodal.apps.overlay import render_overlay, structure_color
from fedxmodal.apps.previews import load_middle_axial_slice

SPACING = (2.0, 2.0, 3.0)


def _phantom(side: str):
    """(image, mask, affine) in RAS order: a body, and a marker (class 1) at the patient's ``side``
    ("right" or "left"), anterior and superior. Voxel i runs to the patient's right (RAS)."""
    img = np.full((30, 30, 12), -900.0, np.float32)
    img[3:27, 3:27, 1:11] = 40.0
    mask = np.zeros(img.shape, np.uint8)
    xs = slice(19, 26) if side == "right" else slice(4, 11)
    mask[xs, 19:26, 7:11] = 1
    img[mask == 1] = 150.0
    return img, mask, np.diag([*SPACING, 1.0])


def _as_lps(img, mask, affine):
    """The same anatomy stored with x and y flipped and an LPS-like affine (axis codes L, P, S)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
    aff = affine @ flip
    assert nib.aff2axcodes(aff) == ("L", "P", "S")
    return img[::-1, ::-1].copy(), mask[::-1, ::-1].copy(), aff


def _marker_position(fig) -> dict[str, tuple[float, float]]:
    """Per panel (view name): the marker colour's centroid as fractions of the panel's width
    (0 = viewer's left) and height (0 = top), measured on the rendered RGBA buffer."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = buf.shape[0]
    r, g, b = (round(255 * v) for v in structure_color(1))  # tab10 blue: b - r > 0
    assert b - r > 100
    out = {}
    for ax in fig.axes:
        if not hasattr(ax, "view"):
            continue
        bb = ax.get_window_extent()
        crop = buf[height - int(bb.y1):height - int(bb.y0), int(bb.x0):int(bb.x1)]
        ys, xs = np.nonzero(crop[..., 2] - crop[..., 0] > 40)
        assert xs.size > 20, f"marker not visible in the {ax.view} panel"
        out[ax.view] = (xs.mean() / crop.shape[1], ys.mean() / crop.shape[0])
    return out


@pytest.mark.parametrize("stored", ["RAS", "LPS"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_patient_right_is_on_the_viewers_left_anterior_and_superior_up(stored, side):
    img, mask, affine = _phantom(side)
    if stored == "LPS":
        img, mask, affine = _as_lps(img, mask, affine)
    fig = render_overlay(img, mask, affine, ["liver"], modality="CT", axial=1, coronal=1)
    pos = _marker_position(fig)
    assert set(pos) == {"axial", "coronal"}
    for view, (fx, fy) in pos.items():
        assert (fx < 0.5) == (side == "right"), f"{view}: marker at x={fx:.2f} of the panel for the patient's {side}"
        assert fy < 0.5, f"{view}: the anterior / superior marker is drawn at y={fy:.2f} (0 = top)"
    letters = {ax.view: sorted(t.get_text() for t in ax.texts) for ax in fig.axes if hasattr(ax, "view")}
    assert letters == {"axial": ["A", "L", "P", "R"], "coronal": ["I", "L", "R", "S"]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1 liver"]


def test_reference_is_in_the_legend_and_explicit_planes_are_used():
    img, mask, affine = _phantom("right")
    fig = render_overlay(img, mask, affine, {1: "liver", 2: "spleen"}, reference=mask, axial=[9, 2], coronal=[22])
    panels = [(ax.view, ax.index) for ax in fig.axes if hasattr(ax, "view")]
    assert panels == [("axial", 9), ("axial", 2), ("coronal", 22)]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1 liver", "2 spleen", "reference (dashed)"]


@pytest.mark.parametrize("stored", ["RAS", "LPS"])
def test_gin_preview_slice_is_radiological(tmp_path, stored):
    img, mask, affine = _phantom("right")
    mask[:, :, :] = mask.max(axis=2, keepdims=True)  # the marker through every slice
    img[mask == 1] = 250.0
    if stored == "LPS":
        img, mask, affine = _as_lps(img, mask, affine)
    nib.save(nib.Nifti1Image(img, affine), str(tmp_path / "v.nii.gz"))
    sl = load_middle_axial_slice(str(tmp_path / "v.nii.gz"))
    ys, xs = np.nonzero(sl > sl.max() - 1e-3)
    assert sl.shape == (30, 30) and xs.size == 49
    assert xs.mean() < 15 and ys.mean() < 15  # patient's right on the image's left, anterior at the top
