"""DICOM Segmentation objects (highdicom) for masks predicted on a DICOM series, so that PACS and
viewers show the result next to the images it was computed from.

One segment per structure (label, SNOMED CT coded anatomy, the overlay's colour), the algorithm's
name and version, every frame referencing its source instance, frames in the source's own geometry
(highdicom matches the mask's grid to the series' frame / row / column grid without resampling and
refuses if the two do not line up).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.errors import DataError
from ..data.io import check_dicom_series
from .overlay import structure_color

# (code value, meaning) in SNOMED CT; SegmentedPropertyCategory is always "Anatomical Structure".
# pydicom's code dictionary has no laterality-specific kidney concepts: those two are spelled out.
_SCT = {
    "liver": "Liver", "spleen": "Spleen", "pancreas": "Pancreas", "gallbladder": "Gallbladder",
    "heart": "Heart", "stomach": "Stomach",
}
_SCT_EXTRA = {"kidney_right": ("9846003", "Right kidney"), "kidney_left": ("18639004", "Left kidney")}


def structure_code(name: str):
    """The SNOMED CT ``Code`` of a canonical structure name (``liver``, ``kidney_right``, ...).

    Raises:
        ValueError: for a structure without a known code (the message lists the known ones).
    """
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if name in _SCT:
        return getattr(codes.SCT, _SCT[name])
    if name in _SCT_EXTRA:
        value, meaning = _SCT_EXTRA[name]
        return Code(value, "SCT", meaning)
    raise ValueError(f"no SNOMED CT code for structure {name!r}; known: {', '.join(sorted({**_SCT, **_SCT_EXTRA}))}")


@dataclass(frozen=True)
class Algorithm:
    """What made the mask, as written into every segment's AlgorithmIdentificationSequence."""

    name: str = "fedxmodal 2D U-Net"
    version: str = "0"
    parameters: dict = field(default_factory=dict)
    model_id: str = "unknown"  # e.g. a checkpoint hash; goes into DeviceSerialNumber


def file_digest(path, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of a file (identifies a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def seg_path_for(out) -> Path:
    """Where the SEG goes beside a NIfTI mask: ``mask.nii.gz`` -> ``mask.dcm``."""
    out = Path(out)
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return out.with_name(name + ".dcm")


def segment_descriptions(structures: Sequence[str], algorithm: Algorithm) -> list:
    """highdicom ``SegmentDescription`` per structure: segment number c is ``structures[c-1]``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ident = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=codes.cid7162.ArtificialIntelligence, version=algorithm.version,
        source="fedxmodal", parameters={k: str(v) for k, v in algorithm.parameters.items()} or None)
    out = []
    for c, name in enumerate(structures, start=1):
        rgb = [round(255 * v) for v in structure_color(c)]
        out.append(hd.seg.SegmentDescription(
            segment_number=c, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=structure_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident, tracking_id=name, tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    return out


def mask_frames(mask: np.ndarray, affine, headers: list, series_dir) -> tuple[np.ndarray, list]:
    """The mask as frames of the source series: ((n, rows, cols) array, source datasets in frame order).

    Args:
        mask: (X, Y, Z) class indices on the grid ``load_volume(series_dir)`` gives.
        affine: that grid's 4x4 voxel -> RAS (mm) affine.
        headers: the series' datasets (``check_dicom_series``).
        series_dir: the folder (for error messages).

    Raises:
        DataError: when the mask's grid does not coincide with the series' pixel grid.
    """
    import highdicom as hd

    if len(headers) > 1:
        spacing, index = hd.spatial.get_series_volume_positions(headers)
        if spacing is None:
            raise DataError(series_dir, "highdicom does not see a regularly spaced volume in this series")
        headers = [headers[index.index(i)] for i in range(len(headers))]
    else:
        spacing = float(headers[0].get("SpacingBetweenSlices", headers[0].get("SliceThickness", 1.0)) or 1.0)
    first = headers[0]
    for_uid = first.get("FrameOfReferenceUID")
    geometry = hd.VolumeGeometry.from_attributes(
        image_position=first.ImagePositionPatient, image_orientation=first.ImageOrientationPatient,
        rows=int(first.Rows), columns=int(first.Columns), pixel_spacing=first.PixelSpacing,
        spacing_between_slices=spacing, number_of_frames=len(headers), coordinate_system="PATIENT",
        frame_of_reference_uid=for_uid)
    volume = hd.Volume(array=np.asarray(mask), affine=np.asarray(affine, dtype=np.float64), coordinate_system="PATIENT",
                       frame_of_reference_uid=for_uid, from_reference_convention="RAS")
    try:
        matched = volume.match_geometry(geometry, tol=1e-3 * max(1.0, float(min(first.PixelSpacing))))
    except RuntimeError as exc:
        raise DataError(series_dir, f"the mask's grid does not line up with the series' pixel grid ({exc})") from None
    return np.ascontiguousarray(matched.array), headers


def write_dicom_seg(mask: np.ndarray, affine, series_dir, out, structures: Sequence[str],
                    algorithm: Algorithm | None = None, headers: list | None = None) -> Path:
    """Write ``mask`` as a DICOM Segmentation (BINARY, one segment per structure) of ``series_dir``.

    Args:
        mask: (X, Y, Z) uint8 class indices (0 background, c = ``structures[c-1]``) on the grid
            ``load_volume(series_dir)`` returns.
        affine: that grid's 4x4 voxel -> RAS (mm) affine.
        series_dir: the source DICOM series folder.
        out: the ``.dcm`` file to write.
        structures: structure names (canonical, each needs a SNOMED CT code).
        algorithm: name, version and parameters of what made the mask.
        headers: the series' datasets if already read (``check_dicom_series``).

    Returns:
        ``out``. Frames without any segment are omitted (all kept if the mask is empty).
    """
    import highdicom as hd

    algorithm = algorithm or Algorithm()
    mask = np.asarray(mask)
    if mask.max(initial=0) > len(structures):
        raise ValueError(f"mask holds class {int(mask.max())} but only {len(structures)} structures are named")
    headers = headers if headers is not None else check_dicom_series(series_dir)
    frames, sources = mask_frames(mask.astype(np.uint8), affine, headers, series_dir)
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(structures, algorithm), series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber") or 0) + 1000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="fedxmodal", manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.version,
        device_serial_number=algorithm.model_id, content_label="FEDXMODAL",
        content_description=f"{algorithm.name} segmentation"[:64],
        series_description=f"SEG {algorithm.name}: {', '.join(structures)}"[:64],
        omit_empty_frames=bool(frames.any()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(out))
    return out
