"""One way to show anatomy, for every picture the bundle writes (overlays, previews, superpixel
pseudo-labels, the data factory's generated slices): radiological orientation, orientation
letters, a colour key, readable panels on thin volumes, safe file names. A building block (like
MONAI's ``monai.visualize``): numpy, nibabel and matplotlib only; it ships with the jobs, whose
sites draw pictures too.

* Radiological view: axial slices seen from the feet (patient's right on the viewer's left,
  anterior up), coronal slices seen from the front (patient's right on the viewer's left,
  superior up). :func:`view_slice` takes a plane of a RAS-ordered volume (:func:`to_ras` reorders
  any file's voxels), :func:`axial_display` a preprocessed slice (the RAS grid the networks see).
* Letters: :func:`draw_letters` puts R / L / A / P (axial) or R / L / S / I (coronal) on the edges
  of a panel (or of one tile of a mosaic) and marks the axes with ``view`` for tests.
* Colour key: :func:`colour_key` (a legend under the figure), with :func:`structure_color` (the
  colour a structure has everywhere: overlays, previews, DICOM SEG).
* Thin volumes: :func:`panel_aspect` stretches the slice axis of a coronal panel whose height would
  be under :data:`MIN_PANEL_RATIO` of its width, and says so in the panel's title.
* :func:`safe_filename`: ``ct_ct[89:98]`` -> ``ct_ct_89-98`` (no brackets or colons in file names).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

# Letters on the (left, right, top, bottom) edges of each view.
VIEW_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I")}
CT_DISPLAY_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (HU): W 400, L 40
MIN_PANEL_RATIO = 0.5  # a panel at least half as high as wide (thin slabs: the slice axis stretched)
RADIOLOGICAL_NOTE = "radiological view: patient's right on the viewer's left"


def structure_color(label_id: int) -> tuple[float, float, float]:
    """RGB in [0, 1] of structure ``label_id`` (1-based): matplotlib's tab10 cycle."""
    import matplotlib

    return tuple(float(c) for c in matplotlib.colormaps["tab10"]((int(label_id) - 1) % 10)[:3])


def to_ras(volume: np.ndarray, affine) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` (X, Y, Z) with its 4x4 RAS affine -> (array in RAS axis order, voxel sizes in mm)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64)))
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])


def view_slice(ras: np.ndarray, view: str, index: int) -> np.ndarray:
    """One plane of a RAS-ordered array as displayed: (rows, cols) with row 0 at the top.

    Args:
        ras: (X, Y, Z) array in RAS axis order (x to the patient's right, y anterior, z superior).
        view: ``"axial"`` (rows anterior -> posterior) or ``"coronal"`` (rows superior -> inferior);
            columns always run from the patient's right to the patient's left.
        index: the z (axial) or y (coronal) index of the plane.
    """
    if view == "axial":
        return ras[::-1, ::-1, index].T
    if view == "coronal":
        return ras[::-1, index, ::-1].T
    raise ValueError(f"unknown view {view!r} (axial or coronal)")


def axial_display(slices) -> np.ndarray:
    """Preprocessed axial slices (..., X, Y) on the RAS grid (``data.preprocess``: x to the
    patient's right, y anterior) -> (..., rows, cols) as displayed (anterior up, the patient's
    right on the viewer's left)."""
    arr = np.asarray(slices)
    return np.swapaxes(arr[..., ::-1, ::-1], -1, -2)


def display_window(image: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Grey levels shown: CT in the abdominal soft-tissue window, anything else 0.5-99.5 percentiles."""
    if modality == "CT":
        return CT_DISPLAY_WINDOW
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def panel_aspect(view: str, zooms, shape) -> tuple[float, float]:
    """(matplotlib pixel aspect, stretch of the slice axis) of a ``view`` panel of a RAS volume of
    ``shape`` with voxel sizes ``zooms``: true proportions, except that a coronal panel lower than
    :data:`MIN_PANEL_RATIO` of its width (a thin slab: 4-20 slices) is stretched to that ratio."""
    row_mm = zooms[1] if view == "axial" else zooms[2]
    aspect = row_mm / zooms[0]
    n_rows = shape[1] if view == "axial" else shape[2]
    ratio = n_rows * aspect / max(shape[0], 1)
    if view == "coronal" and ratio < MIN_PANEL_RATIO:
        stretch = MIN_PANEL_RATIO / ratio
        return aspect * stretch, stretch
    return aspect, 1.0


def draw_letters(ax, view: str = "axial", box=None, fontsize: float = 12, pad: float = 0.02) -> list:
    """Orientation letters on the four edges of a panel (``box``: (x0, x1, y0, y1) in data
    coordinates of one tile of a mosaic; default the whole axes). Sets ``ax.view``. Returns the texts."""
    import matplotlib.patheffects as pe

    outline = [pe.withStroke(linewidth=2.5, foreground="black")]
    left, right, top, bottom = VIEW_LETTERS[view]
    if box is None:
        spots = ((pad, 0.5, "left", "center"), (1 - pad, 0.5, "right", "center"),
                 (0.5, 1 - pad, "center", "top"), (0.5, pad, "center", "bottom"))
        kw = {"transform": ax.transAxes}
    else:
        x0, x1, y0, y1 = box  # imshow data coordinates: y grows downwards
        dx, dy = pad * (x1 - x0) * 2, pad * (y1 - y0) * 2
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        spots = ((x0 + dx, ym, "left", "center"), (x1 - dx, ym, "right", "center"),
                 (xm, y0 + dy, "center", "top"), (xm, y1 - dy, "center", "bottom"))
        kw = {}
    texts = [ax.text(x, y, letter, ha=ha, va=va, color="yellow", fontsize=fontsize, fontweight="bold",
                     path_effects=outline, gid=f"orientation-{letter}", **kw)
             for (x, y, ha, va), letter in zip(spots, (left, right, top, bottom))]
    ax.view = view
    return texts


def as_names(structures) -> dict[int, str]:
    """``{label id: name}`` from a sequence (ids 1..) or a mapping (id 0 dropped)."""
    if isinstance(structures, Mapping):
        return {int(k): str(v) for k, v in structures.items() if int(k) > 0}
    return {i: str(s) for i, s in enumerate(structures, start=1)}


def colour_key(fig, names: Mapping[int, str] | Sequence[str] = (), extra: Sequence = (), ncol: int | None = None,
               fontsize: float = 8, numbered: bool = True):
    """A legend under ``fig``: one filled patch per structure (its :func:`structure_color`) and
    ``extra`` handles (e.g. dashed reference lines). Returns the legend (None if nothing to show)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=structure_color(c), edgecolor="black", label=f"{c} {n}" if numbered else n)
               for c, n in as_names(names).items()]
    handles += list(extra)
    if not handles:
        return None
    loc = "outside lower center" if fig.get_layout_engine() is not None else "lower center"
    return fig.legend(handles=handles, loc=loc, ncol=ncol or min(len(handles), 6), fontsize=fontsize, frameon=False)


def safe_filename(text: str) -> str:
    """A file-name stem of ``text``: a slab ``[a:b]`` becomes ``_a-b``; every character other
    than letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    text = re.sub(r"\[(\d+):(\d+)\]", r"_\1-\2", str(text))
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return text or "image"
