"""Preview images for the docs and users: the intensity augmentations (GIN draws, GIN-IPA views)
and a phantom site's training case with its labels (:func:`save_preview_png`).

    python -m fedxmodal.apps.previews --image ct.nii.gz --out gin_preview.png [--ipa ipa.png]

loads a NIfTI volume, takes its middle axial slice, applies the CT window [-125, 275] HU (``--mr``:
clip the top 0.5 %) and a z-score, and writes a grid of GIN draws.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Union

import nibabel as nib
import numpy as np
import torch

from fedxmodal.transforms.gin import GINAugment, GINIPAAugment

from ..visualize import CT_DISPLAY_WINDOW, RADIOLOGICAL_NOTE, colour_key, display_window, draw_letters, structure_color, to_ras, view_slice
from .overlay import save_overlay

__all__ = ["save_gin_gallery", "save_ipa_gallery", "load_middle_axial_slice", "save_preview_png", "save_sites_preview"]


def _as_image_tensor(image_2d: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(image_2d) if not torch.is_tensor(image_2d) else image_2d)
    img = img.detach().to("cpu", torch.float32)
    if img.dim() != 2:
        raise ValueError(f"expected a 2D image (H, W), got shape {tuple(img.shape)}")
    return img


def _figure(tiles, titles, out_png: str, ncols: int, tile_inches: float = 2.4, view: str | None = None) -> str:
    """A grid of tiles; ``view`` ("axial"): the tiles are radiological slices -> orientation letters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows = int(np.ceil(len(tiles) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile_inches * ncols, tile_inches * nrows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, title in zip(axes.ravel(), tiles, titles):
        # Each tile min-max scaled: GIN outputs have arbitrary sign and offset.
        ax.imshow(tile, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        if view:
            draw_letters(ax, view, fontsize=9)
    if view:
        fig.suptitle(RADIOLOGICAL_NOTE, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def save_gin_gallery(
    image_2d: Union[np.ndarray, torch.Tensor],
    out_png: str,
    n: int = 8,
    seed: int = 0,
    ncols: int = 4,
    include_original: bool = True,
    gin: Optional[GINAugment] = None,
    view: Optional[str] = None,
) -> str:
    """Save a grid of GIN draws of one 2D image.

    Args:
        image_2d: ``(H, W)`` array or tensor (already windowed / normalised).
        out_png: output path.
        n: number of tiles; with ``include_original`` the first tile is the input and the other
            ``n - 1`` are GIN draws, otherwise all ``n`` are draws.
        seed: seed of the ``torch.Generator`` driving the draws (same seed -> same picture).
        ncols: tiles per row (n=8, ncols=4 gives 2x4).
        include_original: show the input as the first tile.
        gin: the augmentation to preview (default ``GINAugment()``, per-sample nets).
        view: ``"axial"`` when ``image_2d`` is a radiological axial slice
            (:func:`load_middle_axial_slice`): every tile gets orientation letters.

    Returns:
        ``out_png``.
    """
    img = _as_image_tensor(image_2d)
    gin = gin if gin is not None else GINAugment()
    n_draws = n - 1 if include_original else n
    gen = torch.Generator().manual_seed(int(seed))
    batch = img[None, None].expand(n_draws, 1, *img.shape).contiguous()
    if gin.shared_across_batch:
        # One net per call in this variant: call once per draw to show different nets.
        draws = torch.cat([gin(batch[:1], generator=gen) for _ in range(n_draws)])
    else:
        draws = gin(batch, generator=gen)
    tiles = ([img.numpy()] if include_original else []) + [d[0].numpy() for d in draws]
    titles = (["input"] if include_original else []) + [f"GIN draw {i + 1}" for i in range(n_draws)]
    return _figure(tiles, titles, out_png, ncols, view=view)


def save_ipa_gallery(
    image_2d: Union[np.ndarray, torch.Tensor],
    out_png: str,
    rows: int = 2,
    seed: int = 0,
    ipa: Optional[GINIPAAugment] = None,
    view: Optional[str] = None,
) -> str:
    """Save GIN-IPA examples: per row the input, the blend mask and the views x1', x2', x3.

    Args:
        image_2d: ``(H, W)`` array or tensor.
        out_png: output path.
        rows: number of independent draws (rows).
        seed: ``torch.Generator`` seed.
        ipa: the augmentation (default ``GINIPAAugment()``).
        view: ``"axial"`` for a radiological axial slice: orientation letters on every tile.

    Returns:
        ``out_png``.
    """
    img = _as_image_tensor(image_2d)
    ipa = ipa if ipa is not None else GINIPAAugment()
    gen = torch.Generator().manual_seed(int(seed))
    batch = img[None, None].expand(rows, 1, *img.shape).contiguous()
    x1p, x2p, x3, m = ipa(batch, generator=gen, return_mask=True)
    tiles, titles = [], []
    for r in range(rows):
        tiles += [img.numpy(), m[r, 0].numpy(), x1p[r, 0].numpy(), x2p[r, 0].numpy(), x3[r, 0].numpy()]
        titles += ["input", "IPA mask", "x1' (blend)", "x2' (complement)", "x3 (plain GIN)"]
    return _figure(tiles, titles, out_png, ncols=5, view=view)


def load_middle_axial_slice(path: str, modality: str = "ct") -> np.ndarray:
    """Middle axial slice of a NIfTI volume, windowed and z-scored, in radiological view.

    CT: window [-125, 275] HU; MR: clip the top 0.5 % of intensities. Then z-score over the slice.
    Whatever the file's axis order, the slice is shown as radiologists read it: anterior at the top,
    the patient's right on the image's left (``apps.overlay.view_slice``).

    Returns:
        ``(H, W)`` float32 array: H runs anterior -> posterior, W patient's right -> left.
    """
    import nibabel as nib

    from fedxmodal.apps.overlay import view_slice

    vol = nib.as_closest_canonical(nib.load(path))
    data = view_slice(np.asarray(vol.dataobj, dtype=np.float32), "axial", vol.shape[2] // 2)
    if modality == "ct":
        data = np.clip(data, -125.0, 275.0)
    else:
        data = np.minimum(data, np.percentile(data, 99.5))
    data = (data - data.mean()) / (data.std() + 1e-8)
    return np.ascontiguousarray(data).astype(np.float32)

def save_preview_png(site_dir, out_png, case: int = 0) -> Path:
    """PNG of training case ``case`` with its labels (radiological view, patient's right
    on the image's left, orientation letters, legend): three axial levels and a coronal slice."""
    site_dir = Path(site_dir)
    ds = json.loads((site_dir / "dataset.json").read_text())
    entry = ds["training"][case]
    img, lab = nib.load(site_dir / entry["image"]), nib.load(site_dir / entry["label"])
    names = {int(k): v for k, v in ds["labels"].items() if int(k) > 0}
    return save_overlay(np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj).astype(np.uint8), img.affine,
                        out_png, names, modality=ds["modality"], axial=3, coronal=1, ncols=2,
                        title=f"{ds['name']} ({ds['modality']}) {entry['image']}")


def save_sites_preview(site_dirs, out_png, case: int = 0) -> Path:
    """PNG with one axial slice per site (training case ``case``, the slice with the most labelled voxels),
    side by side in radiological view with orientation letters; each structure's contour in one colour
    across sites (by name), named in the colour key under the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(site_dirs), figsize=(3.2 * len(site_dirs), 4.0), squeeze=False,
                             layout="constrained")
    colours: dict[str, int] = {}
    for ax, site_dir in zip(axes[0], map(Path, site_dirs)):
        ds = json.loads((site_dir / "dataset.json").read_text())
        entry = ds["training"][case]
        img, lab = nib.load(site_dir / entry["image"]), nib.load(site_dir / entry["label"])
        image, zooms = to_ras(np.asarray(img.dataobj, np.float32), img.affine)
        label = to_ras(np.asarray(lab.dataobj).astype(np.uint8), lab.affine)[0]
        k = int(np.argmax((label > 0).sum(axis=(0, 1))))
        lo, hi = display_window(image, ds["modality"])
        ax.imshow(view_slice(image, "axial", k), cmap="gray", vmin=lo, vmax=hi, aspect=zooms[1] / zooms[0],
                  interpolation="nearest")
        for i, name in ((int(i), n) for i, n in ds["labels"].items() if int(i) > 0):
            if (m := view_slice(label, "axial", k) == i).any():
                ax.contour(m, levels=[0.5], colors=[structure_color(colours.setdefault(name, len(colours) + 1))],
                           linewidths=1.0)
        ax.set_title(f"{ds['name']} ({ds['modality']})\naxial {k + 1}/{image.shape[2]}", fontsize=8)
        ax.set_axis_off()
        draw_letters(ax, "axial", fontsize=10)
        ax.index = k
    colour_key(fig, {c: n for n, c in colours.items()}, numbered=False, ncol=min(len(colours), 4), fontsize=7)
    lo, hi = CT_DISPLAY_WINDOW
    fig.suptitle(f"{RADIOLOGICAL_NOTE}; CT window {lo:.0f} to {hi:.0f} HU, MR 0.5-99.5 percentiles", fontsize=7)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="NIfTI volume")
    ap.add_argument("--out", required=True, help="PNG of GIN draws")
    ap.add_argument("--ipa", default=None, help="optional PNG of GIN-IPA views")
    ap.add_argument("--mr", action="store_true", help="MR preprocessing instead of the CT window")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared", action="store_true", help="batch-shared GIN variant")
    args = ap.parse_args(argv)
    img = load_middle_axial_slice(args.image, "mr" if args.mr else "ct")
    print(save_gin_gallery(img, args.out, n=args.n, seed=args.seed,
                           gin=GINAugment(shared_across_batch=args.shared), view="axial"))
    if args.ipa:
        print(save_ipa_gallery(img, args.ipa, seed=args.seed, view="axial"))


if __name__ == "__main__":
    main()
