"""What the benchmarks share: the FedGIN job they measure (``jobs/specs/fedgin.json``), a simulator
run of it through the project's harness (:func:`fedxmodal.deploy.harness.run_federated`), the
time line of that run read from NVFlare's logs, and small helpers (CPU time, load, printing,
tables). Standard library only at import time: ``plain.py`` times its own imports after this one.

    import common as bc   # from a script in benchmarks/ (its folder is on sys.path)
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import statistics
import time
import warnings
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "specs" / "fedgin.json"
SITES = ("ct-site", "mr-site")
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_TRAIN_SENT = re.compile(r"return task to client\.\s+client_name: (\S+)\s+task_name: train\s+task_id: (\S+)")
_TRAIN_GOT = re.compile(r"got result from client (\S+) for task: name=train, id=([\w-]+)")

# float(loss) on a tensor that requires grad warns once per process in torch 2.13; not our figure.
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")


# ------------------------------------------------------------------ measuring and printing
def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def load1() -> float:
    return os.getloadavg()[0]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, nd=2):
    return "n/a" if x is None or x != x else f"{x:.{nd}f}"


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ------------------------------------------------------------------ the job
def job_settings():
    """The committed FedGIN spec and what the engine needs from it:
    (spec, structures, network, train, preprocess)."""
    from fedxmodal.networks.unet import UNetConfig
    from fedxmodal.recipes.spec import load_spec

    spec = load_spec(str(SPEC))
    ca = spec["client_args"]
    # The site keeps only the U-Net's shape from the model spec (not n_structures, init_seed, ...).
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    network = {k: v for k, v in spec["model"]["args"].items() if k in fields}
    return spec, tuple(ca["structures"]), network, dict(ca.get("train", {})), dict(ca.get("preprocess", {}))


def fedgin_spec(rounds: int | None = None, local_epochs: int | None = None, **overrides) -> dict:
    """The committed FedGIN spec with ``rounds`` rounds of ``local_epochs`` epochs and ``overrides``
    (top-level spec keys)."""
    from fedxmodal.recipes.spec import load_spec

    spec = load_spec(str(SPEC))
    if rounds:
        spec["num_rounds"] = int(rounds)
    if local_epochs:
        spec["client_args"] = {**spec["client_args"], "local_epochs": int(local_epochs)}
    spec.update(overrides)
    return spec


def simulate(spec: dict, run_dir: Path, data_root: Path, timeout: int | None = None, echo: bool = False,
             require=("global_model", "cross_site")):
    """The spec in the real ``nvflare simulator`` (both sites, the job's torch threads per site);
    returns (the harness's run, launch time, exit time, CPU s of the simulator and its processes)."""
    from fedxmodal.deploy.harness import run_federated

    cpu0, t0 = children_cpu_s(), time.time()
    run = run_federated(spec, data_root, run_dir, sites=SITES, threads=int(spec["client_args"].get("num_threads", 1)),
                        timeout=timeout, echo=echo, require=require, cwd=run_dir.parent)
    return run, t0, time.time(), children_cpu_s() - cpu0


# ------------------------------------------------------------------ the simulator's logs
def log_time(line: str):
    """The time stamp of an NVFlare log line (epoch s), None if it has none."""
    m = _TS.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def log_events(path: Path, patterns: dict) -> dict:
    """{name: [timestamps of the lines matching the regex (or of the last timestamped line before
    it: NVFlare prints banners such as "Round 1 started." on untimed lines)]}."""
    out = {k: [] for k in patterns}
    regexes = {k: re.compile(v) for k, v in patterns.items()}
    prev = None
    for line in path.read_text(errors="replace").splitlines():
        t = log_time(line)
        if t is not None:
            prev = t
        for name, rx in regexes.items():
            if prev is not None and rx.search(line):
                out[name].append(prev)
    return out


def train_task_times(ws: Path) -> dict:
    """{(site, round index): (task sent, result received)} of the ``train`` tasks, from the
    server log (paired by task id; a site's tasks in the order they were sent)."""
    sent, got, prev = {}, {}, None
    for line in (ws / "server" / "log.txt").read_text(errors="replace").splitlines():
        prev = log_time(line) or prev
        if (m := _TRAIN_SENT.search(line)) and m.group(2) not in sent:
            sent[m.group(2)] = (m.group(1), prev)
        elif (m := _TRAIN_GOT.search(line)) and m.group(2) not in got:
            got[m.group(2)] = prev
    per_site: dict = {}
    for tid, (site, t) in sorted(sent.items(), key=lambda kv: kv[1][1]):
        if tid in got:
            per_site.setdefault(site, []).append((t, got[tid]))
    return {(s, r): v for s, lst in per_site.items() for r, v in enumerate(lst)}


def parse_simulator_logs(ws: Path, t0: float, t_exit: float, rounds: int) -> dict:
    """The simulator's wall time (launch ``t0`` -> exit ``t_exit``) split from its logs into
    start-up, rounds, cross-site evaluation and teardown (seconds)."""
    srv = log_events(ws / "server" / "log.txt", {
        "round": r"Round \d+ started\.", "fedavg_done": r"Finished FedAvg", "cse_done": r"ABOUT_TO_END_RUN fired",
    })
    rstarts = srv["round"]  # "Round r started." banners, in order
    site_init, site_ready = [], []
    for site in SITES:
        ev = log_events(ws / site / "log.txt", {"init": re.escape(f"[{site}] seed="), "ready": r"training slices"})
        site_init.append(ev["init"][0])
        site_ready.append(ev["ready"][0])
    # Train tasks: server hands a task to a site -> gets its result (the site's busy time, model
    # download/upload included); sites take part in every round: per round, the slower site.
    tasks = train_task_times(ws)
    n_rounds = max((r for _, r in tasks), default=-1) + 1
    busy = [max(g - s for (site, r), (s, g) in tasks.items() if r == k) for k in range(n_rounds)]
    ends = rstarts[1:rounds] + [srv["fedavg_done"][-1]]
    durations = [e - b for b, e in zip(rstarts[:rounds], ends)]
    t_server_up = rstarts[0]  # server ready, round 0 scheduled
    t_ready = max(site_ready)
    t_fedavg = srv["fedavg_done"][-1]
    t_cse = srv["cse_done"][-1] if srv["cse_done"] else t_fedavg
    steady = (t_fedavg - rstarts[1]) / (rounds - 1) if rounds > 1 and len(rstarts) > 1 else float("nan")
    return {
        "wall_s": t_exit - t0,
        "startup_s": t_ready - t0,  # launch -> both sites loaded their data and built the engine
        "startup_server_s": t_server_up - t0,  # CLI start, server up, job deployed, round 0 scheduled
        "startup_site_imports_s": max(site_init) - t_server_up,  # client processes spawned, imports, flare.init
        "startup_site_data_s": t_ready - max(site_init),  # data preparation + engine build at the sites
        "rounds_s": t_fedavg - t_ready,  # all R rounds (site ready -> FedAvg finished)
        "round0_s": rstarts[1] - t_ready if len(rstarts) > 1 else t_fedavg - t_ready,
        "per_round_steady_s": steady,  # mean of rounds 1..R-1 (server: round start -> next round start)
        # of which the slower site was busy (task handed out -> result received), rounds 1..R-1,
        # and the rest: NVFlare's scheduling, polling and aggregation
        "per_round_site_busy_s": statistics.mean(busy[1:rounds]) if rounds > 1 else float("nan"),
        "per_round_fl_gap_s": statistics.mean(d - b for d, b in zip(durations[1:], busy[1:rounds]))
        if rounds > 1 else float("nan"),
        "cse_s": t_cse - t_fedavg,
        "teardown_s": t_exit - t_cse,
    }
