"""Small helpers shared across layers (no fedxmodal imports): arrays, atomic JSON, import by path."""

from __future__ import annotations

import importlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def as_numpy(x) -> np.ndarray:
    """A torch tensor (any device) or array-like -> numpy array (no copy where possible)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_json_atomic(path: os.PathLike, obj, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)
    return path


def import_by_path(path: str):
    """``"package.module.Name"`` -> the object (class, function) it names."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted path 'package.module.Name'")
    return getattr(importlib.import_module(module_name), attr)


def instantiate(spec: Mapping[str, Any]):
    """Build an object from ``{"path": "package.module.Class", "args": {...}}`` (as NVFlare does)."""
    return import_by_path(spec["path"])(**dict(spec.get("args") or {}))
