"""Every picture kind in radiological view: a bright marker on the patient's right
(and anterior) is drawn on the viewer's left (and at the top), measured on the rendered pixels;
the orientation letters are drawn; structures have a colour key; thin volumes keep a readable
coronal panel; overlay file names are safe; the learning curve marks the best model's round.

The figures are caught as they are saved (``Figure.savefig`` wrapped), so each test drives the
same function the commands call."""

from __future__ import annotations

import json

import matplotlib
import nibabel as nib
import numpy as np
import pytest
import torch

from fedxmodal.visualize import safe_filename

matplotlib.use("Agg")


@pytest.fixture
def saved(monkeypatch):
    """The figures saved during the test, in order."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def _white_centroid(fig, ax, box=None) -> tuple[float, float]:
    """Centroid of the white (marker) pixels of a panel's image (``box``: one mosaic tile in data
    coordinates), as fractions of its width (0 = viewer's left) and height (0 = top)."""
    if not hasattr(fig.canvas, "buffer_rgba"):  # a figure closed after saving: draw it again with Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = buf.shape[0]
    if box is None:
        x0, y0, x1, y1 = ax.images[0].get_window_extent().extents
    else:
        (x0, y1), (x1, y0) = ax.transData.transform([(box[0], box[2]), (box[1], box[3])])
    crop = buf[height - int(round(y1)):height - int(round(y0)), int(round(x0)):int(round(x1))]
    ys, xs = np.nonzero(crop.min(axis=-1) > 235)
    assert xs.size > 10, "marker not visible"
    return xs.mean() / crop.shape[1], ys.mean() / crop.shape[0]


def _letters(ax) -> list[str]:
    return sorted(t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("orientation-"))


def _panels(fig):
    return [ax for ax in fig.axes if hasattr(ax, "view")]


def _ras_slices(n=3, size=32):
    """Preprocessed axial slices (N, 1, X, Y) on the RAS grid: a grey body and a white marker at
    the patient's right (high x) and anterior (high y)."""
    x = torch.full((n, 1, size, size), -0.6)
    x[:, :, 4:28, 4:28] = 0.0
    x[:, :, 22:27, 20:26] = 1.0
    return x


def _check_right_anterior(fig, ax, box=None):
    fx, fy = _white_centroid(fig, ax, box)
    assert fx < 0.5, f"the patient's right is drawn at x={fx:.2f} (0 = the viewer's left)"
    assert fy < 0.5, f"anterior is drawn at y={fy:.2f} (0 = top)"


def test_superpixel_preview(saved, tmp_path):
    from fedxmodal.methods.fedcowpro.superpixels import render_superpixel_preview

    images = _ras_slices()
    sps = np.zeros((3, 32, 32), np.int32)
    sps[:, 4:28, 4:16], sps[:, 4:28, 16:28] = 1, 2
    render_superpixel_preview(images, sps, tmp_path / "sp.png", n_slices=2, title="site (CT) training")
    fig = saved[-1]
    panels = _panels(fig)
    assert len(panels) == 2
    for ax in panels:
        _check_right_anterior(fig, ax)
        assert _letters(ax) == ["A", "L", "P", "R"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["superpixel boundary (pseudo-label)"]


def test_factory_sample_grid(saved, tmp_path):
    from fedxmodal.methods.factory.pictures import save_rows

    save_rows([("site A", _ras_slices(4)), ("site B", _ras_slices(2))], tmp_path / "grid.png", n_cols=4)
    fig = saved[-1]
    panels = _panels(fig)
    assert len(panels) == 2
    for ax in panels:
        _check_right_anterior(fig, ax, box=(-0.5, 31.5, -0.5, 31.5))  # the first tile, where the letters are
        assert _letters(ax) == ["A", "L", "P", "R"]


def _site_with_marker(root, name, modality="CT"):
    """A site whose training case has its labelled structure and a bright marker on the patient's
    right, anterior (stored LPS: the picture must not depend on the voxel order)."""
    img = np.full((30, 30, 6), -900.0 if modality == "CT" else 0.0, np.float32)
    img[3:27, 3:27] = 40.0 if modality == "CT" else 300.0
    lab = np.zeros(img.shape, np.uint8)
    lab[5:12, 8:20, 1:5] = 1  # the liver box, patient's left (low RAS x)
    img[lab == 1] = 80.0 if modality == "CT" else 500.0
    img[20:26, 19:26, :] = 2000.0  # the marker: patient's right (high x), anterior (high y)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [29, 29]
    affine = np.diag([2.0, 2.0, 4.0, 1.0]) @ flip
    (root / name / "images").mkdir(parents=True)
    (root / name / "labels").mkdir()
    nib.save(nib.Nifti1Image(img[::-1, ::-1].copy(), affine), str(root / name / "images" / "c.nii.gz"))
    nib.save(nib.Nifti1Image(lab[::-1, ::-1].copy(), affine), str(root / name / "labels" / "c.nii.gz"))
    ds = {"name": name, "modality": modality, "labels": {"0": "background", "1": "liver"},
          "training": [{"image": "images/c.nii.gz", "label": "labels/c.nii.gz"}]}
    (root / name / "dataset.json").write_text(json.dumps(ds))
    return root / name


def test_phantom_sites_preview_has_letters_and_a_colour_key(saved, tmp_path):
    from fedxmodal.apps.previews import save_sites_preview

    sites = [_site_with_marker(tmp_path, "ct-site"), _site_with_marker(tmp_path, "mr-site", "MR")]
    save_sites_preview(sites, tmp_path / "preview.png")
    fig = saved[-1]
    panels = _panels(fig)
    assert len(panels) == 2
    for ax in panels:
        _check_right_anterior(fig, ax)
        assert _letters(ax) == ["A", "L", "P", "R"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["liver"]


def test_phantom_case_preview(saved, tmp_path):
    from fedxmodal.apps.previews import save_preview_png

    save_preview_png(_site_with_marker(tmp_path, "ct-site"), tmp_path / "case.png")
    fig = saved[-1]
    views = {ax.view for ax in _panels(fig)}
    assert views == {"axial", "coronal"}
    for ax in _panels(fig):
        assert _letters(ax) == (["A", "L", "P", "R"] if ax.view == "axial" else ["I", "L", "R", "S"])
        if ax.view == "axial":
            _check_right_anterior(fig, ax)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1 liver"]


def test_gin_gallery_of_a_radiological_slice(saved, tmp_path):
    from fedxmodal.apps.previews import load_middle_axial_slice, save_gin_gallery

    site = _site_with_marker(tmp_path, "ct-site")
    sl = load_middle_axial_slice(str(site / "images" / "c.nii.gz"))
    save_gin_gallery(sl, str(tmp_path / "gin.png"), n=2, view="axial")
    fig = saved[-1]
    first = _panels(fig)[0]
    _check_right_anterior(fig, first)  # the input tile
    assert all(_letters(ax) == ["A", "L", "P", "R"] for ax in _panels(fig))


@pytest.mark.parametrize("n_slices", [4, 9, 20])
def test_thin_volumes_keep_a_readable_coronal_panel(saved, tmp_path, n_slices):
    """A 4-9 slice slab or a 20-slice MR: the coronal panel is at least half as high as wide (the
    slice axis stretched, and said so) and its S and I letters do not touch; R stays on the left."""
    from fedxmodal.apps.overlay import save_overlay

    img = np.full((128, 128, n_slices), 100.0, np.float32)
    img[10:118, 10:118] = 300.0
    img[90:110, 30:100] = 2000.0  # patient's right, through the coronal plane shown
    mask = np.zeros(img.shape, np.uint8)
    mask[20:50, 40:80, :] = 1
    save_overlay(img, mask, np.diag([1.5, 1.5, 5.0, 1.0]), tmp_path / "thin.png", ["liver"], modality="MR")
    fig = saved[-1]
    coronal = [ax for ax in _panels(fig) if ax.view == "coronal"][0]
    assert _white_centroid(fig, coronal)[0] < 0.5  # (draws the figure)
    box = coronal.images[0].get_window_extent()
    assert box.height >= 0.45 * box.width, (box.height, box.width)
    letters = {t.get_text(): t.get_window_extent() for t in coronal.texts}
    assert not letters["S"].overlaps(letters["I"])
    stretched = 128 * 1.5 / (n_slices * 5.0) * 0.5
    assert ("stretched" in coronal.get_title()) == (stretched > 1.0)


def test_one_shot_overlay_is_titled_and_windowed(saved, tmp_path):
    """The one-shot overlay names the image, the structure, the model and the support, and shows a
    CT in the soft-tissue window (not the percentile window)."""
    from fedxmodal.apps.overlay import save_overlay
    from fedxmodal.visualize import CT_DISPLAY_WINDOW

    img = np.full((30, 30, 6), -1000.0, np.float32)
    img[3:27, 3:27] = 40.0
    img[0, 0, 0] = 3000.0
    save_overlay(img, (img > 0).astype(np.uint8), np.eye(4), tmp_path / "o.png", ["liver"], modality="CT",
                 title="q.nii.gz (CT): liver, one-shot with m.pt from s.nii.gz (MR)")
    fig = saved[-1]
    assert fig._suptitle.get_text().startswith("q.nii.gz (CT): liver, one-shot with m.pt from s.nii.gz (MR)")
    assert _panels(fig)[0].images[0].get_clim() == CT_DISPLAY_WINDOW
    import inspect

    from fedxmodal.apps import support_segment

    src = inspect.getsource(support_segment.segment_with_support)
    assert "modality=modality, title=" in src  # what the command passes


def test_overlay_file_names_are_safe():
    assert safe_filename("ct-site_ct[89:98]") == "ct-site_ct_89-98"
    assert safe_filename("a b:c/d") == "a_b_c_d"


def test_learning_curve_marks_the_best_round(saved, tmp_path):
    from fedxmodal.apps.curves import best_round_of, plot_learning_curves

    scalars = {"ct-site": {"val/dice": [(0, 0.1), (1, 0.5), (2, 0.4)], "train/loss": [(0, 1.0), (1, 0.8), (2, 0.7)]},
               "mr-site": {"val/dice": [(0, 0.2), (1, 0.3), (2, 0.35)]}}
    assert best_round_of(scalars) == 1
    plot_learning_curves(scalars, tmp_path / "curve.png", best_round=2)
    ax = saved[-1].axes[0]
    lines = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [3, 3]]
    assert lines and "best model: round 3 (server's best model)" in [t.get_text() for t in ax.get_legend().get_texts()]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 2 and all(list(s.get_xdata()) == [3] for s in stars)
