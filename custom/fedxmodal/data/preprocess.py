"""Volume -> axial 2D slices for training, and the exact inverse for predictions.

Geometry runs through MONAI's invertible transforms (Orientation -> Spacing -> ResizeWithPadOrCrop)
so that ``invert`` can replay the recorded trace backwards: slice predictions return to the
input's own grid, where 3D Dice is computed and masks are written.

Intensities are normalised with statistics of the WHOLE volume. A case that is an axial slab of a
volume (``Case.slices``) inherits its volume's statistics (``VolumeStats``), so the same tissue has
the same value in every slab of one patient; the statistics are computed once per image file and
kept in the site's cache (``<site>/.fedxmodal_cache/intensity/``, beside the superpixels), or in
memory only when that folder cannot be written (a read-only data mount).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, Spacing

from .contract import Case, LabelMapper
from .errors import DataError
from .io import load_volume

log = logging.getLogger(__name__)

CT_WINDOW = (-125.0, 275.0)
MR_UPPER_PERCENTILE = 99.5
STATS_CACHE_VERSION = 1  # bump when intensity_stats changes, so stale cached statistics are ignored


@dataclass(frozen=True)
class PreprocessConfig:
    """In-plane target spacing (mm) and slice size (pixels); the slice axis keeps its spacing."""

    spacing: float = 3.0
    size: int = 128
    ct_window: tuple[float, float] = CT_WINDOW
    mr_upper_percentile: float = MR_UPPER_PERCENTILE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PreprocessConfig":
        d = dict(d or {})
        if "ct_window" in d:
            d["ct_window"] = tuple(d["ct_window"])
        return cls(**d)


@dataclass(frozen=True)
class VolumeStats:
    """What ``normalize_intensity`` measures on a volume: the MR clip (``upper``; None for CT, whose
    window is fixed) and the mean / standard deviation of the windowed or clipped volume."""

    upper: float | None
    mean: float
    std: float


def intensity_stats(volume: torch.Tensor, modality: str, config: PreprocessConfig) -> VolumeStats:
    """The statistics ``normalize_intensity`` uses, measured on ``volume`` (any shape)."""
    v = volume.float()
    upper = None
    if modality == "CT":
        v = v.clamp(*config.ct_window)
    elif modality == "MR":
        flat = v.reshape(-1)
        # torch.quantile is limited to 16M elements; a strided sample is exact enough for a clip.
        sample = flat[:: max(1, flat.numel() // 4_000_000)]
        upper = float(torch.quantile(sample, config.mr_upper_percentile / 100.0))
        v = v.clamp(max=upper)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    std = float(v.std())
    # float32 values held as Python floats (exactly): applying them is bit-identical to the tensors
    return VolumeStats(upper=upper, mean=float(v.mean()), std=std if std > 1e-6 else 1.0)


def apply_intensity(volume: torch.Tensor, modality: str, config: PreprocessConfig,
                    stats: VolumeStats) -> torch.Tensor:
    """Window (CT) or clip (MR, at ``stats.upper``), then z-score with ``stats``: voxel by voxel, so a
    slab normalised with its volume's statistics equals the same voxels of the volume normalised."""
    v = volume.float()
    if modality == "CT":
        v = v.clamp(*config.ct_window)
    elif modality == "MR":
        v = v.clamp(max=stats.upper)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return (v - stats.mean) / stats.std


def normalize_intensity(volume: torch.Tensor, modality: str, config: PreprocessConfig,
                        stats: VolumeStats | None = None) -> torch.Tensor:
    """CT: window then z-score; MR: clip the top 0.5 % then z-score. Per volume, any shape:
    statistics of ``volume`` itself, or ``stats`` (those of the volume a slab was cut from)."""
    if stats is None:
        stats = intensity_stats(volume, modality, config)
    return apply_intensity(volume, modality, config, stats)


@dataclass
class PreparedVolume:
    """One case ready for 2D training/inference.

    image: (Z, 1, S, S) float32 slices; label: (Z, S, S) uint8 class indices or None;
    ref_label: (X, Y, Z) uint8 class indices on the original grid (for 3D Dice) or None;
    the geometry trace lets ``VolumePreprocessor.invert`` undo the resampling.
    """

    case: Case
    image: torch.Tensor
    label: torch.Tensor | None
    ref_label: np.ndarray | None
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    _geometry_meta: MetaTensor  # an empty-channel stand-in carrying meta + applied_operations

    @property
    def foreground_slices(self) -> torch.Tensor:
        """Indices of slices with any labelled structure (empty tensor if no label)."""
        if self.label is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(self.label.flatten(1).amax(1) > 0).flatten()


class VolumePreprocessor:
    """Turns cases of one site into slices (``prepare``) and slice predictions back (``invert``).

    ``stats_cache``: folder where the whole-volume intensity statistics of slab cases are cached
    (``SiteSlices`` passes ``<site>/.fedxmodal_cache/intensity``); None, or a folder that cannot be
    written: computed once per image file and process, kept in memory.
    """

    def __init__(self, modality: str, config: PreprocessConfig | None = None,
                 stats_cache: str | Path | None = None):
        self.modality = modality
        self.config = config or PreprocessConfig()
        self.stats_cache = Path(stats_cache) if stats_cache is not None else None
        self._stats: dict[str, VolumeStats] = {}
        c = self.config
        geometry = lambda mode: Compose([  # noqa: E731
            Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacing(pixdim=(c.spacing, c.spacing, -1), mode=mode, padding_mode="border"),
            ResizeWithPadOrCrop(spatial_size=(c.size, c.size, -1), mode="edge"),
        ])
        self._image_geometry = geometry("bilinear")
        self._label_geometry = geometry("nearest")

    def prepare(self, case: Case, mapper: LabelMapper | None = None) -> PreparedVolume:
        volume = load_volume(case.image, role="image")
        # a slab takes its volume's statistics; a whole-volume case measures its own (as always)
        stats = self.volume_stats(case, volume) if case.slices is not None else None
        image = crop_slab(volume, case)
        del volume
        label = ref = None
        if case.label is not None and mapper is not None:
            label = crop_slab(load_volume(case.label, role="label"), case)
            _check_same_grid(case, image, label)
            ref = mapper(label[0].numpy(), where=case.label)
            label = MetaTensor(torch.from_numpy(ref[None].astype(np.float32)), meta=label.meta)
        affine = np.asarray(image.affine, dtype=np.float64)
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        image = MetaTensor(normalize_intensity(image.as_tensor(), self.modality, self.config, stats), meta=image.meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = self._image_geometry(image)
            label_slices = None
            if label is not None:
                label_slices = self._label_geometry(label)[0].permute(2, 0, 1).round().to(torch.uint8).contiguous()
        image_slices = image.as_tensor()[0].permute(2, 0, 1).unsqueeze(1).contiguous()  # (Z, 1, S, S)
        stub = MetaTensor(torch.zeros((0, *image.shape[1:])), meta=image.meta,
                          applied_operations=image.applied_operations)
        return PreparedVolume(case=case, image=image_slices, label=label_slices, ref_label=ref,
                              original_affine=affine, original_shape=tuple(int(s) for s in _spatial(case, image, ref)),
                              spacing=spacing, _geometry_meta=stub)

    def volume_stats(self, case: Case, volume: MetaTensor | None = None) -> VolumeStats:
        """Intensity statistics of the WHOLE image file of ``case`` (slab or not): from memory, from
        the cache folder, or measured on ``volume`` (loaded if not given) and cached."""
        stamp = _file_stamp(case.image)
        key = json.dumps([stamp, self.modality, self._stats_settings()])
        if key in self._stats:
            return self._stats[key]
        path = self._stats_path(case.image)
        stats = _read_stats(path, stamp) if path is not None else None
        if stats is None:
            if volume is None:
                volume = load_volume(case.image, role="image")
            stats = intensity_stats(volume.as_tensor(), self.modality, self.config)
            if path is not None:
                _write_stats(path, stamp, stats)
        self._stats[key] = stats
        return stats

    def _stats_settings(self) -> dict:
        c = self.config
        return {"v": STATS_CACHE_VERSION, "ct_window": list(c.ct_window), "mr_upper_percentile": c.mr_upper_percentile}

    def _stats_path(self, image: Path) -> Path | None:
        if self.stats_cache is None:
            return None
        blob = json.dumps({"modality": self.modality, **self._stats_settings()}, sort_keys=True)
        folder = self.stats_cache / hashlib.sha1(blob.encode()).hexdigest()[:16]
        where = hashlib.sha1(str(Path(image).resolve()).encode()).hexdigest()[:8]
        return folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(image).name)}-{where}.json"

    def invert(self, prepared: PreparedVolume, slice_scores: torch.Tensor) -> torch.Tensor:
        """(Z, C, S, S) per-slice class scores (probabilities) -> (C, X, Y, Z) on the original grid."""
        scores = slice_scores.detach().float().cpu().permute(1, 2, 3, 0)  # (C, S, S, Z)
        stub = prepared._geometry_meta
        mt = MetaTensor(scores, meta=copy.deepcopy(stub.meta),
                        applied_operations=copy.deepcopy(stub.applied_operations))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self._image_geometry.inverse(mt)
        out = out.as_tensor()
        if tuple(out.shape[1:]) != prepared.original_shape:
            raise RuntimeError(f"inverse produced {tuple(out.shape[1:])}, expected {prepared.original_shape}")
        return out


def axial_axis(affine) -> int:
    """Index of the voxel axis that runs closest to the patient's superior-inferior direction."""
    return int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[2, :3])))


def crop_slab(vol: MetaTensor, case: Case) -> MetaTensor:
    """Keep the case's axial slab [start, stop) (file index order) with a matching affine."""
    if case.slices is None:
        return vol
    axis = axial_axis(vol.affine)
    start, stop = case.slices
    n = vol.shape[1 + axis]
    if stop > n:
        raise DataError(case.image, f"slices [{start}, {stop}) exceed the {n} axial slices")
    index = [slice(None)] * 4
    index[1 + axis] = slice(start, stop)
    affine = np.asarray(vol.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, axis] * start
    out = MetaTensor(vol.as_tensor()[tuple(index)].clone(), meta=dict(vol.meta))
    out.affine = torch.as_tensor(affine)
    return out


def _file_stamp(image: Path) -> list:
    """Path, size and modification time: a cached statistic is dropped once the file changes."""
    image = Path(image)
    st = image.stat() if image.is_file() else None
    return [str(image.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None]


def _read_stats(path: Path, stamp: list) -> VolumeStats | None:
    try:
        d = json.loads(path.read_text())
        if d.get("stamp") != stamp:
            return None  # the image file changed since
        return VolumeStats(upper=d["upper"], mean=float(d["mean"]), std=float(d["std"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_stats(path: Path, stamp: list, stats: VolumeStats) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stamp": stamp, **asdict(stats)}))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache intensity statistics at %s (%s); they are kept in memory for this run", path, exc)


def _spatial(case, image, ref):
    if ref is not None:
        return ref.shape
    # Original shape is recorded in the first (Orientation) trace entry.
    return tuple(image.applied_operations[0]["orig_size"])


def _check_same_grid(case: Case, image: MetaTensor, label: MetaTensor) -> None:
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise DataError(case.label, f"label shape {tuple(label.shape[1:])} differs from image shape "
                                    f"{tuple(image.shape[1:])} ({case.image.name})")
    a, b = np.asarray(image.affine, dtype=np.float64), np.asarray(label.affine, dtype=np.float64)
    if not np.allclose(a, b, atol=1e-3, rtol=1e-4):
        raise DataError(case.label, f"label affine differs from the image's ({case.image.name}): "
                                    f"image\n{np.round(a, 3)}\nlabel\n{np.round(b, 3)}")
