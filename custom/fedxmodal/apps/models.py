"""Models for ``evaluate``, ``segment`` and ``demo``: a trainer's checkpoint, or a global model
persisted by the NVFlare server made usable with its job folder.

The server's ``FL_global_model.pt`` / ``best_FL_global_model.pt`` hold ``{"model": state_dict,
...}``; what the weights mean (structures, network, preprocessing, method) is in the job's site
arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fl.client_args import parse_client_args
from ..methods import load_trainer, trainer_from_job_args


def job_site_args(job_dir) -> dict:
    """The ``--key=value`` arguments a job gives its site script, as a dict."""
    cfg_path = Path(job_dir) / "app" / "config" / "config_fed_client.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not an NVFlare job folder (no app/config/config_fed_client.json)")
    cfg = json.loads(cfg_path.read_text())
    for ex in cfg.get("executors", []):
        script_args = ex.get("executor", {}).get("args", {}).get("task_script_args")
        if script_args is not None:
            return parse_client_args(script_args.split())
    raise ValueError(f"{cfg_path}: no task_script_args (is this a fedxmodal job?)")


def trainer_from_fl_model(model_path, job_dir, device: str = "auto"):
    """A trainer holding the weights of a server-persisted global model (the trainer of the job's
    method: supervised or episodic)."""
    trainer = trainer_from_job_args(job_site_args(job_dir), device=device)
    ckpt = torch.load(Path(model_path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{model_path}: not an NVFlare PyTorch model file (no 'model' entry)")
    trainer.set_weights(ckpt["model"])
    trainer.meta = {"source": str(model_path), "job": str(job_dir), **ckpt.get("fedxmodal_state", {})}
    return trainer


def load_model(model_path, job_dir=None, device: str = "auto"):
    """A fedxmodal checkpoint, or (with ``job_dir``) a server-persisted NVFlare global model."""
    if job_dir is not None:
        return trainer_from_fl_model(model_path, job_dir, device=device)
    return load_trainer(model_path, device=device)


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
        if not (Path(item) / "dataset.json").is_file():
            raise FileNotFoundError(f"{item}: not a site folder (no dataset.json)")
    if not ckpts:
        raise ValueError("no model checkpoint: pass one or more with --model CKPT")
    if not sites:
        raise ValueError(f"no site folder to evaluate on (--model got {', '.join(models)}): "
                         "pass site folders (folders with a dataset.json)")
    return ckpts, sites
