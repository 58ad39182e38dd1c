"""Shared helpers of the real-federation tests (test_poc.py, test_provision.py, test_faults.py).

Every federation runs on loopback in a tmp folder, on a free port, with a Python in which
fedxmodal is NOT importable (the job's app/custom must carry the code), and is always stopped in a
``finally`` (``stop()`` ends with SIGKILL for anything left and checks that nothing survives).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List

import pytest

from fedxmodal.deploy import federation as deploy
from fedxmodal.recipes.export import export_job, load_spec

REPO = Path(__file__).resolve().parents[1]
TOY_SPEC = REPO / "tests" / "fl_toy" / "toy_job.json"
FEDGIN_SPEC = REPO / "jobs" / "specs" / "fedgin.json"
POC_CLI = REPO / "poc" / "fedxmodal_poc.py"
PROJECT_YML = REPO / "poc" / "project.yml"

# Fast dead-site detection for the tests (the CLI's defaults are 60 s and NVFlare's 60 s).
HEARTBEAT_TIMEOUT = 20.0
DEAD_SITE_GRACE = 3.0


@pytest.fixture(scope="session")
def site_python(tmp_path_factory) -> str:
    """A Python seeing this environment's packages but not the editable fedxmodal install (the
    approach of tests/test_fedgin_job.py, via deploy.python_without_package)."""
    return str(deploy.python_without_package(tmp_path_factory.mktemp("site-python") / "venv", "fedxmodal"))


def make_toy_sites(root: Path, names: Iterable[str], n_training: int = 64) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "dataset.json").write_text(json.dumps(
            {"name": name, "modality": "CT", "toy": {"n_training": n_training, "n_validation": 16, "n_test": 16}}))
    return root


def export_toy_job(job_root: Path, **overrides) -> Path:
    spec = load_spec(TOY_SPEC)
    client_args = overrides.pop("client_args", {})
    spec.update(overrides)
    spec["client_args"] = {**spec["client_args"], **client_args}
    return export_job(job_root, spec)


def read_events(events_dir: Path, site: str) -> List[dict]:
    path = Path(events_dir) / f"{site}.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_mentioning(path: os.PathLike) -> List[str]:
    """Command lines of live processes whose command line or cwd is inside ``path`` (a second,
    marker-independent look for leftovers)."""
    path = str(Path(path).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if path in cmd or cwd == path or cwd.startswith(path + os.sep):
            found.append(f"{entry}: {cmd.strip()[:200]}")
    return found


def assert_nothing_left(root: Path) -> None:
    assert deploy.federation_processes(root) == [], deploy.federation_processes(root)
    assert processes_mentioning(root) == []


def listening_addresses(port: int) -> List[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` (/proc/net/tcp; IPv6 listeners
    would show in /proc/net/tcp6 and are reported as '::')."""
    import ipaddress
    import struct

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, state = fields[1], fields[3]
            host, p = addr.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            if table.endswith("6"):
                found.append("::")
            else:
                found.append(str(ipaddress.IPv4Address(struct.pack("<I", int(host, 16)))))
    return sorted(found)


def job_process_env(fed: deploy.Federation, site: str, var: str) -> Dict[int, str]:
    """``{pid: value of var}`` for the site's running job processes (NVFlare's worker_process)."""
    out = {}
    for p in fed.processes(site):
        if "worker_process" not in p.cmdline:
            continue
        try:
            env = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(var.encode() + b"="):
                out[p.pid] = item.split(b"=", 1)[1].decode()
    return out


def job_results(fed: deploy.Federation, job_id: str, dest: Path) -> Path:
    """The server's run folder of a finished job, downloaded with the FLARE API (the server keeps
    it in its job store, not in its workspace, once the job is over)."""
    return fed.download(job_id, dest) / "workspace"


def round_numbers(run_dir: Path) -> List[int]:
    path = Path(run_dir) / "metrics" / "round_metrics.jsonl"
    return [json.loads(line)["round"] for line in path.read_text().splitlines()] if path.is_file() else []
