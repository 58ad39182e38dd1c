"""Write small single-frame DICOM series with pydicom for the clinical-output tests.

A series is given as frames in DICOM layout, ``frames[k][row, col]``, with the standard geometry:
pixel (row r, column c) of slice k lies at ``position_k + c * dc * row_dir + r * dr * col_dir`` (LPS mm),
where ``iop = row_dir + col_dir`` and ``pixel_spacing = (dr, dc)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL_LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)   # columns run to the patient's left, rows to posterior
AXIAL_RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # columns run to the patient's right, rows to anterior


def write_series(folder, frames, *, iop=AXIAL_LPS, origin=(0.0, 0.0, 0.0), pixel_spacing=(2.0, 2.0), step=4.0,
                 positions=None, instance_numbers=None, names=None, modality="CT", intercept=-1024.0,
                 series_uid=None, study_uid=None, frame_of_reference_uid=None, description="phantom") -> list[Path]:
    """Write ``frames`` ((n, rows, cols) real values, e.g. HU) as one series; returns the file paths.

    Args:
        folder: output folder (created).
        frames: (n, rows, cols) array; stored as int16 with ``RescaleIntercept = intercept``.
        iop: ImageOrientationPatient (row direction cosines, then column direction cosines).
        origin: ImagePositionPatient of slice 0; slice k is at ``origin + k * step * normal``.
        pixel_spacing: (row spacing, column spacing) in mm.
        step: slice step along the normal (mm), negative for descending slices.
        positions: explicit (n, 3) ImagePositionPatient values (overrides origin / step).
        instance_numbers: InstanceNumber per slice (default 1..n).
        names: file names (default ``IM<k>.dcm``).
    """
    frames = np.asarray(frames)
    n, rows, cols = frames.shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    if positions is None:
        positions = [np.asarray(origin, float) + k * step * normal for k in range(n)]
    instance_numbers = list(range(1, n + 1)) if instance_numbers is None else list(instance_numbers)
    names = [f"IM{k:04d}.dcm" for k in range(n)] if names is None else list(names)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / names[k]
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PHANTOM1", "Phantom^One", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "fedxmodal-tests"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, 3, description
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = abs(float(step))
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.InstanceNumber = int(instance_numbers[k])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, float(intercept)
        ds.PixelData = np.round(frames[k] - intercept).astype("<i2").tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def ras_volume_as_series(folder, volume, spacing=(2.0, 2.0, 4.0), orientation="LPS", **kw) -> list[Path]:
    """Write a volume given as an (X, Y, Z) RAS-ordered array whose voxel (i, j, k) lies at RAS
    ``(i*sx, j*sy, k*sz)`` mm (the NIfTI ``diag(sx, sy, sz)`` affine) as an axial series with the same
    world content, its pixel rows and columns stored the usual way (``"LPS"``: columns to the patient's
    left, rows to posterior) or flipped (``"RAS"``: columns to the right, rows to anterior)."""
    vol = np.asarray(volume)
    nx, ny, nz = vol.shape
    sx, sy, sz = spacing
    if orientation == "LPS":
        # LPS x = -RAS x: column c at i = nx-1-c, row r at j = ny-1-r.
        frames = np.stack([vol[::-1, ::-1, k].T for k in range(nz)])
        origin = (-(nx - 1) * sx, -(ny - 1) * sy, 0.0)
        iop = AXIAL_LPS
    else:
        frames = np.stack([vol[:, :, k].T for k in range(nz)])
        origin = (0.0, 0.0, 0.0)
        iop = AXIAL_RAS
    return write_series(folder, frames, iop=iop, origin=origin, pixel_spacing=(sy, sx), step=sz, **kw)


def ras_frames(volume, orientation="LPS") -> np.ndarray:
    """The (n, rows, cols) frames ``ras_volume_as_series`` writes for ``volume`` (e.g. its label)."""
    vol = np.asarray(volume)
    if orientation == "LPS":
        return np.stack([vol[::-1, ::-1, k].T for k in range(vol.shape[2])])
    return np.stack([vol[:, :, k].T for k in range(vol.shape[2])])
