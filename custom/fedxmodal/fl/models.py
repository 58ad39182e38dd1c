"""Global models persisted by the NVFlare server, made usable by ``evaluate`` and ``segment``.

The server's ``FL_global_model.pt`` / ``best_FL_global_model.pt`` hold ``{"model": state_dict,
...}``; what the weights mean (structures, network, preprocessing) is in the job's site arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.preprocess import PreprocessConfig
from ..engine.trainer import SegmentationEngine, TrainConfig
from ..networks.unet import UNetConfig
from .client_loop import parse_client_args


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


def engine_from_fl_model(model_path, job_dir, device: str = "auto") -> SegmentationEngine:
    """A ``SegmentationEngine`` holding the weights of a server-persisted global model."""
    args = job_site_args(job_dir)
    net = {k: v for k, v in args["model"]["args"].items() if k not in ("n_structures", "init_seed")}
    engine = SegmentationEngine(args["structures"], UNetConfig.from_dict(net),
                                TrainConfig.from_dict({**args.get("train", {}), "method": args.get("method", "gin")}),
                                PreprocessConfig.from_dict(args.get("preprocess")), device=device)
    ckpt = torch.load(Path(model_path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{model_path}: not an NVFlare PyTorch model file (no 'model' entry)")
    engine.set_weights(ckpt["model"])
    engine.meta = {"source": str(model_path), "job": str(job_dir), **ckpt.get("fedxmodal_state", {})}
    return engine


def load_model(model_path, job_dir=None, device: str = "auto") -> SegmentationEngine:
    """A fedxmodal checkpoint, or (with ``job_dir``) a server-persisted NVFlare global model."""
    if job_dir is not None:
        return engine_from_fl_model(model_path, job_dir, device=device)
    return SegmentationEngine.from_checkpoint(model_path, device=device)
