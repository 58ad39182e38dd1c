"""NVFlare's overhead on the FedGIN job, cause by cause (figures, not a test).

    .venv/bin/python benchmarks/bench_overhead.py                    # ~6 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/bench_overhead.py --rounds 3 --reps 1  # ~3 min
    .venv/bin/python benchmarks/bench_overhead.py --variant before:task_request_interval=0.2 --variant after:

One run measures, on the same tiny phantom federation as ``bench_fedgin.py`` (2 sites, 1 epoch per
round, the committed ``jobs/specs/fedgin.json`` otherwise):

* the real ``nvflare simulator`` run of the job once per ``--variant`` (job-spec overrides, e.g. the
  polling settings before and after a change), interleaved over ``--reps``; its wall time split
  from the logs (server, site and the sites' own per-round ``timings`` lines) into start-up,
  per-round parts (the sites' validation and training, the model hand-over, NVFlare's gap between
  rounds), cross-site evaluation and teardown;
* the same work WITHOUT NVFlare, two ways: ``plain-parallel`` -- two site processes training at the
  same time on the 2 cores, a parent averaging their weights each round (the least any 2-site
  federation on this machine can take), and ``bench_fedgin.py``'s sequential plain process (its
  "parallel-equivalent" = the slower site per round, which assumes two processes never slow each
  other down).

Per round the simulator's extra time over plain-parallel is attributed to: the sites' own work
being slower inside NVFlare (validation + training, from the sites' logs), the model hand-over
(task out -> site starts, site done -> result in) and NVFlare's gap (result in -> next round).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as bc  # noqa: E402  (the same data, job settings, log parsing and simulator run)
import plain  # noqa: E402  (bench_fedgin.py's sequential plain process and its site)

_TIMINGS = re.compile(r"\[(\S+)\] round (\d+) timings: validate ([\d.]+) s, train ([\d.]+) s, send ([\d.]+) s")


# ------------------------------------------------------------------ the simulator, one variant
def parse_overrides(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, {key: json value})."""
    name, _, rest = text.partition(":")
    out = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return name or "committed", out


def site_round_timings(ws: Path) -> dict:
    """{round: {site: (t_start, validate, train, send)}} from the sites' ``timings`` lines
    (t_start = the line's time minus the three parts: when the site got the model)."""
    out: dict = {}
    for site in bc.SITES:
        for line in (ws / site / "log.txt").read_text(errors="replace").splitlines():
            m = _TIMINGS.search(line)
            t = bc.log_time(line)
            if m and t is not None:
                val, train, send = (float(m.group(i)) for i in (3, 4, 5))
                out.setdefault(int(m.group(2)), {})[site] = (t - val - train - send, val, train, send)
    return out


def run_variant(tmp: Path, tag: str, overrides: dict, rounds: int, data_root: Path, timeout: int) -> dict:
    run, t0, t_exit, cpu = bc.simulate(bc.fedgin_spec(rounds, local_epochs=1, **overrides), tmp / f"run_{tag}",
                                       data_root, timeout)
    ws = run.workspace
    out = bc.parse_simulator_logs(ws, t0, t_exit, rounds)
    out["cpu_s"] = cpu
    # per round (1..R-1, as bench_fedgin): the slower site's work, its hand-over, NVFlare's gap
    timings, tasks = site_round_timings(ws), bc.train_task_times(ws)
    work, handover = [], []
    for r in range(1, rounds):
        per_site = []
        for site in bc.SITES:
            t_start, val, train, send = timings[r][site]
            sent, got = tasks[(site, r)]
            per_site.append((got - sent, val + train, (t_start - sent) + (got - (t_start + val + train))))
        slow = max(per_site)  # the site the round waited for
        work.append(slow[1])
        handover.append(slow[2])
    out["per_round_work_s"] = statistics.mean(work)  # validation + training inside the site script
    out["per_round_handover_s"] = statistics.mean(handover)  # task out -> script starts; script done -> result in
    return out


# ------------------------------------------------------------------ plain-parallel: 2 processes, no NVFlare
def _site_worker(site: str, data_root: str, conn) -> None:
    """One site without NVFlare: load data, build the engine (the site's seed as init_site), then
    per message: set weights, validate, train 1 epoch, send weights back; or evaluate models (CSE)."""
    from fedxmodal.engine.base import SliceData
    from fedxmodal.methods.site_runners import aggregate_metrics

    site_ = plain.plain_site(site, data_root)
    data, x, y, eng = site_["data"], site_["x"], site_["y"], site_["engine"]
    conn.send(("ready", len(x)))
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            return
        t = time.perf_counter()
        if kind == "round":
            eng.set_weights(payload)
            dice = aggregate_metrics(eng.evaluate(data, "validation"))["dice"]
            eng.fit(SliceData(x, y), epochs=1)
            conn.send((eng.get_weights(), dice, time.perf_counter() - t))
        else:  # "cse": evaluate every model on the test split
            for w in payload:
                eng.set_weights(w)
                aggregate_metrics(eng.evaluate(data, "test"))
            conn.send(time.perf_counter() - t)


def run_plain_parallel(rounds: int, data_root: Path) -> dict:
    """Both sites at once in two processes (spawned, so imports count as in the simulator's sites);
    the parent averages the weights (weighted by training slices) each round."""
    from fedxmodal.utils import instantiate

    spec = bc.job_settings()[0]
    ctx = mp.get_context("spawn")
    t0 = time.time()
    pipes, procs = [], []
    for site in bc.SITES:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_site_worker, args=(site, str(data_root), child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    n_items = [conn.recv()[1] for conn in pipes]
    t_ready = time.time()
    glob = instantiate(spec["model"]).state_dict()
    per_round, locals_ = [], []
    for _ in range(rounds):
        t = time.time()
        for conn in pipes:
            conn.send(("round", glob))
        results = [conn.recv() for conn in pipes]
        locals_ = [r[0] for r in results]
        tot = float(sum(n_items))
        glob = {k: (sum(w * st[k].double() for w, st in zip(n_items, locals_)) / tot).to(ref.dtype)
                if ref.is_floating_point() else locals_[0][k] for k, ref in glob.items()}
        per_round.append({"wall_s": time.time() - t, "site_work_s": max(r[2] for r in results)})
    t_rounds = time.time()
    models = [glob, glob, *locals_]  # global, best (same size), each site's local model
    for conn in pipes:
        conn.send(("cse", models))
    for conn in pipes:
        conn.recv()
    t_cse = time.time()
    for conn in pipes:
        conn.send(("stop", None))
    for p in procs:
        p.join(timeout=30)
    steady = per_round[1:] or per_round
    return {"wall_s": time.time() - t0, "startup_s": t_ready - t0, "rounds_s": t_rounds - t_ready,
            "per_round_s": statistics.mean(r["wall_s"] for r in steady),
            "per_round_work_s": statistics.mean(r["site_work_s"] for r in steady),
            "cse_s": t_cse - t_rounds}


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions of every variant (medians)")
    p.add_argument("--variant", action="append", default=None,
                   help="NAME:key=value,... job-spec overrides (repeatable); default: the committed job only")
    p.add_argument("--project-rounds", type=int, default=30)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", help="also write every measurement as JSON here")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    variants = [parse_overrides(v) for v in (a.variant or ["committed:"])]

    from fedxmodal.data.phantom import write_phantom_federation

    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead."))
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "load1_start": bc.load1(), "argv": sys.argv[1:],
                 "sim": {n: [] for n, _ in variants}, "plain_parallel": [], "plain_seq": []}
    try:
        write_phantom_federation(tmp / "data", seed=0, n_train=2, n_val=1, n_test=1, progress=False)
        for rep in range(a.reps):
            for name, over in variants:
                bc.say(f"rep {rep + 1}/{a.reps}: simulator, variant {name} {over or ''}")
                s = run_variant(tmp, f"{name}{rep}", over, a.rounds, tmp / "data", a.timeout)
                res["sim"][name].append(s)
                bc.say(f"  wall {s['wall_s']:.1f} s, per round {s['per_round_steady_s']:.2f} s "
                       f"(work {s['per_round_work_s']:.2f}, hand-over {s['per_round_handover_s']:.2f}, "
                       f"gap {s['per_round_fl_gap_s']:.2f})")
            bc.say(f"rep {rep + 1}/{a.reps}: plain-parallel (2 processes)")
            pp = run_plain_parallel(a.rounds, tmp / "data")
            res["plain_parallel"].append(pp)
            bc.say(f"  wall {pp['wall_s']:.1f} s, per round {pp['per_round_s']:.2f} s (work {pp['per_round_work_s']:.2f})")
            bc.say(f"rep {rep + 1}/{a.reps}: plain, sites in sequence (bench_fedgin)")
            pl = plain.run_plain(tmp, a.rounds, tmp / "data", a.timeout)
            res["plain_seq"].append(plain.summarize_plain(pl))
    finally:
        if a.keep:
            bc.say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["load1_end"] = bc.load1()
    med = statistics.median
    PP = {k: med([r[k] for r in res["plain_parallel"]]) for k in res["plain_parallel"][0]}
    PS = {k: med([r[k] for r in res["plain_seq"]]) for k in res["plain_seq"][0]}
    N = a.project_rounds
    print(f"\n== NVFlare overhead, FedGIN job, {a.rounds} rounds x 1 epoch, 2 sites, medians of {a.reps}; "
          f"{res['date']}, 1-min load {res['load1_start']:.2f} -> {res['load1_end']:.2f} ==")
    hdr = ["what (s)", *[n for n, _ in variants], "plain-parallel"]
    rows = []
    S = {n: {k: med([r[k] for r in runs]) for k in runs[0] if isinstance(runs[0][k], float)}
         for n, runs in res["sim"].items()}

    def row(what, key, plain=None, nd=2):
        rows.append([what, *[bc.fmt(S[n][key], nd) for n, _ in variants], "" if plain is None else bc.fmt(plain, nd)])

    row("whole run, wall", "wall_s", PP["wall_s"], 1)
    row("start-up: launch -> both sites ready", "startup_s", PP["startup_s"], 1)
    row("  server up, round 0 scheduled", "startup_server_s", None, 1)
    row("  site processes spawned + imports", "startup_site_imports_s", None, 1)
    row("  site data + engine", "startup_site_data_s", None, 1)
    row("per round (rounds 1..R-1)", "per_round_steady_s", PP["per_round_s"])
    row("  slower site's validation + training", "per_round_work_s", PP["per_round_work_s"])
    row("  its model hand-over (out + back)", "per_round_handover_s", PP["per_round_s"] - PP["per_round_work_s"])
    row("  NVFlare gap: result in -> next round", "per_round_fl_gap_s")
    row("cross-site evaluation", "cse_s", PP["cse_s"], 1)
    row("teardown", "teardown_s", None, 1)
    for n, _ in variants:
        fixed = S[n]["wall_s"] - S[n]["rounds_s"]
        S[n]["projected_s"] = fixed + N * S[n]["per_round_steady_s"]
    row(f"projected {N} rounds: fixed + {N} x per round", "projected_s",
        PP["wall_s"] - PP["rounds_s"] + N * PP["per_round_s"], 1)
    print(bc.table(rows, hdr))
    plain_par_eq = N * PS["per_round_par_steady_s"]
    plain_par = N * PP["per_round_s"]
    print(f"\n{N} rounds of work without NVFlare: plain-parallel {plain_par:.1f} s, sequential plain's "
          f"parallel-equivalent {plain_par_eq:.1f} s")
    for n, _ in variants:
        print(f"{n}: projected simulator / plain-parallel {N} rounds = {S[n]['projected_s'] / plain_par:.2f}x; "
              f"/ parallel-equivalent = {S[n]['projected_s'] / plain_par_eq:.2f}x")
    res["medians"] = {"sim": S, "plain_parallel": PP, "plain_seq": PS}
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
