"""The real ``nvflare simulator`` as a subprocess, with round progress: what ``demo``, ``compare``
and the benchmark run."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path


def run_simulator(job_dir: Path, workspace: Path, env: dict, log_path: Path, n_rounds: int, sites,
                  timeout: float | None = None, echo: bool = True, indent: str = "  ", cwd=None) -> float:
    """Run the real ``nvflare simulator`` (one thread per site: ``-n``/``-t`` = number of sites, so
    site processes keep their state) with ``env``; show round progress; the whole output goes to
    ``log_path``. Returns the wall time (s); raises with the log's tail if the simulator fails."""
    nvflare = Path(sys.executable).with_name("nvflare")
    cmd = [str(nvflare) if nvflare.exists() else "nvflare", "simulator", str(job_dir), "-w", str(workspace),
           "-n", str(len(sites)), "-t", str(len(sites)), "-c", ",".join(sites)]
    if echo:
        print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    round_re = re.compile(r"Round (\d+) started")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = round_re.search(line)
            if m:
                print(f"{indent}round {int(m.group(1)) + 1}/{n_rounds} started ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            elif "cross site validation" in line.lower() and "start" in line.lower():
                print(f"{indent}cross-site evaluation", flush=True)
        rc = proc.wait(timeout=timeout)
    if rc != 0:
        tail = "".join(open(log_path).readlines()[-30:])
        raise RuntimeError(f"nvflare simulator failed (exit {rc}); log: {log_path}\n{tail}")
    return time.perf_counter() - t0
