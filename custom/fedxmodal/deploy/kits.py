"""Startup kits of a federation: the POC project, ``nvflare provision``, and each kit's local
configuration (a site's data location and resource manager, the server's timeouts and storage).

Site configuration goes into each site kit's ``local/`` folder, the site's private configuration
that jobs never touch: ``local/fedxmodal_site.json`` (``{"data_dir": ...}``, read by
:mod:`fedxmodal.fl.site_config`) and ``local/resources.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..utils import write_json_atomic
from .processes import DeployError, host_gpu_ids, run_nvflare_cli

SITE_CONFIG_FILE = "fedxmodal_site.json"
DEFAULT_PROJECT = "fedxmodal_poc"
DEFAULT_ORG = "fedxmodal"
DEFAULT_ADMIN = "admin@fedxmodal.org"
POC_SERVER = "localhost"

__all__ = ["configure_server", "configure_site_data", "configure_site_resources", "poc_project",
           "project_participants", "provision", "SITE_CONFIG_FILE", "DEFAULT_PROJECT", "DEFAULT_ORG",
           "DEFAULT_ADMIN", "POC_SERVER"]


_BUILDERS = [
    {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": ["master_template.yml"]}},
    {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
    {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
]


def poc_project(sites: Sequence[str], port: int, name: str = DEFAULT_PROJECT, admin: str = DEFAULT_ADMIN,
                org: str = DEFAULT_ORG, server: str = POC_SERVER) -> dict:
    """The project (``nvflare provision`` / ``nvflare poc prepare -i`` format) of a POC federation:
    one server on ``port`` (FL and admin traffic share it), the sites, one project admin. The
    server is named ``localhost``: NVFlare then listens on 127.0.0.1 only (any other name: all
    interfaces) and its certificate is issued for the name the sites connect to."""
    sites = list(sites)
    if not sites:
        raise ValueError("a federation needs at least one site")
    if len(set(sites)) != len(sites):
        raise ValueError(f"duplicate site names: {sites}")
    for s in sites:
        if s in (server, admin) or not s.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"invalid site name {s!r} (letters, digits, '-' and '_')")
    participants = [{"name": server, "type": "server", "org": org, "fed_learn_port": int(port),
                     "admin_port": int(port)}]
    participants += [{"name": s, "type": "client", "org": org} for s in sites]
    participants.append({"name": admin, "type": "admin", "org": org, "role": "project_admin"})
    return {"api_version": 3, "name": name, "description": "fedxmodal POC federation (loopback)",
            "participants": participants, "builders": _BUILDERS}


def _read_resources(local: Path) -> dict:
    path = local / "resources.json"
    if not path.is_file():
        path = local / "resources.json.default"
    return json.loads(path.read_text())


def configure_site_data(kit: os.PathLike, data_dir: os.PathLike, **extra) -> Path:
    """Write ``<kit>/local/fedxmodal_site.json`` = ``{"data_dir": <abs path>, **extra}``."""
    data_dir = Path(data_dir).expanduser().resolve()
    path = Path(kit) / "local" / SITE_CONFIG_FILE
    write_json_atomic(path, {"data_dir": str(data_dir), **extra})
    return path


def configure_site_resources(kit: os.PathLike, gpus: Optional[Sequence[int]] = None) -> dict:
    """Set the site's resource manager in ``<kit>/local/resources.json``; returns what was set.

    Jobs declare what a site must give them in meta.json ``resource_spec`` (fedxmodal jobs:
    ``{"@default": {"num_of_gpus": 1}}``); NVFlare schedules a job only where the site's resource
    manager says yes.

    * ``gpus`` = a non-empty list of host GPU ids: ``GPUResourceManager`` over exactly these GPUs
      (the site process also gets ``CUDA_VISIBLE_DEVICES`` = these ids, see ``Federation.start``);
      ``GPUResourceConsumer`` sets ``CUDA_VISIBLE_DEVICES`` of each job process to the GPU(s)
      NVFlare allocated to it, so the job's ``cuda`` device is the GPU it was given.
    * ``gpus`` = [] or None on a host without GPUs: ``PassthroughResourceManager`` -- a CPU site
      that accepts GPU jobs and runs them on its CPU (same code path, fedxmodal picks the device).
    * ``gpus`` = None on a host with GPUs: all host GPUs.
    """
    local = Path(kit) / "local"
    res = _read_resources(local)
    comps = [c for c in res.get("components", []) if c.get("id") not in ("resource_manager", "resource_consumer")]
    if gpus is None:
        gpus = host_gpu_ids()
    gpus = [int(g) for g in gpus]
    if gpus:
        manager = {"id": "resource_manager",
                   "path": "nvflare.app_common.resource_managers.gpu_resource_manager.GPUResourceManager",
                   "args": {"num_of_gpus": len(gpus), "mem_per_gpu_in_GiB": 0, "expiration_period": 30}}
        consumer = {"id": "resource_consumer",
                    "path": "nvflare.app_common.resource_consumers.gpu_resource_consumer.GPUResourceConsumer",
                    "args": {}}
    else:
        manager = {"id": "resource_manager",
                   "path": "nvflare.app_common.resource_managers.passthrough_resource_manager.PassthroughResourceManager",
                   "args": {}}
        consumer = {"id": "resource_consumer",
                    "path": "nvflare.app_common.resource_consumers.passthrough_resource_consumer.PassthroughResourceConsumer",
                    "args": {}}
    res["components"] = [manager, consumer, *comps]
    write_json_atomic(local / "resources.json", res)
    return {"gpus": gpus, "resource_manager": manager["path"].rsplit(".", 1)[1]}


def configure_server(kit: os.PathLike, heartbeat_timeout: Optional[float] = None,
                     storage_root: Optional[os.PathLike] = None) -> None:
    """Server kit settings in ``<kit>/local/resources.json``: ``heart_beat_timeout`` (s after which a
    silent site is dropped; NVFlare default 600) and, for provisioned kits, the job and snapshot
    storage (NVFlare's default is /tmp/nvflare/..., shared by every server on the machine)."""
    local = Path(kit) / "local"
    res = _read_resources(local)
    if heartbeat_timeout is not None:
        for srv in res.get("servers", []):
            srv["heart_beat_timeout"] = float(heartbeat_timeout)
    if storage_root is not None:
        storage_root = Path(storage_root).resolve()
        res["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(storage_root / "snapshot-storage")
        for comp in res.get("components", []):
            if comp.get("id") == "job_manager":
                comp.setdefault("args", {})["uri_root"] = str(storage_root / "jobs-storage")
    write_json_atomic(local / "resources.json", res)


def provision(project_file: os.PathLike, workspace: os.PathLike, python: Optional[str] = None) -> Path:
    """``nvflare provision -p PROJECT -w WORKSPACE``; returns the folder holding the startup kits."""
    import tempfile

    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nvflare-home-") as home:
        run_nvflare_cli(python or sys.executable, ["provision", "-p", str(Path(project_file).resolve()), "-w",
                                                str(workspace), "--force"], workspace, home=Path(home))
    import yaml

    name = yaml.safe_load(Path(project_file).read_text())["name"]
    prods = sorted((workspace / name).glob("prod_*"), key=lambda p: int(p.name.split("_")[1]))
    if not prods:
        raise DeployError(f"provisioning wrote no kits under {workspace / name}")
    return prods[-1]


def project_participants(project: Mapping) -> dict:
    """``{"server": name, "sites": [...], "admins": {name: role}}`` of a project dict."""
    parts = project["participants"]
    servers = [p["name"] for p in parts if p["type"] == "server"]
    if len(servers) != 1:
        raise DeployError(f"the project must have exactly one server, got {servers}")
    return {"server": servers[0], "sites": [p["name"] for p in parts if p["type"] == "client"],
            "admins": {p["name"]: p.get("role") for p in parts if p["type"] == "admin"}}
