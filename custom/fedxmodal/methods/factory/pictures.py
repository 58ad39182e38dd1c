"""What a user looks at: grids of generated slices, a morph between two sites' conditions, and
the quality figure over rounds. Pure PyTorch/matplotlib; used at the sites and by the host's
``factory`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) RAS slices (the preprocessed grid: x, y) in about [-1, 1] -> (N, S, S) uint8
    in radiological view (anterior up, patient's right on the left; values outside clipped)."""
    x = images.detach().float().cpu()[:, 0].flip(1, 2).transpose(1, 2)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def tile(images: torch.Tensor, n_cols: int) -> np.ndarray:
    """(N, 1, S, S) -> one (rows * S, n_cols * S) uint8 mosaic, row-major, 2-pixel gaps."""
    arr = to_uint8(images)
    n, s = len(arr), arr.shape[-1]
    rows = max(1, -(-n // n_cols))
    out = np.zeros((rows * (s + 2) - 2, n_cols * (s + 2) - 2), dtype=np.uint8)
    for i, im in enumerate(arr):
        r, c = divmod(i, n_cols)
        out[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = im
    return out


def save_rows(rows: list[tuple[str, torch.Tensor]], out_png, title: str = "", n_cols: int = 8) -> Path:
    """A labelled picture: one mosaic per (label, images (N, 1, S, S) RAS slices) row group, in
    radiological view (:func:`to_uint8`); the first tile of each group carries the orientation letters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...visualize import RADIOLOGICAL_NOTE, draw_letters

    mosaics = [(label, tile(imgs, n_cols)) for label, imgs in rows]
    heights = [m.shape[0] for _, m in mosaics]
    width = max(m.shape[1] for _, m in mosaics)
    fig, axes = plt.subplots(len(mosaics), 1, figsize=(max(width / 40 + 0.5, 6.0),
                                                        sum(heights) / 40 + 0.6 * len(mosaics) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, layout="constrained")
    for ax, (label, mosaic), (_, imgs) in zip(axes[:, 0], mosaics, rows):
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9, loc="left")
        ax.axis("off")
        s = int(imgs.shape[-1])
        draw_letters(ax, "axial", box=(-0.5, s - 0.5, -0.5, s - 0.5), fontsize=8)
    fig.suptitle((f"{title}\n" if title else "") + f"{RADIOLOGICAL_NOTE} (letters on the first slice of each row)",
                 fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png


def plot_quality(curves: dict, out_png, title: str = "factory quality per site") -> Path:
    """``{site: {metric: [(round, value)]}}`` (e.g. ``val/swd``, ``val/swd_floor``,
    ``val/swd_other``) -> one panel per site, SWD over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted(curves)
    fig, axes = plt.subplots(1, max(1, len(sites)), figsize=(4.2 * max(1, len(sites)), 3.4), squeeze=False)
    styles = {"swd": ("generated, site's condition", "-o"), "swd_nokey": ("generated, key dropped", "--"),
              "swd_other": ("generated, other sites' conditions", ":"), "swd_floor": ("real train vs real val", "-.")}
    for ax, site in zip(axes[0], sites):
        for name, (label, style) in styles.items():
            series = curves[site].get(name) or curves[site].get(f"val/{name}")
            if series:
                steps, vals = zip(*sorted(series))
                ax.plot([s + 1 for s in steps], vals, style, ms=3, label=label)
        ax.set(title=site, xlabel="round (global model received)", ylabel="SWD x 100 (lower is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png
