"""What a model file is, before anything is built from it, and which command takes it.

Every command that loads a model (``segment``, ``segment --support``, ``evaluate``,
``export-bundle``, ``factory sample|morph|adapt``) first asks :func:`inspect_model` what the file
is and :func:`require` whether the command takes that kind; a model of another kind is refused in
one line naming its kind and what the command needs::

    error: m.pt is a one-shot model (fedcowpro: few-shot encoder; liver, spleen); segment without
    --support needs a segmentation model: ...

Kinds, from the checkpoint's own ``format`` (every trainer's ``save`` writes it), its
``train.method`` and its network record:

* ``segmentation``: a 2D U-Net trained with labels (FedGIN, the baselines, FedDA, ...);
* ``one-shot``: a self-supervised few-shot encoder (FedCoWPro, SSL-ALPNet, CoWPro) that segments
  from one labelled support volume;
* ``data-factory generator``: phase 1 of the data factory (a conditional GAN; generates slices);
* ``adapted-target``: phase 2 of the data factory (a target site's inversion encoder +
  segmentation head);
* ``NVFlare global``: a model the NVFlare server persisted (``FL_global_model.pt``): weights only,
  its settings are in the job that trained it, so it needs ``--job``; with the job its kind is the
  job's method's, and weights that belong to another kind of job are named as such.

This module imports no torch at import time: the command line checks its arguments before any
heavy import.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SEGMENTATION = "segmentation"
ONE_SHOT = "one-shot"
GENERATOR = "data-factory generator"
ADAPTED = "adapted-target"
NVFLARE = "NVFlare global"

# the ``format`` each trainer's ``save`` writes (engine/*.py CHECKPOINT_FORMAT; tests check they agree)
FORMATS = {
    "fedxmodal-unet2d/1": SEGMENTATION,
    "fedxmodal-episodic/1": ONE_SHOT,
    "fedxmodal-gan/1": GENERATOR,
    "fedxmodal-adaptation/1": ADAPTED,
}
NETWORKS = {
    SEGMENTATION: "2D U-Net",
    ONE_SHOT: "few-shot encoder",
    GENERATOR: "conditional StyleGAN generator + discriminator",
    ADAPTED: "inversion encoder + segmentation head",
}
# the top-level names of a kind's state dict: what an NVFlare global model's weights say about it
WEIGHT_SIGNATURES = {
    frozenset({"model"}): SEGMENTATION,
    frozenset({"body", "project"}): ONE_SHOT,
    frozenset({"generator", "discriminator", "generator_ema"}): GENERATOR,
    frozenset({"encoder", "seg_head"}): ADAPTED,
}
EXAMPLE_JOBS = {SEGMENTATION: "jobs/fedgin", ONE_SHOT: "jobs/fedcowpro", GENERATOR: "jobs/factory"}
USES = {
    SEGMENTATION: "segment IMAGE (no --support), evaluate, export-bundle",
    ONE_SHOT: "segment IMAGE --support SUPPORT_IMAGE SUPPORT_LABEL --structure NAME",
    GENERATOR: "factory sample, factory morph, factory adapt --factory-model",
    ADAPTED: "segment IMAGE (no --support), evaluate",
}
# command -> (kinds it takes, what it needs, in words)
COMMANDS = {
    "segment": ((SEGMENTATION, ADAPTED), "a segmentation model"),
    "segment --support": ((ONE_SHOT,), "a one-shot model (e.g. jobs/fedcowpro's)"),
    "evaluate": ((SEGMENTATION, ADAPTED), "a segmentation model"),
    "export-bundle": ((SEGMENTATION,), "a 2D U-Net segmentation model (a MONAI bundle carries a plain U-Net)"),
    "factory sample": ((GENERATOR,), "a data-factory generator (factory run's factory_model.pt)"),
    "factory morph": ((GENERATOR,), "a data-factory generator (factory run's factory_model.pt)"),
    "factory adapt": ((GENERATOR,), "a data-factory generator (factory run's factory_model.pt)"),
}
# what a command says when given a kind it does not take, where more than USES helps
ADVICE = {
    ("segment", ONE_SHOT): "add --support SUPPORT_IMAGE SUPPORT_LABEL --structure NAME to segment one "
                           "structure from one labelled example",
    ("evaluate", ONE_SHOT): "a one-shot model segments from a support: segment IMAGE --support ... "
                            "(its one-shot Dice is in the job's cross-site results)",
}


class ModelError(ValueError):
    """A model file that the command cannot use; ``str()`` is one line naming the file."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is. ``job``: the job folder its settings come from (an NVFlare global model
    with ``--job``); ``weights``: for an NVFlare global model, the kind its weights look like."""

    path: Path
    kind: str
    method: str | None = None
    structures: tuple[str, ...] = ()
    network: str = ""
    norm_branches: int = 1
    job: Path | None = None
    weights: str | None = None
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """``one-shot model (method fedcowpro, few-shot encoder; structures liver, spleen)``."""
        if self.kind == NVFLARE:
            looks = f"; its weights look like {_article(self.weights)} {self.weights} model's" if self.weights else ""
            return f"NVFlare global model (weights only, its settings are in the job that trained it{looks})"
        inside = f"structures {', '.join(self.structures)}" if self.structures else "no structures"
        what = f"method {self.method}, {self.network}" if self.method else self.network
        return f"{self.kind} model ({what}; {inside})"


def _article(word: str | None) -> str:
    word = (word or "").lower()
    if word.startswith("one"):  # "a one-shot model"
        return "a"
    return "an" if word[:1] in ("a", "e", "i", "o") or word.startswith("nvflare") else "a"


def _weights_kind(state) -> str | None:
    if not isinstance(state, dict) or not state:
        return None
    return WEIGHT_SIGNATURES.get(frozenset(str(k).split(".", 1)[0] for k in state))


def read_job_args(job) -> dict:
    """The site arguments of an NVFlare job folder (``app/config/config_fed_client.json``).

    Raises:
        ModelError: no such folder, not a job folder, no fedxmodal site script arguments.
    """
    job = Path(job)
    if not job.is_dir():
        raise ModelError(f"--job {job}: no such folder (pass the NVFlare job folder that trained the model, "
                         "e.g. jobs/fedgin)")
    if not (job / "app" / "config" / "config_fed_client.json").is_file():
        raise ModelError(f"--job {job}: not an NVFlare job folder (no app/config/config_fed_client.json)")
    from .models import job_site_args

    try:
        return job_site_args(job)
    except ValueError as exc:  # unreadable JSON, no fedxmodal site script arguments
        raise ModelError(f"--job {job}: {_first_line(exc)}") from None


def _kind_of_method(method: str | None) -> str:
    from ..methods import method_class

    try:
        fmt = method_class(method).trainer.checkpoint_format
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return FORMATS.get(fmt, fmt)


def _norm_branches(network) -> int:
    if isinstance(network, dict):
        try:
            return int(network.get("norm_branches", 1) or 1)
        except (TypeError, ValueError):
            return 1
    return 1


def inspect_model(path, job=None, ckpt=None) -> ModelInfo:
    """What ``path`` is (loads it on the CPU; ``ckpt``: the already loaded content).

    Args:
        path: a fedxmodal checkpoint or an NVFlare global model.
        job: the job folder given with it (``--job``), if any.
        ckpt: the file's content when already loaded.

    Raises:
        ModelError: no such file, not a PyTorch file, an unknown format, a job folder that is not
            one, weights that belong to another kind of job than ``job``.
    """
    path = Path(path)
    if ckpt is None:
        if not path.is_file():
            raise ModelError(f"{path}: model file not found" if not path.is_dir() else
                             f"{path} is a folder, not a model file")
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # pickle, zip and torch errors of every kind
            raise ModelError(f"{path}: not a PyTorch model file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict):
        raise ModelError(f"{path}: not a fedxmodal model (a {type(ckpt).__name__}, not a checkpoint dict)")
    fmt = ckpt.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise ModelError(f"{path}: a checkpoint of format {fmt!r}, which this fedxmodal does not know "
                             f"(known: {', '.join(FORMATS)})")
        kind = FORMATS[fmt]
        notes = ()
        if job is not None:
            notes = (f"{path.name} is a fedxmodal checkpoint that carries its own settings: --job {job} is not "
                     "needed and is ignored",)
        train = ckpt.get("train") or {}
        return ModelInfo(path, kind, method=train.get("method") or None, structures=tuple(ckpt.get("structures") or ()),
                         network=NETWORKS[kind], norm_branches=_norm_branches(ckpt.get("network")), notes=notes)
    if "model" not in ckpt:
        raise ModelError(f"{path}: not a fedxmodal model (no 'format' and no 'model' entry; keys "
                         f"{sorted(map(str, ckpt))[:6]})")
    weights = _weights_kind(ckpt["model"])
    if job is None:
        return ModelInfo(path, NVFLARE, weights=weights)
    args = read_job_args(job)
    kind = _kind_of_method(args.get("method"))
    if weights is not None and weights != kind:
        example = f", e.g. {EXAMPLE_JOBS[weights]}" if weights in EXAMPLE_JOBS else ""
        raise ModelError(f"{path} does not fit --job {job}: the job trains {_article(kind)} {kind} model (method "
                         f"{args.get('method')}, {NETWORKS.get(kind, kind)}) but these weights are {_article(weights)} "
                         f"{weights} model's ({NETWORKS.get(weights, weights)}); pass the job that trained it"
                         f"{example}")
    model_args = (args.get("model") or {}).get("args") or {}
    return ModelInfo(path, kind, method=args.get("method"), structures=tuple(args.get("structures") or ()),
                     network=NETWORKS.get(kind, kind), norm_branches=_norm_branches(model_args), job=Path(job),
                     weights=weights)


def require(info: ModelInfo, command: str) -> ModelInfo:
    """Refuse ``info`` if ``command`` does not take its kind (one line: the kind, what is needed).

    Raises:
        ModelError: ``"<path> is a <kind> model (<method>: ...); <command> needs ..."``.
    """
    kinds, need = COMMANDS[command]
    name = "segment without --support" if command == "segment" else command
    if info.kind == NVFLARE:
        if info.weights is not None and info.weights not in kinds:
            raise ModelError(f"{info.path} is an {info.describe()}; {name} needs {need}; "
                             f"{_article(info.weights)} {info.weights} model is for: {USES[info.weights]} "
                             f"(with --job, e.g. --job {EXAMPLE_JOBS.get(info.weights, 'JOB')})")
        example = EXAMPLE_JOBS.get(info.weights or "", "jobs/fedgin")
        raise ModelError(f"{info.path} is an {info.describe()}; {name} needs its job folder: add --job JOB "
                         f"(e.g. --job {example})")
    if info.kind in kinds:
        if command == "export-bundle" and info.norm_branches != 1:
            raise ModelError(f"{info.path} is a {info.describe()} with {info.norm_branches} normalisation branches "
                             f"(method {info.method!r}); export-bundle needs a plain U-Net (norm_branches == 1): "
                             "a MONAI bundle cannot carry per-domain normalisation")
        return info
    advice = ADVICE.get((command, info.kind)) or f"{_article(info.kind)} {info.kind} model is for: {USES[info.kind]}"
    raise ModelError(f"{info.path} is {_article(info.kind)} {info.describe()}; {name} needs {need}; {advice}")


def load_checked(path, job, command: str, device: str = "auto", info: ModelInfo | None = None):
    """Inspect ``path`` (unless ``info`` is given), :func:`require` it for ``command``, then build its trainer.

    Returns:
        (trainer, :class:`ModelInfo`). Notes (e.g. an ignored ``--job``) go to stderr.

    Raises:
        ModelError: see :func:`inspect_model` and :func:`require`; weights that do not fit the
            job's network (another number of structures, other widths).
    """
    info = require(info or inspect_model(path, job), command)
    for note in info.notes:
        print(f"note: {note}", file=sys.stderr)
    from ..methods import load_trainer

    if info.job is None:
        try:
            return load_trainer(path, device=device), info
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"{path}: its weights do not fit the network its settings describe "
                             f"({_first_line(exc)})") from None
    from .models import trainer_from_fl_model

    try:
        return trainer_from_fl_model(path, info.job, device=device), info
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"{path} does not fit --job {info.job} (method {info.method}): its weights do not fit the "
                         f"job's {info.network} ({_first_line(exc)}); pass the job that trained it") from None


def _first_line(exc) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


# ---- structure names ---------------------------------------------------------------------------
STRUCTURE_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_structure(name: str, known, flag: str = "--structure") -> bool:
    """Check a structure name against ``known`` ones (e.g. the canonical names and the model's).

    Returns:
        True for a known name; False for a new, well-formed one (lower case, digits, underscores)
        that is not a near miss of a known one (e.g. ``aorta``, ``bladder``: sites may name others).

    Raises:
        ModelError: a near miss of a known name (``Liver``, ``kidney-right``, ``right_kidney``,
            ``livr``), naming it, or a malformed name.
    """
    known = list(dict.fromkeys(known))
    if name in known:
        return True
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    words = sorted(norm.split("_"))
    close = [k for k in known if k == norm or sorted(k.split("_")) == words]
    close = close or difflib.get_close_matches(norm, known, n=1, cutoff=0.85)
    if close:
        raise ModelError(f"{flag} {name!r}: unknown structure name; did you mean {close[0]}? (known: "
                         f"{', '.join(known)})")
    if not STRUCTURE_NAME.fullmatch(name):
        raise ModelError(f"{flag} {name!r}: a structure name is lower case letters, digits and underscores "
                         f"(known: {', '.join(known)})")
    return False


# ---- evaluate's checkpoints and site folders ---------------------------------------------------
def split_models_and_sites(models, site_dirs) -> tuple[list[str], list[str]]:
    """``evaluate``'s checkpoints and site folders, whatever their order on the command line:
    ``--model`` takes several values, so ``--model A.pt site1 site2`` hands it the site folders
    too; folders among them are site folders. Raises ``FileNotFoundError`` naming a path that is
    neither, and ``ValueError`` when no checkpoint or no site folder is left."""
    ckpts, sites = [], list(site_dirs)
    for item in models:
        path = Path(item)
        if path.is_dir():
            sites.append(item)
        elif path.is_file():
            ckpts.append(item)
        else:
            raise FileNotFoundError(f"{item}: not found (neither a model checkpoint nor a site folder)")
    for item in sites:
        if Path(item).is_file():
            raise ValueError(f"{item} is a file, not a site folder: pass checkpoints with --model")
        if not Path(item).exists():
            raise FileNotFoundError(f"{item}: not found (a site folder with a dataset.json)")
        if not (Path(item) / "dataset.json").is_file():
            raise FileNotFoundError(f"{item}: not a site folder (no dataset.json)")
    if not ckpts:
        raise ValueError("no model checkpoint: pass one or more with --model CKPT")
    if not sites:
        raise ValueError(f"no site folder to evaluate on (--model got {', '.join(models)}): "
                         "pass site folders (folders with a dataset.json)")
    return ckpts, sites
