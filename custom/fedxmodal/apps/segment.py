"""``segment``: one NIfTI file or DICOM series in, a mask in the input's own geometry out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.contract import Case
from ..data.io import is_dicom_series, load_volume, save_nifti
from ..data.preprocess import VolumePreprocessor
from .models import load_model


def guess_modality(image_path) -> tuple[str, str]:
    """(modality, how it was decided): the DICOM Modality tag, else CT if the volume holds
    Hounsfield-like air values (< -500), else MR."""
    path = Path(image_path)
    if is_dicom_series(path):
        import pydicom

        for f in sorted(path.iterdir()):
            try:
                mod = str(pydicom.dcmread(f, stop_before_pixels=True).get("Modality", ""))
            except Exception:
                continue
            if mod in ("CT", "MR"):
                return mod, "DICOM Modality tag"
    vol = load_volume(path)
    return ("CT", "intensities below -500 (Hounsfield air)") if float(vol.min()) < -500 else \
        ("MR", "no Hounsfield-like air values")


def segment_file(image, model, out, modality: str | None = None, overlay: str | None = None,
                 device: str = "auto", job_dir=None) -> np.ndarray:
    """Segment ``image`` with checkpoint ``model`` (an NVFlare global model with ``job_dir``);
    write ``out`` (uint8 class indices, the input's grid and affine). Returns the (X, Y, Z) mask."""
    engine = load_model(model, job_dir, device=device)
    if modality is None:
        modality, why = guess_modality(image)
        print(f"modality {modality} ({why}); pass --modality to override")
    pre = VolumePreprocessor(modality, engine.preprocess)
    vol = pre.prepare(Case(image=Path(image), label=None, split="test"))
    mask = engine.predict_volume(vol, pre)
    save_nifti(mask, vol.original_affine, out, dtype=np.uint8)
    if overlay:
        save_overlay(load_volume(image)[0].numpy(), mask, vol.original_affine, overlay, engine.structures)
    return mask


def save_overlay(image: np.ndarray, mask: np.ndarray, affine, out_png, structures) -> Path:
    """PNG of the three axial slices with the most foreground, mask outlined, in radiological view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    canon = nib.as_closest_canonical(nib.Nifti1Image(image.astype(np.float32), affine))
    canon_mask = nib.as_closest_canonical(nib.Nifti1Image(mask.astype(np.uint8), affine))
    img, msk = canon.get_fdata(), np.asarray(canon_mask.dataobj)
    per_slice = (msk > 0).reshape(-1, msk.shape[2]).sum(0)
    picks = sorted(np.argsort(per_slice)[-3:]) if per_slice.any() else [msk.shape[2] // 2]
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4))
    axes = np.atleast_1d(axes)
    lo, hi = np.percentile(img, [1, 99])
    cmap = plt.get_cmap("tab10")
    for ax, z in zip(axes, picks):
        # RAS array -> radiological display: rows anterior at top, patient right on the left.
        ax.imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=lo, vmax=hi)
        for c, name in enumerate(structures, start=1):
            m = np.rot90(msk[:, :, z] == c)
            if m.any():
                ax.contour(m, levels=[0.5], colors=[cmap((c - 1) % 10)], linewidths=1.2)
                ax.plot([], [], color=cmap((c - 1) % 10), label=name)
        ax.set_title(f"axial slice {z}")
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png
