"""The command line's checks that run before any heavy import: argument combinations and input
paths (``python -m fedxmodal``'s every wrong input is one line, ``error: ...``, exit 2, and a missing
file is reported at once, before torch, MONAI or NVFlare is imported); and the help formatter that
ends every option's help with its default.

Each command's parser carries its check (``set_defaults(check=...)``): a function of the parsed
arguments returning a list of problems (None entries ignored); :func:`preflight` joins them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SPLITS = ("training", "validation", "test")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
PHANTOM_SITES = ("ct-site", "mr-site", "mr-t1-site", "cect-site")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (options whose default is None or a switch's
    False say nothing more: their help says what happens without them). An action with a
    ``lazy_help`` callable gets its help from it when help is shown (e.g. the method registry's
    names, which take a heavy import)."""

    def _get_help_string(self, action):
        lazy = getattr(action, "lazy_help", None)
        text = lazy() if callable(lazy) else (action.help or "")
        default = action.default
        if (not action.option_strings or "%(default)" in text or "default" in text.lower()
                or default is None or default is False or default == argparse.SUPPRESS):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


DEVICE_HELP = "torch device: auto (CUDA if there is one, else the CPU), cpu, cuda, cuda:1, ..."
JOB_HELP = ("the NVFlare job folder that trained the model, when --model is a global model the NVFlare server "
            "persisted (FL_global_model.pt, best_FL_global_model.pt: weights only); not needed for a fedxmodal "
            "checkpoint (e.g. demo/results/fedgin_best_model.pt)")


def train_methods() -> dict:
    """``{method: its regimes among local / centralized}``: the methods ``train`` runs (supervised,
    trained on pooled slices), from the registry."""
    from ..engine.supervised import SupervisedTrainer
    from ..methods import METHODS

    return {name: tuple(r for r in ("local", "centralized") if r in cls.regimes) for name, cls in METHODS.items()
            if cls.needs_labels and issubclass(cls.trainer, SupervisedTrainer)
            and {"local", "centralized"} & set(cls.regimes)}


def oneshot_methods() -> list:
    """The self-supervised one-shot methods (superpixel pseudo-labels), from the registry."""
    from ..engine.episodic import EpisodicTrainer
    from ..methods import METHODS

    return [name for name, cls in METHODS.items() if issubclass(cls.trainer, EpisodicTrainer)]


def train_method_help() -> str:
    """``train --method``'s help: the registry's methods that ``train`` runs, and which do not."""
    from ..methods import METHODS

    methods = train_methods()
    only = [m for m, r in methods.items() if r == ("centralized",)]
    federated = [m for m, cls in METHODS.items() if cls.needs_labels and tuple(cls.regimes) == ("federated",)]
    return (f"the supervised method, one of: {', '.join(methods)} ({', '.join(only)}: --regime centralized only, "
            f"they need two domains; {', '.join(federated)} train federated only: `compare --regimes federated`)")


def structures_of(args) -> tuple[str, ...]:
    from ..data.contract import TASK_STRUCTURES

    if getattr(args, "structures", None):
        return tuple(s.strip() for s in args.structures.split(",") if s.strip())
    return TASK_STRUCTURES[args.task]


def add_task(p) -> None:
    p.add_argument("--task", choices=("abdomen", "heart"), default="abdomen",
                   help="structure set: abdomen (liver, kidney_right, kidney_left, spleen, pancreas, gallbladder) "
                        "or heart")
    p.add_argument("--structures", metavar="A,B,...",
                   help="comma-separated canonical structure names (overrides --task)")


def add_common_train(s) -> None:
    s.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    s.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and augmentation")
    s.add_argument("--spacing", type=float, default=3.0, help="in-plane spacing (mm)")
    s.add_argument("--size", type=int, default=128, help="slice size (pixels)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)


def command(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    """A sub-command's parser with :class:`HelpFormatter`."""
    return sub.add_parser(name, help=help, description=kw.pop("description", help), formatter_class=HelpFormatter,
                          **kw)


def _missing(path, what: str) -> str | None:
    return None if Path(path).exists() else f"{path}: no such file or folder ({what})"


def _file(path, what: str) -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{path}: no such file ({what})"
    if p.is_dir():
        return f"{path} is a folder, not a file ({what})"
    return None


def _job(job) -> str | None:
    if job is None:
        return None
    p = Path(job)
    if not p.is_dir():
        return f"--job {job}: no such folder (the NVFlare job folder that trained the model, e.g. jobs/fedgin)"
    if not (p / "app" / "config" / "config_fed_client.json").is_file():
        return f"--job {job}: not an NVFlare job folder (no app/config/config_fed_client.json)"
    return None


def _site(path, what: str = "a site folder with a dataset.json") -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{path}: no such folder ({what})"
    if not p.is_dir():
        return f"{path} is a file, not a site folder ({what})"
    if not (p / "dataset.json").is_file():
        return f"{path}: not a site folder (no dataset.json)"
    return None


def _image(path, what: str) -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{path}: no such file or folder ({what}: a NIfTI file or a DICOM series folder)"
    if p.is_file() and not p.name.lower().endswith(NIFTI_SUFFIXES):
        return (f"{path}: not a NIfTI file (.nii, .nii.gz) ({what}); a DICOM series is given as its folder"
                + (f", {p.parent}" if p.name.lower().endswith(".dcm") else ""))
    if p.is_dir() and not any(f.is_file() and not f.name.startswith(".") for f in p.iterdir()):
        return f"{path}: an empty folder ({what}: a DICOM series folder holds the series' files)"
    return None


def _structure_name(name: str, flag: str) -> str | None:
    """A structure name's problem: a near miss of a canonical name (``Liver``, ``right_kidney``) or
    a malformed one; a new well-formed name (sites may name others) is fine."""
    from ..data.contract import CANONICAL_STRUCTURES
    from .checkpoints import ModelError, check_structure

    try:
        check_structure(name, CANONICAL_STRUCTURES, flag)
    except ModelError as exc:
        return str(exc)
    return None


def _check_structures(args) -> list:
    if not getattr(args, "structures", None):
        return []
    names = [s.strip() for s in args.structures.split(",")]
    if any(not n for n in names):
        return [f"--structures {args.structures!r}: an empty name (comma-separated names, e.g. liver,spleen)"]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return [f"--structures: {', '.join(dup)} given twice"]
    return [e for e in (_structure_name(n, "--structures") for n in names) if e]


def _positive(args, *names) -> list:
    return [f"--{n.replace('_', '-')} must be >= 1, got {getattr(args, n)}" for n in names
            if getattr(args, n, None) is not None and getattr(args, n) < 1]


def _json_object(text, flag: str) -> list:
    if text is None:
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        return [f"{flag}: not valid JSON ({exc})"]
    return [] if isinstance(value, dict) else [f"{flag}: a JSON object is expected, e.g. '{{\"key\": 1}}'"]


def check_segment(args) -> list:
    problems = [_image(args.image, "the image to segment"), _file(args.model, "the model"), _job(args.job)]
    out = str(args.out).lower()
    if not out.endswith((*NIFTI_SUFFIXES, ".dcm")):
        problems.append(f"--out {args.out}: the mask path must end in .nii.gz or .nii (NIfTI) or .dcm (DICOM SEG)")
    elif out.endswith(".dcm") and (args.support or Path(args.image).is_file()):
        problems.append(f"--out {args.out}: a DICOM SEG (.dcm) needs a DICOM series as input (and a supervised "
                        "model); write a NIfTI mask (.nii.gz) instead")
    if args.support:
        problems += [_image(args.support[0], "the support image"), _image(args.support[1], "the support label")]
        if not args.structure:
            problems.append("--support needs --structure (the name of the structure the support label outlines, "
                            "e.g. liver)")
        else:
            problems.append(_structure_name(args.structure, "--structure"))
    else:
        alone = [flag for flag, value in (("--structure", args.structure), ("--support-label-id", args.support_label_id),
                                          ("--support-modality", args.support_modality), ("--prior", args.prior))
                 if value not in (None, False)]
        if alone:
            problems.append(f"{', '.join(alone)} only with --support (one-shot segmentation from a labelled "
                            "example); without it the model segments all its own structures")
    return problems


def check_evaluate(args) -> list:
    from .checkpoints import split_models_and_sites

    try:
        args.model, args.site_dirs = split_models_and_sites(args.model, args.site_dirs)
    except (ValueError, FileNotFoundError) as exc:
        return [str(exc)]
    return [_job(args.job)]


def check_export_bundle(args) -> list:
    return [_file(args.model, "the model"), _job(args.job)]


def check_train(args) -> list:
    problems = [_site(s) for s in args.sites] + [_site(s) for s in args.eval_sites or ()]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", args.method):
        problems.append(f"--method {args.method!r}: a method name is lower case (see --help)")
    return problems + _json_object(args.method_args, "--method-args") + _positive(args, "epochs") + \
        _check_structures(args)


def check_data(args) -> list:
    return _check_structures(args)


def check_convert(args) -> list:
    return [_missing(args.src, f"the downloaded {args.dataset} folder")]


def check_superpixels(args) -> list:
    return [_site(s) for s in args.site_dirs] + _positive(args, "n")


def check_demo(args) -> list:
    problems = _positive(args, "rounds", "local_epochs")
    if args.data:
        problems += [_site(Path(args.data) / s, "the demo needs DATA/ct-site and DATA/mr-site")
                     for s in ("ct-site", "mr-site")]
    return problems


def check_compare(args) -> list:
    return _positive(args, "rounds", "local_epochs") + _json_object(args.method_args, "--method-args")


def check_totalseg_pair(args) -> list:
    src = Path(args.src)
    return [_file(src / sub / name, f"the TotalSegmentator CT/MR pair under --src {src}")
            for sub in ("ct", "mr") for name in (f"{sub}.nii.gz", "seg.nii.gz")]


def check_factory(args) -> list:
    cmd = args.factory_func
    problems = []
    if cmd in ("sample", "morph"):
        problems += [_file(args.model, "the model"), _job(args.job)] + _positive(args, "n", "steps")
        if cmd == "sample" and args.data:
            problems.append(_site(args.data, "--data: the site's own folder, for its domain key"))
    if cmd == "adapt":
        problems += [_file(args.factory_model, "--factory-model"), _job(args.job)] + _positive(args, "steps")
    if cmd in ("run", "adapt"):
        data = Path(args.data)
        sites = args.sites if cmd == "run" else [args.source, *args.targets]
        if not data.is_dir():
            problems.append(f"--data {data}: no such folder (the folder holding the site folders; write phantom "
                            "ones with `python -m fedxmodal demo-data --factory --out DIR`)")
        else:
            missing = [s for s in sites if not (data / s / "dataset.json").is_file()]
            if missing:
                problems.append(f"--data {data}: no site folder(s) {' '.join(missing)} (found: "
                                f"{' '.join(sorted(p.name for p in data.iterdir() if (p / 'dataset.json').is_file())) or 'none'})")
    return problems


def preflight(args) -> str | None:
    """The arguments' and input paths' problems, in one line (None if none): no heavy import."""
    check = getattr(args, "check", None)
    problems = [p for p in (check(args) if check else []) if p]
    return "; ".join(dict.fromkeys(problems)) if problems else None
