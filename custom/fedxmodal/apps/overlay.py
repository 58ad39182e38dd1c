"""Pictures people read: masks over images in radiological convention.

Every view is taken from the volume reoriented to RAS by nibabel (whatever the file's own axis
order, LPS or RAS, so the picture never depends on how the file stores its voxels) and displayed the
way radiologists read images: axial slices seen from the feet (patient's right on the viewer's
left, anterior up), coronal slices seen from the front (patient's right on the viewer's left,
superior up). Every panel carries orientation letters on its edges; the figure has a legend of the
structure colours (the same colours the DICOM SEG writer gives each segment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..visualize import (CT_DISPLAY_WINDOW, RADIOLOGICAL_NOTE, VIEW_LETTERS, as_names, colour_key,  # noqa: F401
                      display_window, draw_letters, panel_aspect, safe_filename, structure_color, to_ras, view_slice)

_window = display_window  # the name previews and older callers import
_as_names = as_names


def _levels(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """``n`` plane indices along ``axis``: spread over the foreground's extent (the middle if none)."""
    other = tuple(a for a in range(3) if a != axis)
    per_plane = (mask > 0).sum(axis=other)
    if not per_plane.any():
        return [mask.shape[axis] // 2]
    if n == 1:
        return [int(np.argmax(per_plane))]
    fg = np.nonzero(per_plane)[0]
    picks = [int(fg[int(round(q * (len(fg) - 1)))]) for q in np.linspace(0.25, 0.75, n)]
    return sorted(set(picks))


def render_overlay(image: np.ndarray, mask: np.ndarray, affine, structures: Sequence[str] | Mapping[int, str], *,
                   reference: np.ndarray | None = None, modality: str | None = None, title: str | None = None,
                   axial: Sequence[int] | int = 2, coronal: Sequence[int] | int = 1, ncols: int | None = None):
    """A matplotlib figure of ``mask`` over ``image``: axial and coronal panels, radiological view.

    Args:
        image: (X, Y, Z) intensities on the grid of ``affine``.
        mask: (X, Y, Z) class indices on the same grid (c > 0 is structure c), drawn filled.
        affine: 4x4 voxel -> RAS world (mm) affine of both arrays, any axis order (LPS, RAS, ...).
        structures: names of classes 1.. (a sequence) or ``{label id: name}``.
        reference: optional (X, Y, Z) reference labels (e.g. ground truth), drawn as dashed contours.
        modality: ``"CT"`` shows the abdominal window [-160, 240] HU; otherwise 0.5-99.5 percentiles.
        title: figure title.
        axial, coronal: how many planes to show (spread over the foreground), or explicit plane
            indices in the RAS-reoriented array (z for axial, y for coronal).
        ncols: panels per row (default: all in one row).

    Returns:
        The ``matplotlib.figure.Figure`` (Agg backend); each panel's axes has ``view`` and
        ``index`` attributes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    img, zooms = to_ras(np.asarray(image, dtype=np.float32), affine)
    msk, _ = to_ras(np.asarray(mask).astype(np.uint8), affine)
    ref = to_ras(np.asarray(reference).astype(np.uint8), affine)[0] if reference is not None else None
    if img.shape != msk.shape:
        raise ValueError(f"image {img.shape} and mask {msk.shape} differ in shape")
    names = as_names(structures)
    panels = []
    for view, spec, axis in (("axial", axial, 2), ("coronal", coronal, 1)):
        levels = _levels(msk, axis, spec) if isinstance(spec, int) else [int(i) for i in spec]
        panels += [(view, k) for k in levels]
    ncols = ncols or len(panels)
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.4 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    lo, hi = display_window(img, modality)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (view, k) in zip(axes.ravel(), panels):
        # pixel aspect = row spacing / column spacing (columns always run along x); a thin slab's
        # coronal panel is stretched along the slice axis, and says so
        aspect, stretch = panel_aspect(view, zooms, img.shape)
        ax.imshow(view_slice(img, view, k), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        m = view_slice(msk, view, k)
        rgba = np.zeros(m.shape + (4,), np.float32)
        for c in names:
            if (m == c).any():
                rgba[m == c] = (*structure_color(c), 0.4)
                ax.contour(m == c, levels=[0.5], colors=[structure_color(c)], linewidths=1.2)
            if ref is not None and (view_slice(ref, view, k) == c).any():
                ax.contour(view_slice(ref, view, k) == c, levels=[0.5], colors=[structure_color(c)],
                           linewidths=1.0, linestyles="--")
        ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        n_planes = img.shape[2] if view == "axial" else img.shape[1]
        label = f"{view} {k + 1}/{n_planes}"
        if stretch > 1.0:
            label += f"\n{img.shape[2]} slices, S-I stretched x{stretch:.1f}"
        ax.set_title(label, fontsize=9)
        draw_letters(ax, view)
        ax.index = k
    extra = [Line2D([], [], color="black", linestyle="--", label="reference (dashed)")] if ref is not None else []
    colour_key(fig, names, extra, ncol=min(len(names) + len(extra), 4 * ncols))
    fig.suptitle((title + "\n" if title else "") + RADIOLOGICAL_NOTE, fontsize=9)
    return fig


def save_overlay(image: np.ndarray, mask: np.ndarray, affine, out_png, structures, **kw) -> Path:
    """Write ``render_overlay(image, mask, affine, structures, **kw)`` as a PNG; returns its path."""
    import matplotlib.pyplot as plt

    fig = render_overlay(image, mask, affine, structures, **kw)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_case_overlays(engine, site_slices, split: str, out_dir, max_cases: int | None = None) -> list[Path]:
    """One overlay PNG per volume of a site's split: the model's prediction filled, the reference
    labels dashed (for ``evaluate --overlays`` and the demo).

    Args:
        engine: a trainer (e.g. ``SupervisedTrainer``) (``predict_volume``, ``structures``, ``domains``).
        site_slices: the site's ``SiteSlices`` (its preprocessor, modality and cases).
        split: ``"test"``, ``"validation"`` or ``"training"``.
        out_dir: folder for ``<site>_<case>.png`` (a slab ``case[a:b]`` as ``case_a-b``: no brackets or
            colons in file names).
        max_cases: at most this many volumes (default all).

    Returns:
        The PNG paths.
    """
    from ..data.io import load_volume
    from ..data.preprocess import crop_slab

    out_dir = Path(out_dir)
    domain = engine.domains.index(site_slices.name) if site_slices.name in engine.domains else None
    written = []
    for vol in site_slices.volumes(split)[:max_cases]:
        pred = engine.predict_volume(vol, site_slices.preprocessor, domain=domain)
        image = crop_slab(load_volume(vol.case.image), vol.case)[0].numpy()
        out = out_dir / f"{safe_filename(f'{site_slices.name}_{vol.case.case_id}')}.png"
        written.append(save_overlay(image, pred, vol.original_affine, out, engine.structures, reference=vol.ref_label,
                                    modality=site_slices.modality,
                                    title=f"{site_slices.name} ({site_slices.modality}) {vol.case.case_id}"))
    return written
