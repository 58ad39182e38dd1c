"""``export-bundle``: a trained model as a MONAI bundle that runs with MONAI alone.

    DIR/configs/metadata.json   structures, label ids, network data format, versions
    DIR/configs/inference.json  LoadImaged -> fedxmodal's preprocessing -> SliceInferer (the 2D
                                U-Net slice by slice) -> softmax -> Invertd -> argmax -> SaveImaged
    DIR/configs/logging.conf
    DIR/models/model.pt         the U-Net's state dict (MONAI's UNet, same keys)
    DIR/docs/README.md

    python -m monai.bundle run --config_file DIR/configs/inference.json --image CT.nii.gz [--modality CT|MR]

writes ``<output_dir>/<name>_seg.nii.gz`` in the input's own geometry (``output_dir`` defaults to
``DIR/eval``). ``modality`` defaults to ``auto``: each image is CT if it holds Hounsfield air values
(< -500), else MR -- ``segment``'s rule for a NIfTI file; ``--modality`` (at export or at run time)
forces one. The preprocessing is ``data/preprocess.py``'s, spelled with MONAI transforms: CT
clamp to the window, MR clip at the 99.5th percentile (``ClipIntensityPercentiles``), chosen per
image (``Lambdad``), z-score (``Lambdad``: fedxmodal's, with the sample standard
deviation; ``NormalizeIntensityd`` uses the population one), ``Orientationd`` RAS, ``Spacingd``
(in-plane spacing, slice spacing kept), ``ResizeWithPadOrCropd`` (edge padding). One numerical
difference remains (docs/clinical-outputs.md): for MR volumes over 8 M voxels fedxmodal takes the
percentile on a strided sample, MONAI on every voxel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .. import __version__
from .checkpoints import load_checked
from .dicom_seg import file_digest

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def check_exportable(engine) -> None:
    """Refuse what a plain MONAI ``UNet`` in a bundle cannot reproduce.

    Raises:
        ValueError: multi-branch normalisation (DSBN, Dual-Norm: ``norm_branches > 1``), or a method
            whose inference changes the network input (checked numerically on a random batch).
    """
    if engine.network.norm_branches != 1:
        raise ValueError(f"the network has {engine.network.norm_branches} normalisation branches "
                         f"(method {engine.train_config.method!r}); a MONAI bundle can carry only a plain U-Net "
                         "(norm_branches == 1)")
    model = engine.model.eval()
    size = engine.preprocess.size
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0)).to(engine.device)
    with torch.no_grad():
        if not torch.allclose(engine.method.infer(model, x), model(x), atol=1e-5):
            raise ValueError(f"method {engine.train_config.method!r} transforms the network input at inference; "
                             "a MONAI bundle of the plain U-Net would not reproduce its masks")


def _t(target: str, **kw) -> dict:
    return {"_target_": target, **kw}


BUNDLE_MODALITIES = ("auto", "CT", "MR")


def inference_config(engine, bundle_root, modality: str = "auto") -> dict:
    """The ``inference.json`` content for ``engine`` (see the module docstring)."""
    net, pre = engine.network, engine.preprocess
    size = pre.size
    lo, hi = pre.ct_window
    keys = "image"
    return {
        "imports": ["$import glob", "$import numpy", "$import torch"],
        "bundle_root": str(Path(bundle_root).resolve()),
        "image": "$@bundle_root + '/sample.nii.gz'",
        "output_dir": "$@bundle_root + '/eval'",
        "modality": modality,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": _t("monai.networks.nets.UNet", spatial_dims=2, in_channels=1,
                          out_channels=len(engine.structures) + 1, channels=list(net.channels),
                          strides=list(net.strides), num_res_units=net.num_res_units, norm=net.norm,
                          dropout=net.dropout),
        "network": "$@network_def.to(@device)",
        "datalist": "$[{'image': f} for f in (sorted(glob.glob(@image)) or [@image])]",
        # per image: --modality CT / MR, or auto (segment's rule for a NIfTI file: Hounsfield air -> CT)
        "is_ct": "$lambda x: @modality.upper() == 'CT' or (@modality.lower() == 'auto' and float(x.min()) < -500)",
        "ct_clip": f"$lambda x: x.clamp({float(lo)!r}, {float(hi)!r})",
        "mr_clip": _t("ClipIntensityPercentiles", lower=None, upper=pre.mr_upper_percentile),
        "intensity_clip": _t("Lambdad", keys=keys, func="$lambda x: @ct_clip(x) if @is_ct(x) else @mr_clip(x)"),
        "preprocessing": _t("Compose", transforms=[
            _t("LoadImaged", keys=keys, reader="NibabelReader", image_only=True, ensure_channel_first=True),
            "@intensity_clip",
            # fedxmodal's z-score (sample standard deviation); NormalizeIntensityd divides by the
            # population one, which flipped a near-tie voxel in the tests
            _t("Lambdad", keys=keys, func="$lambda x: (x - x.mean()) / (x.std() if x.std() > 1e-6 else 1.0)"),
            _t("Orientationd", keys=keys, axcodes="RAS", labels=[["L", "R"], ["P", "A"], ["I", "S"]]),
            _t("Spacingd", keys=keys, pixdim=[pre.spacing, pre.spacing, -1], mode="bilinear",
               padding_mode="border"),
            _t("ResizeWithPadOrCropd", keys=keys, spatial_size=[size, size, -1], mode="edge")]),
        "dataset": _t("Dataset", data="@datalist", transform="@preprocessing"),
        "inferer": _t("SliceInferer", roi_size=[size, size], spatial_dim=2, sw_batch_size=32, progress=False),
        "postprocessing": _t("Compose", transforms=[
            _t("Activationsd", keys="pred", softmax=True),
            _t("Invertd", keys="pred", transform="@preprocessing", orig_keys=keys, nearest_interp=False,
               to_tensor=True),
            _t("AsDiscreted", keys="pred", argmax=True),
            _t("SaveImaged", keys="pred", output_dir="@output_dir", output_postfix="seg",
               output_dtype="$numpy.uint8", resample=False, separate_folder=False)]),
        "predict": "$lambda d: dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0].cpu())",
        "initialize": [
            "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', map_location=@device, "
            "weights_only=True))",
            "$@network.eval()",
            "$torch.set_grad_enabled(False)"],
        "run": ["$[@postprocessing(@predict(@dataset[i])) for i in range(len(@dataset))]"],
    }


def metadata(engine, modality: str, source: dict) -> dict:
    """The ``metadata.json`` content: structures, label ids, data format, versions, provenance."""
    import monai
    import nibabel
    import numpy

    labels = {"background": 0, **{s: i for i, s in enumerate(engine.structures, start=1)}}
    size = engine.preprocess.size
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by fedxmodal {__version__} export-bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": nibabel.__version__},
        "name": f"fedxmodal {engine.train_config.method} 2D U-Net",
        "task": "Cross-modality (CT and MR) segmentation of " + ", ".join(engine.structures),
        "description": "A 2D U-Net applied slice by slice to axial slices, trained with fedxmodal "
                       f"(method {engine.train_config.method}); one model for CT and MR inputs "
                       "(the intensity normalisation by 'modality': auto = CT where the image holds Hounsfield "
                       "air values below -500, else MR).",
        "authors": "fedxmodal",
        "copyright": "the federation that trained the model",
        "data_source": "the training sites of the federation (no image left a site)",
        "data_type": "nibabel",
        "image_classes": "one channel: a CT (Hounsfield units) or MR volume",
        "label_classes": ", ".join(f"{i} {s}" for s, i in labels.items()),
        "pred_classes": ", ".join(f"{i} {s}" for s, i in labels.items()),
        "intended_use": "research only, not for clinical diagnosis",
        "structures": list(engine.structures),
        "label_ids": labels,
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": {"CT": "hounsfield", "MR": "magnitude"}.get(modality, "hounsfield or magnitude"),
                "modality": "CT or MR", "num_channels": 1, "spatial_shape": [size, size], "dtype": "float32",
                "value_range": [], "is_patch_data": False, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(labels),
                "spatial_shape": [size, size], "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                "channel_def": {str(i): s for s, i in labels.items()}}}},
        "fedxmodal": {"preprocess": engine.preprocess.to_dict(), "network": engine.network.to_dict(),
                      "method": engine.train_config.method, "default_modality": modality, **source},
    }


def export_bundle(model, out, job_dir=None, modality: str | None = None) -> Path:
    """Write checkpoint ``model`` (with ``job_dir`` for an NVFlare global model) as a MONAI bundle.

    Args:
        model: fedxmodal checkpoint or NVFlare global model path.
        out: bundle folder (created; an existing bundle there is replaced).
        job_dir: the job folder when ``model`` is a server-persisted NVFlare global model.
        modality: default ``modality`` of ``inference.json``: ``"CT"``, ``"MR"`` or None / ``"auto"``
            (guessed per image as ``segment`` does); ``--modality`` overrides it at run time.

    Returns:
        ``out``.
    """
    modality = modality or "auto"
    if modality not in BUNDLE_MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(BUNDLE_MODALITIES)}, got {modality!r}")
    engine, _ = load_checked(model, job_dir, "export-bundle", device="cpu")
    check_exportable(engine)
    out = Path(out)
    for sub in ("configs", "models", "docs"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(engine.model.state_dict(), out / "models" / "model.pt")
    source = {"checkpoint": Path(model).name, "checkpoint_sha256": file_digest(model)}
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata(engine, modality, source), indent=2) + "\n")
    (out / "configs" / "inference.json").write_text(json.dumps(inference_config(engine, out, modality), indent=2)
                                                     + "\n")
    (out / "configs" / "logging.conf").write_text(LOGGING_CONF)
    (out / "docs" / "README.md").write_text(_readme(engine, out))
    return out


def _readme(engine, out: Path) -> str:
    labels = ", ".join(f"{i} {s}" for i, s in enumerate(engine.structures, start=1))
    return f"""# fedxmodal {engine.train_config.method} 2D U-Net as a MONAI bundle

Labels: 0 background, {labels}. Needs MONAI, PyTorch, nibabel and python-fire (the command line of
`python -m monai.bundle`); not fedxmodal. Run it with the Python that has them (in a fedxmodal
checkout: `.venv/bin/python`).

```bash
python -m monai.bundle run --config_file {out.resolve()}/configs/inference.json \\
    --image /data/case.nii.gz --output_dir /data/masks [--modality CT|MR]
```

`--image` takes a NIfTI file or a glob pattern (quote it); `--modality` (intensity normalisation) is
`auto` unless given: each image is CT if it holds Hounsfield air values (below -500), else MR, as
`python -m fedxmodal segment` decides for a NIfTI file; pass `--modality CT` or `MR` to force it (an
MR volume with negative values, a CT without air). The mask `<name>_seg.nii.gz` is written in the
input's own grid and affine.
`bundle_root` is this folder's path at export time: pass `--bundle_root NEW_PATH` after moving it.
"""
