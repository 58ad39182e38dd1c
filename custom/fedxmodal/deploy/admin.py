"""A federation's admin side: the FLARE API session (``nvflare.fuel.flare_api``) as an admin user
-- wait until the server and sites are up, submit a job, follow it, read its logs, download its
results, abort what is unfinished. :class:`~fedxmodal.deploy.federation.Federation` inherits this;
the start and stop of the kits' processes is there."""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .processes import DeployError

TERMINAL_PREFIX = "FINISHED"  # a job's status once it has ended (FINISHED:COMPLETED, FINISHED:ABORTED, ...)


class FederationAdmin:
    """FLARE API calls of a federation. The host class provides ``admin`` (the admin user),
    ``admin_kit`` (its startup kit), ``server``, ``_alive(name)`` (whether a participant has
    processes) and ``log_tail(name)``."""

    admin: str
    server: str

    @contextlib.contextmanager
    def session(self, timeout: float = 10.0, user: Optional[str] = None, kit: Optional[os.PathLike] = None):
        """A FLARE API session as the admin user (or ``user`` with its ``kit``)."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            s = new_secure_session(user or self.admin, str(kit or self.admin_kit), timeout=timeout)  # quiet
        try:
            yield s
        finally:
            with contextlib.suppress(Exception):
                s.close()

    def wait_server(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if not self._alive(self.server):
                raise DeployError(f"the server exited while starting:\n{self.log_tail(self.server)}")
            try:
                with self.session(timeout=5.0) as s:
                    s.get_system_info()
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(1.0)
        raise DeployError(f"the server did not accept admin logins within {timeout:.0f} s ({last}):\n"
                          f"{self.log_tail(self.server)}")

    def connected_sites(self) -> List[str]:
        with self.session() as s:
            return sorted(c.name for c in s.get_system_info().client_info)

    def wait_sites(self, sites: Sequence[str], timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        missing = set(sites)
        while missing and time.time() < deadline:
            for name in list(missing):
                if not self._alive(name):
                    raise DeployError(f"site '{name}' exited while starting:\n{self.log_tail(name)}")
            try:
                missing -= set(self.connected_sites())
            except Exception:
                pass
            if missing:
                time.sleep(1.0)
        if missing:
            raise DeployError(f"site(s) {sorted(missing)} did not connect within {timeout:.0f} s:\n"
                              + "\n".join(self.log_tail(n) for n in sorted(missing)))

    def submit(self, job_dir: os.PathLike) -> str:
        """Submit a job folder (FLARE API ``submit_job``); returns the job id."""
        job_dir = Path(job_dir).resolve()
        if not (job_dir / "meta.json").is_file():
            raise DeployError(f"{job_dir} is not a job folder (no meta.json)")
        with self.session() as s:
            return s.submit_job(str(job_dir))

    def job_meta(self, job_id: str) -> dict:
        with self.session() as s:
            return s.get_job_meta(job_id)

    def wait_job(self, job_id: str, timeout: float = 0.0, poll: float = 1.0,
                 on_status: Optional[Callable[[dict], None]] = None) -> dict:
        """Follow a job until it ends (status ``FINISHED:...``); returns its meta. The server may
        be unreachable for a while (restart): the session is re-opened until ``timeout``."""
        deadline = time.time() + timeout if timeout else None
        meta, last_error, session = None, None, None
        stack = contextlib.ExitStack()
        try:
            while True:
                try:
                    if session is None:
                        session = stack.enter_context(self.session(timeout=5.0))
                    meta = session.get_job_meta(job_id)
                    last_error = None
                except Exception as e:  # server (briefly) unreachable: reconnect next time
                    last_error, session = e, None
                    stack.close()
                    stack = contextlib.ExitStack()
                if meta is not None and last_error is None:
                    if on_status:
                        on_status(meta)
                    if str(meta.get("status", "")).startswith(TERMINAL_PREFIX):
                        return meta
                if deadline and time.time() > deadline:
                    raise DeployError(f"job {job_id} did not finish within {timeout:.0f} s "
                                      f"(status {meta.get('status') if meta else None}; {last_error or ''})")
                time.sleep(poll)
        finally:
            stack.close()

    def job_log(self, job_id: str, target: str = "server", pattern: Optional[str] = None) -> str:
        """The job's log at ``target`` (``server`` or a site) as kept by the server, optionally
        only the lines matching the regular expression ``pattern``."""
        with self.session() as s:
            logs = s.get_job_logs(job_id, target=target).get("logs", {})
        text = "\n".join(v for v in logs.values() if isinstance(v, str))
        if pattern:
            rx = re.compile(pattern)
            text = "\n".join(line for line in text.splitlines() if rx.search(line))
        return text

    def download(self, job_id: str, dest: os.PathLike) -> Path:
        """Download the job's results (server run folder, sites' logs) into ``dest/<job_id>``."""
        with self.session() as s:
            path = s.download_job_result(job_id, str(Path(dest).resolve()))
        if not path or not Path(path).exists():
            raise DeployError(f"download of job {job_id} returned nothing ({path})")
        return Path(path)


    @staticmethod
    def _abort_unfinished(session, wait: float = 20.0) -> List[str]:
        """Abort every job that has not finished and wait (up to ``wait`` s) until those whose
        abort was accepted have ended. A job left "RUNNING" by a server restart cannot be aborted
        (NVFlare: "not running"); it is reported, not waited for. Returns the jobs asked to abort."""
        asked, waiting = [], []
        for j in session.list_jobs():
            if str(j.get("status", "")).startswith(TERMINAL_PREFIX):
                continue
            asked.append(j["job_id"])
            try:
                session.abort_job(j["job_id"])
                waiting.append(j["job_id"])
            except Exception:
                pass
        deadline = time.time() + wait
        while waiting and time.time() < deadline:
            waiting = [j for j in waiting
                       if not str(session.get_job_meta(j).get("status", "")).startswith(TERMINAL_PREFIX)]
            if waiting:
                time.sleep(0.5)
        return asked
