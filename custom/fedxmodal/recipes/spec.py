"""Job specs: the JSON files under ``jobs/specs/`` that the committed job folders are generated from.

A spec is one flat JSON object (users edit it; ``--set key=value`` overrides a key). It is read
into a :class:`JobSpec`: the model, and four groups of settings -- how the sites run the code
(:class:`SiteRuntime`), the server's protocol settings (:class:`ServerRuntime`), what may leave a
site (:class:`Privacy`) and what ships with the job and where it may run (:class:`Packaging`).
``recipe`` names the protocol that builds the job from it (``fedavg``: the default). What a
method adds to a protocol (its server workflow, aggregator, guard declarations) comes from the
method's own module through the registry, never from the spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["JobSpec", "Packaging", "Privacy", "ServerRuntime", "SiteRuntime", "load_spec"]


@dataclass
class SiteRuntime:
    """How the sites run the job's Client API script.

    client_script: the site script (inside the shipped package it runs in place, any other is
        copied to ``app/custom/<basename>``). client_args: the site knobs, passed to the script as
        ``--key=value`` (``model``, ``key_metric`` and ``poll_interval`` are added).
    params_transfer_type: ``FULL`` (weights) or ``DIFF`` (the Client API sends differences).
    client_poll_interval: the in-process Client API's polling (s; NVFlare polls every 0.5 s).
    launch_external_process / external_command: run the script in its own process instead.
    """

    client_script: str
    client_args: Dict[str, Any] = field(default_factory=dict)
    params_transfer_type: str = "FULL"
    client_poll_interval: Optional[float] = 0.05
    launch_external_process: bool = False
    external_command: str = "python3 -u"


@dataclass
class ServerRuntime:
    """The server's protocol settings.

    num_rounds (total), min_clients (to start), clients_per_round (sampled; None: all);
    client_sampling_seed: sampled sites drawn from this seed and the round (None: NVFlare's
    unseeded draw); key_metric / selection_weigh_by_train_items: the best global model by the
    sites' validation metric (weighted like FedAvg); key_metric_lower_is_better (a distance); checkpoint_dir / resume: the checkpoint folder that outlives a
    run (``fedxmodal.fl.server``); cross_site_eval; task_request_interval / task_check_period:
    polling (s) -- NVFlare's defaults cost ~2 s a round; ignore_result_error: FedAvg's policy for
    a failed or refused site result (None: NVFlare's default).
    """

    num_rounds: int = 2
    min_clients: int = 2
    clients_per_round: Optional[int] = None
    client_sampling_seed: Optional[int] = None
    key_metric: str = "dice"
    key_metric_lower_is_better: bool = False
    selection_weigh_by_train_items: bool = True
    checkpoint_dir: str = "fedxmodal_checkpoints"
    resume: bool = True
    cross_site_eval: bool = True
    task_request_interval: float = 0.2
    task_check_period: float = 0.1
    ignore_result_error: Optional[bool] = None


@dataclass
class Privacy:
    """What may leave a site (docs/privacy.md): ``site_output_filters`` / ``server_input_filters``
    as ``[{"path", "args"}]`` in order, and ``output_guard`` (True or the
    :class:`~fedxmodal.fl.guard.OutputGuard` arguments), the sites' LAST filter."""

    site_output_filters: List[Mapping[str, Any]] = field(default_factory=list)
    server_input_filters: List[Mapping[str, Any]] = field(default_factory=list)
    output_guard: Any = None


@dataclass
class Packaging:
    """What ships and where it may run: ``extra_files`` copied into ``app/custom``,
    ``package_dir`` (the fedxmodal package to ship; default the imported one), ``resource_spec``
    (meta.json: what each site must grant, e.g. ``{"@default": {"num_of_gpus": 1}}``)."""

    extra_files: List[str] = field(default_factory=list)
    package_dir: Optional[str] = None
    resource_spec: Optional[Mapping[str, Mapping[str, Any]]] = None


_GROUPS = {"site": SiteRuntime, "server": ServerRuntime, "privacy": Privacy, "packaging": Packaging}


@dataclass
class JobSpec:
    name: str
    model: Dict[str, Any]  # {"path": "pkg.module.Class", "args": {...}}: the server's initial model
    site: SiteRuntime
    server: ServerRuntime = field(default_factory=ServerRuntime)
    privacy: Privacy = field(default_factory=Privacy)
    packaging: Packaging = field(default_factory=Packaging)
    recipe: str = "fedavg"

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> "JobSpec":
        """From the flat spec keys; an unknown key is an error that lists the known ones."""
        flat = {k: v for k, v in flat.items() if k != "_comment"}
        groups: Dict[str, Dict[str, Any]] = {g: {} for g in _GROUPS}
        owner = {f.name: g for g, c in _GROUPS.items() for f in fields(c)}
        top = {"name", "model", "recipe"}
        unknown = sorted(k for k in flat if k not in owner and k not in top)
        if unknown:
            raise ValueError(f"unknown job spec key(s) {unknown}; known: {sorted([*owner, *top])}")
        for k, v in flat.items():
            if k in owner:
                groups[owner[k]][k] = v
        for k in ("name", "model", "client_script"):
            if k not in flat:
                raise ValueError(f"job spec has no {k!r}")
        model = flat["model"]
        if not isinstance(model, Mapping) or "path" not in model:
            raise ValueError('model must be {"path": "pkg.module.Class", "args": {...}}')
        return cls(name=flat["name"], model={"path": model["path"], "args": dict(model.get("args") or {})},
                   recipe=flat.get("recipe", "fedavg"), **{g: _GROUPS[g](**kw) for g, kw in groups.items()})

    def to_dict(self) -> Dict[str, Any]:
        """The flat spec keys (the inverse of :meth:`from_dict`)."""
        out = {"name": self.name, "model": self.model, "recipe": self.recipe}
        for g in _GROUPS:
            out.update(asdict(getattr(self, g)))
        return out


def load_spec(path) -> Dict[str, Any]:
    """Read a spec file (flat keys, see :class:`JobSpec`); relative paths become relative to it."""
    path = Path(path)
    spec = json.loads(path.read_text())
    spec.pop("_comment", None)
    base = path.resolve().parent

    def rel(p):
        p = Path(p)
        return str(p if p.is_absolute() else (base / p).resolve())

    spec["client_script"] = rel(spec["client_script"])
    spec["extra_files"] = [rel(p) for p in spec.get("extra_files", [])]
    if spec.get("package_dir"):
        spec["package_dir"] = rel(spec["package_dir"])
    return spec
