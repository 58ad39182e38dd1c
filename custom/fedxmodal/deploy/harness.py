"""One experiment harness on this machine: a job spec -> its exported job -> the real ``nvflare
simulator`` -> what the run left (models, cross-site results, TensorBoard), or an error that names
the site that failed. ``compare``, the experiments and the benchmarks run their federated cells
through :func:`run_federated`; :func:`~fedxmodal.deploy.simulator.run_simulator` is the launcher
underneath.

A run's folder (``run_dir``)::

    <run_dir>/job/<name>/       the exported job
    <run_dir>/workspace/        the simulator's workspace (server/simulate_job: models, cross_site_val, tb_events)
    <run_dir>/checkpoints/      the server's round checkpoints (kept with ``resume``: an interrupted run resumes)
    <run_dir>/simulator.log     the simulator's whole output
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..recipes.export import export_job
from ..recipes.spec import load_spec
from .simulator import run_simulator

GLOBAL_MODEL, BEST_MODEL = "FL_global_model.pt", "best_FL_global_model.pt"
# a model's name in NVFlare's cross-site results: the server's models carry SRV_, a site's model its name
CSE_MODELS = {"global": f"SRV_{GLOBAL_MODEL}", "best": f"SRV_{BEST_MODEL}"}
# environment a site keeps from the caller; every other FEDXMODAL_* setting (where a site's data,
# checkpoints or state are) comes from the harness, so a user's own settings cannot redirect a run
INHERITED_SETTINGS = ("FEDXMODAL_NUM_THREADS",)
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Refused|Interrupt|Exit))(?::\s*(.*))?$")
_REFUSED = re.compile(r"OUTPUT GUARD REFUSED .*")
_BAD_RESULT = re.compile(r"Result from (\S+) is bad, error code: (\w+)")
REQUIREMENTS = ("global_model", "best_model", "cross_site")  # what run_federated may require of a run


class SimulatorFailed(RuntimeError):
    """A federated run that failed; ``site``: the site whose log shows the first error (None if
    none does), ``reason``: that error, ``log``: the log to read."""

    def __init__(self, message: str, site: Optional[str] = None, reason: Optional[str] = None,
                 log: Optional[Path] = None):
        super().__init__(message)
        self.site, self.reason, self.log = site, reason, log


@dataclass
class SiteFailure:
    site: str
    reason: str
    log: Path
    time: str = ""  # the log's time stamp of the error ("" when the line had none before it)


def site_failures(workspace: Path, sites: Sequence[str]) -> list[SiteFailure]:
    """The first error of every site that failed in a simulator workspace (an exception's last
    line, or an output-guard refusal), earliest first; sites the server reports as bad without
    an error of their own come last."""
    found = []
    for site in sites:
        for name in ("error_log.txt", "log.txt"):
            path = Path(workspace) / site / name
            if not path.is_file():
                continue
            stamp = ""
            for line in path.read_text(errors="replace").splitlines():
                if m := _TIMESTAMP.match(line):
                    stamp = m.group(1)
                exc, refused = _EXCEPTION.match(line), _REFUSED.search(line)
                if exc or refused:
                    found.append(SiteFailure(site, (exc.group(0) if exc else refused.group(0))[:1000], path, stamp))
                    break
            else:
                continue
            break
    found.sort(key=lambda f: f.time)
    server_log = Path(workspace) / "server" / "log.txt"
    if server_log.is_file():
        known = {f.site for f in found}
        for m in _BAD_RESULT.finditer(server_log.read_text(errors="replace")):
            if m.group(1) in sites and m.group(1) not in known:
                known.add(m.group(1))
                found.append(SiteFailure(m.group(1), f"the server got a bad result ({m.group(2)})", server_log))
    return found


def _failure(what: str, workspace: Path, sites: Sequence[str], log: Path) -> SimulatorFailed:
    failures = site_failures(workspace, sites)
    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:]) if log.is_file() else ""
    if not failures:
        return SimulatorFailed(f"{what}; no site logged an error; simulator output: {log}\n{tail}", log=log)
    first = failures[0]
    others = "".join(f"\n  also site '{f.site}': {f.reason}" for f in failures[1:])
    return SimulatorFailed(f"{what}: site '{first.site}' failed: {first.reason}\n  (its log: {first.log}; simulator "
                           f"output: {log}){others}", site=first.site, reason=first.reason, log=first.log)


@dataclass
class FederatedRun:
    """What a finished simulator run left, by path; :attr:`cross_site` parsed."""

    name: str
    job: Path
    workspace: Path
    checkpoints: Path
    log: Path
    sites: tuple
    num_rounds: int
    wall_s: float

    @property
    def run_dir(self) -> Path:
        """The server's run folder (``workspace/server/simulate_job``)."""
        return self.workspace / "server" / "simulate_job"

    @property
    def global_model(self) -> Path:
        return self.run_dir / "app_server" / GLOBAL_MODEL

    @property
    def best_model(self) -> Optional[Path]:
        """The best global model by the sites' key metric (None if the job keeps none)."""
        path = self.run_dir / "app_server" / BEST_MODEL
        return path if path.is_file() else None

    @property
    def tb_dir(self) -> Path:
        """The TensorBoard events the sites streamed to the server (one folder per site; read with
        :func:`fedxmodal.apps.curves.read_tb_scalars`)."""
        return self.run_dir / "tb_events"

    @property
    def server_log(self) -> Path:
        return self.workspace / "server" / "log.txt"

    def site_log(self, site: str) -> Path:
        return self.workspace / site / "log.txt"

    @property
    def cross_site_path(self) -> Path:
        return self.run_dir / "cross_site_val" / "cross_val_results.json"

    @cached_property
    def cross_site(self) -> Optional[dict]:
        """NVFlare's cross-site results ``{site: {model: metrics}}`` (None: the job ran none)."""
        return json.loads(self.cross_site_path.read_text()) if self.cross_site_path.is_file() else None

    def site_metrics(self, model: str = "global", key: str = "dice") -> dict:
        """``{site: metrics}`` every site measured on the server's ``global`` / ``best`` model (or a
        site's model, by its name) in the cross-site evaluation; an error names a site without them."""
        cse = self.cross_site
        if cse is None:
            raise _failure(f"job {self.name}: no cross-site results ({self.cross_site_path})", self.workspace,
                           self.sites, self.log)
        name = CSE_MODELS.get(model, model)
        out = {}
        for site in self.sites:
            metrics = cse.get(site, {}).get(name)
            if not metrics or key not in metrics:
                raise _failure(f"job {self.name}: site '{site}' reported no {key!r} of {name} ({self.cross_site_path})",
                               self.workspace, [site], self.log)
            out[site] = metrics
        return out

    def to_dict(self) -> dict:
        return {"job": str(self.job), "workspace": str(self.workspace), "log": str(self.log),
                "wall_s": self.wall_s, "num_rounds": self.num_rounds, "global_model": str(self.global_model),
                "best_model": str(self.best_model) if self.best_model else None,
                "cross_site": str(self.cross_site_path) if self.cross_site is not None else None}


def site_env(data_root, checkpoints, env: Optional[Mapping[str, str]] = None, threads: Optional[int] = None) -> dict:
    """The simulator's environment: the caller's without its FEDXMODAL_* settings (but
    :data:`INHERITED_SETTINGS`), the data root and checkpoint folder, ``threads`` torch threads per
    site, then ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_") or k in INHERITED_SETTINGS}
    out.update(PYTHONUNBUFFERED="1", FEDXMODAL_DATA_ROOT=str(data_root), FEDXMODAL_CHECKPOINT_DIR=str(checkpoints))
    if threads is not None:
        out["FEDXMODAL_NUM_THREADS"] = str(int(threads))
    out.update({k: str(v) for k, v in (env or {}).items()})
    return out


def discover_sites(data_root) -> list[str]:
    """The site folders (with a ``dataset.json``) in ``data_root``, sorted."""
    root = Path(data_root)
    return sorted(p.name for p in root.iterdir() if (p / "dataset.json").is_file()) if root.is_dir() else []


def run_federated(spec, data_root, run_dir, *, sites: Optional[Sequence[str]] = None, seed: Optional[int] = None,
                  threads: Optional[int] = None, env: Optional[Mapping[str, str]] = None, resume: bool = False,
                  require: Sequence[str] = ("global_model",), timeout: Optional[float] = None, echo: bool = False,
                  indent: str = "  ", cwd=None) -> FederatedRun:
    """Export ``spec`` (a spec dict or a spec file) into ``run_dir/job``, run it in the real
    ``nvflare simulator`` with every site (one thread each) reading its data from ``data_root``,
    and return the run.

    Args:
        sites: the site names (default: every site folder in ``data_root``).
        seed: the job's seed (sites' ``seed``, the initial model's ``init_seed``, the server's
            client sampling where the job samples); None: as in the spec.
        threads: torch threads per site (``FEDXMODAL_NUM_THREADS``); None: the caller's setting.
        env: further environment for the simulator (e.g. ``FEDXMODAL_SITE_STATE_DIR``).
        resume: keep ``run_dir/checkpoints`` (the server resumes an interrupted run's rounds);
            default: start fresh. The workspace is always fresh.
        require: what the run must leave (``global_model``, ``best_model``, ``cross_site``);
            :class:`SimulatorFailed` naming the failing site otherwise, as when the simulator fails.
    """
    unknown = set(require) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"require: unknown {sorted(unknown)}; choose from {list(REQUIREMENTS)}")
    spec = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else copy.deepcopy(dict(spec))
    data_root = Path(data_root).resolve()
    if seed is not None:
        spec["client_args"] = {**spec.get("client_args", {}), "seed": int(seed)}
        spec["model"].setdefault("args", {})["init_seed"] = int(seed)
        if "client_sampling_seed" in spec:
            spec["client_sampling_seed"] = int(seed)
    sites = tuple(sites or discover_sites(data_root))
    if not sites:
        raise ValueError(f"{data_root}: no site folders (folders with a dataset.json)")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    job = export_job(run_dir / "job", spec)
    workspace, checkpoints, log = run_dir / "workspace", run_dir / "checkpoints", run_dir / "simulator.log"
    shutil.rmtree(workspace, ignore_errors=True)
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    rounds = int(spec.get("num_rounds", 1))
    try:
        wall = run_simulator(job, workspace, site_env(data_root, checkpoints, env, threads), log, rounds, sites,
                             timeout=timeout, echo=echo, indent=indent, cwd=cwd)
    except RuntimeError:
        raise _failure(f"job {spec['name']}: nvflare simulator failed", workspace, sites, log) from None
    run = FederatedRun(spec["name"], job, workspace, checkpoints, log, sites, rounds, wall)
    missing = {"global_model": not run.global_model.is_file(), "best_model": run.best_model is None,
               "cross_site": run.cross_site is None}
    lacking = [r for r in REQUIREMENTS if r in require and missing[r]]
    if lacking:
        raise _failure(f"job {spec['name']}: the run left no {', '.join(lacking)} ({run.run_dir})", workspace, sites, log)
    return run
