"""Real NVFlare federations on one machine: a POC federation or provisioned startup kits, on loopback.

This is what ``poc/fedxmodal_poc.py`` (the user's CLI) and the POC / provisioning / fault tests
drive. A :class:`Federation` is a folder of startup kits (``server``, one per site, admin users)
plus a small state file; it starts the kits' own ``startup/start.sh`` (exactly what ``nvflare poc
start`` runs), talks to the server through the FLARE API (``nvflare.fuel.flare_api``) as an admin
user -- submit, follow, download, shut down -- and finds every process it started, so that
``stop()`` leaves nothing behind.

Layout of a federation folder (the *root*, chosen by the user; nothing outside it is written)::

    <root>/federation.json          what was prepared: project, port, kit folder, sites, admin, python
    <root>/project.yml              the project file the kits were provisioned from (POC)
    <root>/nvflare/                 NVFLARE_POC_WORKSPACE of ``nvflare poc prepare`` (POC)
    <root>/nvflare/<project>/prod_00/<participant>/   the startup kits (server, sites, admin)
    <root>/home/                    HOME of the ``nvflare`` CLI calls (its ~/.nvflare/config.conf)
    <root>/site-python/             a Python without fedxmodal (:func:`python_without_package`, POC)
    <root>/bin/python3              shim: the Python the kits run (their scripts call ``python3``)
    <root>/jobs/, <root>/results/   jobs exported from specs, downloaded results (the POC CLI)

Which processes belong to a federation: every process started here carries the environment
variable ``FEDXMODAL_DEPLOY=<root>::<participant>``, and NVFlare passes its environment on to the
job processes it spawns (in their own sessions), so ``/proc/<pid>/environ`` identifies all of them
-- the ``sub_start.sh`` watchdog, the server / client parent, every job process.

Site configuration goes into each site kit's ``local/`` folder, the site's private configuration
that jobs never touch: ``local/fedxmodal_site.json`` (``{"data_dir": ...}``, read by
:mod:`fedxmodal.fl.site_config`) and ``local/resources.json`` (the site's resource manager: GPUs it
may hand to jobs, see :func:`configure_site_resources`).

The FLARE API side (session, submit, follow, logs, download): :mod:`fedxmodal.deploy.admin`;
ports, GPUs and process discovery: :mod:`fedxmodal.deploy.processes`; provisioning and kit
configuration: :mod:`fedxmodal.deploy.kits`. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..utils import write_json_atomic
from .admin import TERMINAL_PREFIX, FederationAdmin
from .kits import (DEFAULT_ADMIN, DEFAULT_PROJECT, POC_SERVER, SITE_CONFIG_FILE, configure_server,
                   configure_site_data, configure_site_resources, poc_project, project_participants, provision)
from .processes import (LOOPBACK, MARKER_ENV, DeployError, LiveProcess, federation_processes, free_port,
                        host_gpu_ids, port_is_free, python_without_package, run_nvflare_cli, signal_all)

STATE_FILE = "federation.json"
CONSOLE_LOG = "console.log"

# Server-side knobs of how fast a vanished site is given up on (NVFlare reads NVFLARE_<NAME> from
# the server's environment; defaults 60 s and 30 s). The heartbeat timeout is in the server kit's
# local/resources.json (NVFlare default 600 s).
ENV_DEAD_CLIENT_GRACE = "NVFLARE_DEAD_CLIENT_GRACE_PERIOD"
ENV_DEAD_CLIENT_LEAD = "NVFLARE_DEAD_CLIENT_CHECK_LEAD_TIME"

# The federation API; kit and process helpers are re-exported so callers need one module.
__all__ = [
    "DeployError",
    "Federation",
    "LiveProcess",
    "configure_site_data",
    "configure_site_resources",
    "configure_server",
    "federation_processes",
    "free_port",
    "host_gpu_ids",
    "poc_project",
    "port_is_free",
    "prepare_poc",
    "project_participants",
    "provision",
    "python_without_package",
    "SITE_CONFIG_FILE",
    "TERMINAL_PREFIX",
]


# --------------------------------------------------------------------------------------------
# the federation
# --------------------------------------------------------------------------------------------
@dataclass
class Federation(FederationAdmin):
    """A set of startup kits on this machine, started and stopped from here, driven through the
    FLARE API (:class:`~fedxmodal.deploy.admin.FederationAdmin`: submit, follow, download)."""

    root: Path
    prod_dir: Path
    project: str
    server: str
    admin: str
    sites: List[str]
    port: int
    kind: str = "poc"
    python: Optional[str] = None  # the interpreter the kits run (python3 of their PATH)
    site_gpus: Dict[str, List[int]] = field(default_factory=dict)
    server_env: Dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------ persistence
    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.prod_dir = Path(self.prod_dir).resolve()

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        state = asdict(self)
        state.update(root=str(self.root), prod_dir=str(self.prod_dir))
        path = self.root / STATE_FILE
        write_json_atomic(path, state)
        return path

    @classmethod
    def load(cls, root: os.PathLike) -> "Federation":
        path = Path(root) / STATE_FILE
        if not path.is_file():
            raise DeployError(f"{path} not found: no federation prepared in {root} (run `up` first)")
        return cls(**json.loads(path.read_text()))

    @classmethod
    def from_kits(cls, root: os.PathLike, prod_dir: os.PathLike, project: Mapping, admin: Optional[str] = None,
                  python: Optional[str] = None, kind: str = "provisioned") -> "Federation":
        """A federation over provisioned kits (``prod_dir`` = ``<workspace>/<project>/prod_NN``)."""
        info = project_participants(project)
        server = next(p for p in project["participants"] if p["type"] == "server")
        admins = info["admins"]
        if admin is None:
            admin = next((a for a, r in admins.items() if r == "project_admin"), None) or next(iter(admins))
        return cls(root=Path(root), prod_dir=Path(prod_dir), project=project["name"], server=info["server"],
                   admin=admin, sites=info["sites"], port=int(server.get("fed_learn_port", 8002)), kind=kind,
                   python=python)

    def kit(self, name: str) -> Path:
        path = self.prod_dir / name
        if not (path / "startup").is_dir():
            raise DeployError(f"no startup kit for '{name}' in {self.prod_dir}")
        return path

    @property
    def admin_kit(self) -> Path:
        return self.kit(self.admin)

    # ------------------------------------------------------------ processes
    def processes(self, participant: Optional[str] = None) -> List[LiveProcess]:
        return federation_processes(self.root, participant)

    def _alive(self, name: str, checks: int = 4, interval: float = 0.25) -> bool:
        """Whether ``name`` has processes; absence must persist over ~1 s (start.sh hands over to
        its sub_start.sh watchdog, which execs and forks: a single look can fall in between)."""
        for _ in range(checks):
            if self.processes(name):
                return True
            time.sleep(interval)
        return False

    def _python_shim(self) -> Path:
        """``<root>/bin/python3``: what the kits' scripts call (they run ``python3`` from PATH)."""
        python = self.python or sys.executable
        shim = self.root / "bin" / "python3"
        shim.parent.mkdir(parents=True, exist_ok=True)
        text = f'#!/bin/sh\nexec "{python}" "$@"\n'
        if not shim.exists() or shim.read_text() != text:
            shim.write_text(text)
            shim.chmod(0o755)
        return shim.parent

    def _env(self, name: str, extra: Optional[Mapping[str, str]] = None) -> dict:
        """Environment of a participant's processes: the caller's, minus its FEDXMODAL_* settings
        and Python paths (a site's data comes from its kit's local config only), ``python3`` =
        the federation's Python, the site's GPUs, ``extra``, and the marker."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("FEDXMODAL_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONUNBUFFERED"] = "1"
        if name == self.server:
            env.update(self.server_env)
        elif name in self.site_gpus and self.site_gpus[name]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.site_gpus[name])
        env.update(extra or {})
        env["PATH"] = os.pathsep.join([str(self._python_shim()), env.get("PATH") or "/usr/bin:/bin"])
        env[MARKER_ENV] = f"{self.root}::{name}"
        return env

    def start(self, names: Optional[Sequence[str]] = None, *, env: Optional[Mapping[str, str]] = None,
              site_env: Optional[Mapping[str, Mapping[str, str]]] = None, wait: bool = True,
              timeout: float = 120.0) -> None:
        """Start the server and/or sites (default: all) with their kits' ``startup/start.sh``.

        ``env``: extra environment for every process started; ``site_env``: per participant.
        With ``wait``, returns once the server accepts admin logins and the started sites are
        connected (DeployError with the tail of their logs otherwise).
        """
        names = list(names) if names else [self.server, *self.sites]
        started_server = self.server in names
        if started_server:
            if self.processes(self.server):
                raise DeployError(f"the server of {self.root} is already running")
            if not port_is_free(self.port):
                raise DeployError(f"port {self.port} on {LOOPBACK} is in use: another federation (or program) "
                                  f"holds it; stop it or prepare this federation with another port")
        for name in names:
            if name != self.server and self.processes(name):
                raise DeployError(f"'{name}' of {self.root} is already running")
        ordered = ([self.server] if started_server else []) + [n for n in names if n != self.server]
        for name in ordered:
            kit = self.kit(name)
            for f in ("shutdown.fl", "restart.fl", "pid.fl", "daemon_pid.fl"):
                (kit / f).unlink(missing_ok=True)
            merged = dict(env or {})
            merged.update((site_env or {}).get(name, {}))
            log = open(kit / CONSOLE_LOG, "a")
            log.write(f"\n--- started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            log.flush()
            subprocess.Popen([str(kit / "startup" / "start.sh")], cwd=str(kit), env=self._env(name, merged),
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            if name == self.server and wait:
                self.wait_server(timeout)
        if wait:
            self.wait_sites([n for n in ordered if n != self.server], timeout)

    def log_tail(self, name: str, n: int = 40) -> str:
        parts = []
        for fname in (CONSOLE_LOG, "log.txt"):
            path = self.prod_dir / name / fname
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                parts.append(f"--- {path} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts) or f"(no log for {name})"

    # ------------------------------------------------------------ faults / stop
    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> List[LiveProcess]:
        """Kill every process of one participant (watchdog included, so nothing restarts it)."""
        procs = self.processes(name)
        deadline = time.time() + timeout
        while procs and time.time() < deadline:
            signal_all(procs, sig)
            time.sleep(0.2)
            procs = self.processes(name)
        if procs:
            raise DeployError(f"could not kill {name}: {procs}")
        for f in ("pid.fl", "daemon_pid.fl"):
            (self.prod_dir / name / f).unlink(missing_ok=True)
        return procs

    def stop(self, timeout: float = 45.0) -> dict:
        """Shut the federation down and make sure nothing of it is left running.

        Admin ``abort_job`` for every unfinished job and ``shutdown all`` (what NVFlare's own
        ``nvflare poc stop`` does); the kits' ``shutdown.fl`` (re-created while a participant is
        still alive: NVFlare processes delete it when they start) so the ``sub_start.sh``
        watchdogs exit instead of restarting anything; after ``timeout`` s, SIGTERM then SIGKILL
        for whatever is still alive. Returns what was done (``terminated``/``killed``: the
        processes that needed force)."""
        report = {"graceful": False, "aborted_jobs": [], "terminated": [], "killed": []}
        names = [self.server, *self.sites]
        if self.processes(self.server):
            try:
                with self.session(timeout=5.0) as s:
                    report["aborted_jobs"] = self._abort_unfinished(s)
                    try:
                        s.shutdown_system()
                    except Exception as e:  # "still running jobs": they are being aborted
                        report["shutdown_note"] = str(e)
                report["graceful"] = True
            except Exception as e:
                report["shutdown_error"] = str(e)
        t0 = time.time()
        # without a server to tell them, sites only stop through their watchdogs (shutdown.fl),
        # which kill the site process but not its job processes: signal sooner
        deadline = t0 + (timeout if report["graceful"] else min(timeout, 15.0))
        while time.time() < deadline:
            procs = self.processes()
            if not procs:
                break
            if time.time() - t0 > (5.0 if report["graceful"] else 0.0):
                for name in {p.participant for p in procs}:
                    with contextlib.suppress(DeployError, OSError):
                        (self.kit(name) / "shutdown.fl").touch()
            time.sleep(0.5)
        for sig, key in ((signal.SIGTERM, "terminated"), (signal.SIGKILL, "killed")):
            left = self.processes()
            if not left:
                break
            report[key] = [asdict(p) for p in left]
            signal_all(left, sig)
            end = time.time() + 5
            while self.processes() and time.time() < end:
                time.sleep(0.2)
        left = self.processes()
        if left:
            raise DeployError(f"processes of {self.root} survive SIGKILL: {left}")
        for name in names:
            for f in ("pid.fl", "daemon_pid.fl", "shutdown.fl", "restart.fl"):
                with contextlib.suppress(DeployError):
                    (self.kit(name) / f).unlink(missing_ok=True)
        return report


# --------------------------------------------------------------------------------------------
# POC
# --------------------------------------------------------------------------------------------
def prepare_poc(root: os.PathLike, sites: Sequence[str] = ("ct-site", "mr-site"), *, port: Optional[int] = None,
                data_root: Optional[os.PathLike] = None, data: Optional[Mapping[str, os.PathLike]] = None,
                python: Optional[str] = None, site_python: Optional[str] = "isolated",
                gpus: Optional[Mapping[str, Sequence[int]]] = None, heartbeat_timeout: Optional[float] = 60.0,
                dead_site_grace: Optional[float] = None, project_name: str = DEFAULT_PROJECT,
                admin: str = DEFAULT_ADMIN) -> Federation:
    """Prepare (not start) a POC federation in ``root`` with ``nvflare poc prepare -i project.yml``.

    Args:
        root: the federation folder (created; a previous federation there must be stopped).
        sites: site names (``ct-site``, ``mr-site``, any number more).
        port: the server's port on loopback (FL + admin); default: a free one.
        data_root: a folder holding one data folder per site name; ``data``: explicit
            ``{site: data_dir}`` (wins). Each site gets ``local/fedxmodal_site.json``.
        python: interpreter for the ``nvflare`` CLI (default: this one).
        site_python: the interpreter the server and sites run: ``"isolated"`` (default) = a
            Python without fedxmodal (:func:`python_without_package`, built once in
            ``<root>/site-python``) so the jobs' own code is used, as at a real site; ``None`` =
            ``python``; or a path.
        gpus: ``{site: [gpu ids]}`` handed to each site (default: none on a CPU host; on a GPU
            host every site gets all GPUs -- pass a mapping to split them).
        heartbeat_timeout: seconds after which the server drops a silent site (NVFlare: 600).
        dead_site_grace: seconds the server waits, once a site is reported gone, before a round
            stops waiting for it (NVFlare's ``dead_client_grace_period``, default 60; the same
            value is used for ``dead_client_check_lead_time``, default 30).
    """
    root = Path(root).resolve()
    if root.exists() and (root / STATE_FILE).is_file():
        old = Federation.load(root)
        if old.processes():
            raise DeployError(f"a federation in {root} is running; stop it first (`down`)")
    root.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    if port is None:
        port = free_port()
    elif not port_is_free(port):
        raise DeployError(f"port {port} on {LOOPBACK} is in use")
    project = poc_project(sites, port, name=project_name, admin=admin)
    import yaml

    project_file = root / "project.yml"
    project_file.write_text(yaml.safe_dump(project, sort_keys=False))
    nv_ws = root / "nvflare"
    run_nvflare_cli(python, ["poc", "prepare", "-i", str(project_file), "--force"], root,
                 {"NVFLARE_POC_WORKSPACE": str(nv_ws)})
    prod = nv_ws / project_name / "prod_00"
    if site_python == "isolated":
        site_python = str(python_without_package(root / "site-python", "fedxmodal"))
    fed = Federation(root=root, prod_dir=prod, project=project_name, server=POC_SERVER, admin=admin,
                     sites=list(sites), port=int(port), kind="poc", python=site_python or python)
    server_env = {}
    if dead_site_grace is not None:
        server_env[ENV_DEAD_CLIENT_GRACE] = str(float(dead_site_grace))
        server_env[ENV_DEAD_CLIENT_LEAD] = str(float(dead_site_grace))
    fed.server_env = server_env
    configure_server(fed.kit(fed.server), heartbeat_timeout=heartbeat_timeout)
    data = {k: Path(v) for k, v in (data or {}).items()}
    for site in sites:
        src = data.get(site) or (Path(data_root) / site if data_root else None)
        if src is not None:
            if not (Path(src) / "dataset.json").is_file():
                raise DeployError(f"data folder of {site}: {src} has no dataset.json")
            configure_site_data(fed.kit(site), src)
        site_gpus = list((gpus or {}).get(site, [])) if gpus is not None else None
        fed.site_gpus[site] = configure_site_resources(fed.kit(site), site_gpus)["gpus"]
    fed.save()
    return fed
