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
