"""SSL-ALPNet's superpixel pseudo-labels, computed once per site and cached in the site's folder.

Per axial slice: the slice is min-max scaled per volume to 0-255 (the intensity range the original
``felzenszwalb(scale=1, sigma=1, min_size=400)`` recipe was tuned on); a body mask is made
(threshold, largest connected component, holes filled; CT threshold 5/255, just above the
window's floor where air sits, so fat stays in; MR: Otsu's threshold of the volume, as MR air is
noisy); felzenszwalb runs on the slice; the superpixels inside the body are split into
4-connected pieces, pieces smaller than ``min_region_fraction * min_size`` dropped, the rest
relabelled 1..N (0 = outside / dropped).
``min_size`` scales with the slice area (400 at 256 px -> 100 at 128 px).

The pseudo-labels never leave the site: the cache lives under the site folder
(``<site>/.fedxmodal_cache/superpixels/<key>/``), keyed by the preprocessing and superpixel settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components
from skimage.segmentation import felzenszwalb, mark_boundaries, relabel_sequential

log = logging.getLogger(__name__)

# bump when the recipe below (or the slices it reads) changes, so stale caches are ignored; 2: slabs
# are normalised with their whole volume's statistics
CACHE_VERSION = 2
CT_BODY_THRESHOLD = 5.0  # 0-255 scale; the CT window's floor (-125 HU, air) maps to 0, fat to ~16


@dataclass(frozen=True)
class SuperpixelConfig:
    """Felzenszwalb and body-mask settings.

    Args:
        scale, sigma: felzenszwalb's ``scale`` and ``sigma`` (SSL-ALPNet: 1, 1).
        min_size_at_256: felzenszwalb's ``min_size`` for a 256 px slice; scaled by area.
        body_threshold: body-mask threshold on the 0-255 volume; ``None``: per modality (CT 5.0,
            MR Otsu's threshold of the volume).
        min_region_fraction: connected pieces smaller than this fraction of ``min_size`` are dropped.
    """

    scale: float = 1.0
    sigma: float = 1.0
    min_size_at_256: int = 400
    body_threshold: float | None = None
    min_region_fraction: float = 0.25

    def __post_init__(self):
        if self.scale <= 0 or self.sigma < 0 or self.min_size_at_256 < 1:
            raise ValueError(f"bad felzenszwalb settings {self}")
        if not 0.0 <= self.min_region_fraction <= 1.0:
            raise ValueError(f"min_region_fraction must be in [0, 1], got {self.min_region_fraction}")

    def min_size(self, height: int, width: int) -> int:
        """felzenszwalb ``min_size`` for an (height, width) slice: 400 * area / 256^2, at least 1."""
        return max(1, round(self.min_size_at_256 * height * width / 256.0 ** 2))

    def to_dict(self) -> dict:
        return asdict(self)


def to_255(volume) -> np.ndarray:
    """Min-max scale a whole volume (any shape) to float32 0-255 (per volume, not per slice, so
    the body threshold means the same on every slice)."""
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    return np.zeros_like(v) if hi - lo < 1e-6 else (v - lo) * (255.0 / (hi - lo))


def body_mask(slice255: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) 0-255 slice -> (H, W) bool: above ``threshold``, largest connected component, holes filled."""
    fg = slice255 > threshold
    if not fg.any():
        return fg
    cc = connected_components(fg, connectivity=2)
    largest = np.argmax(np.bincount(cc.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(cc == largest)


def superpixels_slice(slice255: np.ndarray, config: SuperpixelConfig, threshold: float) -> np.ndarray:
    """(H, W) 0-255 slice -> (H, W) int32 superpixels: 0 outside the body (``threshold``), 1..N
    inside, each label one 4-connected region of >= ``min_region_fraction * min_size`` pixels."""
    if slice255.ndim != 2:
        raise ValueError(f"expected an (H, W) slice, got shape {slice255.shape}")
    mask = body_mask(slice255, threshold)
    if not mask.any():
        return np.zeros(slice255.shape, np.int32)
    min_size = config.min_size(*slice255.shape)
    raw = felzenszwalb(slice255.astype(np.float64), scale=config.scale, sigma=config.sigma,
                       min_size=min_size, channel_axis=None) + 1
    raw[~mask] = 0
    # Felzenszwalb regions can be split by the body mask (or touch only diagonally): one label
    # per 4-connected piece, so every pseudo-organ is one blob.
    pieces = connected_components(raw, background=0, connectivity=1)
    sizes = np.bincount(pieces.ravel())
    small = sizes < config.min_region_fraction * min_size
    small[0] = False
    pieces[small[pieces]] = 0
    return relabel_sequential(pieces)[0].astype(np.int32)


def body_threshold(volume255: np.ndarray, modality: str, config: SuperpixelConfig) -> float:
    """The body-mask threshold for one 0-255 volume (see ``SuperpixelConfig.body_threshold``)."""
    if config.body_threshold is not None:
        return float(config.body_threshold)
    if modality == "CT":
        return CT_BODY_THRESHOLD
    if modality == "MR":
        return float(threshold_otsu(volume255)) if volume255.max() > volume255.min() else 0.0
    raise ValueError(f"unknown modality {modality!r}")


def superpixels_volume(slices, modality: str, config: SuperpixelConfig = SuperpixelConfig()) -> np.ndarray:
    """(Z, 1, H, W) or (Z, H, W) preprocessed slices of ONE volume -> (Z, H, W) int32 superpixels
    (labels restart at 1 on every slice). ``modality`` ('CT' / 'MR') picks the body threshold."""
    v = slices.detach().cpu().numpy() if isinstance(slices, torch.Tensor) else np.asarray(slices)
    if v.ndim == 4 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 3:
        raise ValueError(f"expected (Z, 1, H, W) or (Z, H, W) slices, got shape {v.shape}")
    v255 = to_255(v)
    threshold = body_threshold(v255, modality, config)
    return (np.stack([superpixels_slice(s, config, threshold) for s in v255]) if len(v255)
            else np.zeros(v.shape, np.int32))


@dataclass
class SiteSuperpixels:
    """A site's training slices with their pseudo-labels.

    images: (N, 1, H, W) float32 preprocessed slices (all volumes concatenated);
    superpixels: (N, H, W) int32, 1..N_slice per slice, 0 outside the body;
    case_ids: (N,) the case each slice came from; z: (N,) its index in that case.
    """

    images: torch.Tensor
    superpixels: torch.Tensor
    case_ids: list[str]
    z: torch.Tensor


def cache_key(preprocess: dict, modality: str, config: SuperpixelConfig) -> str:
    """A short hash of everything that changes the pseudo-labels."""
    blob = json.dumps({"v": CACHE_VERSION, "preprocess": preprocess, "modality": modality,
                       "superpixels": config.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def site_superpixels(data, split: str = "training", config: SuperpixelConfig = SuperpixelConfig(),
                     cache_dir: str | Path | None = None, use_cache: bool = True) -> SiteSuperpixels:
    """Superpixels of every slice of a site's ``split``, computed once and cached on disk.

    Args:
        data: a ``fedxmodal.data.slices.SiteSlices`` (labelled or unlabelled cases alike).
        split: which split (training, for self-supervised training).
        config: superpixel settings.
        cache_dir: where to cache; default ``<site folder>/.fedxmodal_cache/superpixels``. A key
            subfolder per (preprocessing, modality, superpixel settings) holds one ``.npz`` per case.
        use_cache: read and write the cache (a read-only site folder only logs a warning).

    Returns:
        ``SiteSuperpixels`` over all slices of the split, in case order.
    """
    root = Path(cache_dir) if cache_dir is not None else data.site.root / ".fedxmodal_cache" / "superpixels"
    folder = root / cache_key(data.preprocessor.config.to_dict(), data.modality, config)
    images, sps, ids, zs = [], [], [], []
    for vol in data.volumes(split):
        case = vol.case
        path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", case.case_id) + ".npz")
        sp = _read_cache(path, case, vol.image.shape) if use_cache else None
        if sp is None:
            sp = superpixels_volume(vol.image, data.modality, config)
            if use_cache:
                _write_cache(path, case, sp)
        images.append(vol.image)
        sps.append(torch.from_numpy(sp))
        ids += [case.case_id] * len(sp)
        zs.append(torch.arange(len(sp)))
    return SiteSuperpixels(images=torch.cat(images), superpixels=torch.cat(sps), case_ids=ids, z=torch.cat(zs))


def _case_stamp(case) -> str:
    st = case.image.stat() if case.image.is_file() else None
    return json.dumps([str(case.image), case.slices, st.st_size if st else None, st.st_mtime_ns if st else None])


def _read_cache(path: Path, case, image_shape) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            if str(f["stamp"]) != _case_stamp(case):
                return None  # the image file changed since
            sp = f["superpixels"]
    except (OSError, KeyError, ValueError):
        return None
    expected = (image_shape[0], *image_shape[-2:])
    return sp.astype(np.int32) if sp.shape == expected else None


def _write_cache(path: Path, case, sp: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, superpixels=sp.astype(np.int32), stamp=_case_stamp(case))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache superpixels at %s (%s); they will be recomputed next time", path, exc)


def render_superpixel_preview(images, superpixels, out_png, n_slices: int = 4, title: str | None = None) -> Path:
    """Write a PNG of ``n_slices`` evenly spaced slices with their superpixel boundaries, in
    radiological view (the slices are preprocessed axial slices on the RAS grid: anterior up, the
    patient's right on the viewer's left), with orientation letters and a key of the boundary colour.

    Args:
        images: (N, 1, H, W) or (N, H, W) slices (any intensity scale; min-max scaled for display).
        superpixels: (N, H, W) int labels of the same slices.
        out_png: output path.
        n_slices: slices shown, evenly spaced among those that have superpixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ...visualize import RADIOLOGICAL_NOTE, axial_display, colour_key, draw_letters

    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    sps = superpixels.detach().cpu().numpy() if isinstance(superpixels, torch.Tensor) else np.asarray(superpixels)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    if imgs.shape != sps.shape:
        raise ValueError(f"images {imgs.shape} and superpixels {sps.shape} differ")
    have = np.nonzero(sps.reshape(len(sps), -1).max(1) > 0)[0]
    if have.size == 0:
        raise ValueError("no slice has superpixels")
    picks = have[np.linspace(0, have.size - 1, min(n_slices, have.size)).round().astype(int)]
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.8), squeeze=False, layout="constrained")
    boundary = (1, 0.2, 0.2)
    for ax, i in zip(axes[0], picks):
        img = np.ascontiguousarray(axial_display(imgs[i]))
        sp = np.ascontiguousarray(axial_display(sps[i]))
        img01 = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        ax.imshow(np.clip(mark_boundaries(img01, sp, color=boundary, mode="subpixel"), 0, 1),  # thin lines
                  interpolation="nearest")
        ax.set_title(f"slice {i}: {int(sps[i].max())} superpixels", fontsize=8)
        ax.axis("off")
        draw_letters(ax, "axial", fontsize=10)
        ax.index = int(i)
    colour_key(fig, extra=[Line2D([], [], color=boundary, label="superpixel boundary (pseudo-label)")])
    fig.suptitle((f"{title}\n" if title else "") + RADIOLOGICAL_NOTE, fontsize=9)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
