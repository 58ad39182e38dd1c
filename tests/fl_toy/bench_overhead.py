"""Measure what NVFlare's simulator adds to the toy job, per round and in total.

    python tests/fl_toy/bench_overhead.py --rounds 2 10 --task-request-interval 0.2 2.0

For every (rounds, interval) it exports the fedgin spec with those settings (no cross-site
evaluation), runs `nvflare simulator -n 2 -t 2`, and reads the server log: total wall time,
time to round 1 (startup), and seconds per round from round 1 to the end of FedAvg. Then it
runs the same training in a plain loop (plain_fedavg.py) for comparison. Prints a JSON line each.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPEC = REPO / "jobs" / "specs" / "fedgin.json"


def _ts(line):
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def server_times(log: Path):
    t_r1 = t_end = t_first = None
    prev = None
    for line in log.read_text().splitlines():
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            prev = _ts(line)
            t_first = t_first or prev
        elif "Round 1 started" in line and t_r1 is None:
            t_r1 = prev
        elif "Finished FedAvg" in line:
            t_end = prev
    return t_first, t_r1, t_end


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, nargs="+", default=[2, 10])
    p.add_argument("--task-request-interval", type=float, nargs="+", default=[0.2])
    p.add_argument("--poll-interval", type=float, nargs="+", default=[0.0],
                   help="client_poll_interval (0: NVFlare's built-in 0.5 s)")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args()
    sys.path.insert(0, str(REPO / "custom"))
    from fedxmodal.recipes.export import export_job, load_spec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for site, mod, n in (("ct-site", "CT", 64), ("mr-site", "MR", 40)):
            (tmp / "data" / site).mkdir(parents=True)
            (tmp / "data" / site / "dataset.json").write_text(
                json.dumps({"name": site, "modality": mod, "toy": {"n_training": n, "n_validation": 16, "n_test": 16}})
            )
        env = dict(os.environ, FEDXMODAL_DATA_ROOT=str(tmp / "data"))
        runs = [(i, pi, r) for i in a.task_request_interval for pi in a.poll_interval for r in a.rounds]
        for interval, poll, rounds in runs:
            spec = load_spec(SPEC)
            spec.update(name=f"bench{rounds}", num_rounds=rounds, cross_site_eval=False)
            spec["task_request_interval"] = interval
            spec["client_poll_interval"] = poll or None
            job = export_job(tmp / "jobs", spec)
            ws = tmp / f"ws_{rounds}_{interval}_{poll}"
            env["FEDXMODAL_CHECKPOINT_DIR"] = str(tmp / f"ckpt_{rounds}_{interval}_{poll}")
            cmd = [a.python, "-m", "nvflare.cli", "simulator", str(job), "-w", str(ws), "-n", "2", "-t", "2",
                   "-c", "ct-site,mr-site"]
            t0 = time.time()
            rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            wall = time.time() - t0
            t_first, t_r1, t_end = server_times(ws / "server" / "log.txt")
            print(json.dumps({
                "what": "simulator", "rounds": rounds, "task_request_interval": interval,
                "client_poll_interval": poll or 0.5, "rc": rc,
                "wall_s": round(wall, 2), "to_round1_s": round(t_r1 - t0, 2),
                "per_round_s": round((t_end - t_r1) / (rounds - 1), 3),
            }), flush=True)
        for rounds in [] if a.skip_plain else a.rounds:
            out = subprocess.run([a.python, str(HERE / "plain_fedavg.py"), "--data-root", str(tmp / "data"),
                                  "--rounds", str(rounds), "--local-epochs", str(spec["client_args"]["local_epochs"])],
                                 capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"what": "plain_loop", "rounds": rounds, "wall_s": res["wall_s"],
                              "per_round_s": round(res["wall_s"] / rounds, 3)}), flush=True)


if __name__ == "__main__":
    main()
