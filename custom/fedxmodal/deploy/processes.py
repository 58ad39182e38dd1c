"""Processes and host resources of a local NVFlare federation: ports, GPUs, the ``nvflare`` CLI,
a Python without fedxmodal, and the processes started for a federation (found through ``/proc``).

Every process a :class:`fedxmodal.deploy.federation.Federation` starts carries ``FEDXMODAL_DEPLOY=<root>::<participant>``
in its environment; NVFlare passes it on to the job processes it spawns, so :func:`federation_processes`
finds all of them. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence

MARKER_ENV = "FEDXMODAL_DEPLOY"
LOOPBACK = "127.0.0.1"

__all__ = ["DeployError", "LiveProcess", "MARKER_ENV", "LOOPBACK", "federation_processes", "free_port",
           "host_gpu_ids", "port_is_free", "python_without_package", "run_nvflare_cli", "signal_all"]


class DeployError(RuntimeError):
    """Something about a federation went wrong; the message says what and where to look."""


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as NVFlare's listener: old
    connections of a killed server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
            return True
        except OSError:
            return False


def host_gpu_ids() -> List[int]:
    """GPU ids NVFlare sees on this host (``nvidia-smi``); [] without GPUs."""
    try:
        from nvflare.fuel.utils.gpu_utils import get_host_gpu_ids

        return list(get_host_gpu_ids())
    except Exception:
        return []


def run_nvflare_cli(python: str, args: Sequence[str], root: Path, env_extra: Optional[Mapping[str, str]] = None,
                 timeout: float = 300, home: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run ``python -m nvflare.cli ARGS`` in ``root`` with HOME = ``home`` (default <root>/home):
    the ~/.nvflare/config.conf the CLI writes stays there, not in the user's home."""
    home = Path(home) if home else root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    env["HOME"] = str(home)
    env.update(env_extra or {})
    proc = subprocess.run([python, "-m", "nvflare.cli", *args], env=env, cwd=str(root), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DeployError(f"`nvflare {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def python_without_package(dest: Path, package: str = "fedxmodal", python: Optional[str] = None) -> Path:
    """A Python that sees this environment's installed packages EXCEPT an editable ``package``.

    Sites of a real federation do not have fedxmodal installed: the code travels with the job
    (``app/custom/``). To run a local federation the same way, this creates a venv (no pip) whose
    site-packages holds one plain ``.pth`` line pointing at the current site-packages: the
    packages there become importable, but the ``.pth`` files inside it -- among them the editable
    install's -- are not processed. Returns the venv's python; raises DeployError if ``package``
    is still importable with it.
    """
    dest = Path(dest)
    exe = dest / "bin" / "python"
    if not exe.exists():
        base = python or str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
        subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
        purelib = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
        lines = [sysconfig.get_paths()["purelib"]]
        if sysconfig.get_paths()["platlib"] != lines[0]:
            lines.append(sysconfig.get_paths()["platlib"])
        (purelib / "deploy_deps.pth").write_text("\n".join(lines) + "\n")
    probe = subprocess.run(
        [str(exe), "-c", f"import nvflare, importlib.util as u; print(u.find_spec({package!r}) is None)"],
        capture_output=True, text=True, cwd=str(dest), env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if probe.stdout.strip() != "True":
        raise DeployError(f"{exe}: cannot build a Python without {package}: {probe.stdout}{probe.stderr}")
    return exe


# --------------------------------------------------------------------------------------------
# processes of a federation (/proc)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveProcess:
    pid: int
    participant: str
    cmdline: str


def _proc_marker(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = MARKER_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def federation_processes(root: os.PathLike, participant: Optional[str] = None) -> List[LiveProcess]:
    """Live (non-zombie) processes started for the federation at ``root`` (optionally one participant)."""
    root = str(Path(root).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        marker = _proc_marker(pid)
        if not marker or "::" not in marker:
            continue
        where, name = marker.rsplit("::", 1)
        if where != root or (participant is not None and name != participant):
            continue
        if _proc_state(pid) in ("Z", "X", "?"):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append(LiveProcess(pid, name, cmd))
    return found


def signal_all(procs: Iterable[LiveProcess], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)
