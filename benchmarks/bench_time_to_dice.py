"""Time-to-Dice: how soon FedGIN's global model is good, federated vs plain centralized training
(figures, not a test).

    .venv/bin/python benchmarks/bench_time_to_dice.py               # ~10 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/bench_time_to_dice.py --rounds 3    # a quick look (thresholds likely unmet)

Data: the demo's phantom federation (``write_phantom_federation(seed)``, the default sizes, as
``make demo``). Both runs use the committed ``jobs/specs/fedgin.json`` (network, GIN, batch size,
lr, preprocessing, seed):

* federated: the real ``nvflare simulator`` (2 sites, 1 thread each), every round's validation of
  the received global model, read with its time stamp from the sites' logs; time = launch of the
  simulator -> the later of the two sites' validation lines of the first round where BOTH sites'
  validation mean Dice reach the threshold;
* centralized: a fresh process (imports count) training one model on both sites' training slices
  pooled, with ``--central-threads`` torch threads (default 2: the cores the federation's two sites
  use); after every ``local_epochs`` pooled epochs (the same training work as one round) it
  validates on each site's validation split; time = launch -> the first validation where both
  sites reach the threshold. It stops at the federation's work (rounds x local_epochs pooled
  epochs) or once every threshold is met.

Prints seconds to each threshold and the ratio federated / centralized.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as bc  # noqa: E402

_CHILD_T0 = time.time()
_VAL = re.compile(r"\[(\S+)\] round (\d+): global model on validation: (\{.*\})")


def federated(tmp: Path, data: Path, rounds: int | None, seed: int, timeout: int) -> dict:
    spec = bc.fedgin_spec(rounds)
    spec["client_args"]["seed"] = seed
    spec["model"]["args"]["init_seed"] = seed
    run, t0, _, _ = bc.simulate(spec, tmp / "run", data, timeout, echo=True, require=("global_model",))
    ws, wall = run.workspace, run.wall_s
    curve: dict = {}  # round -> {site: (time since launch, dice)}
    for site in bc.SITES:
        for line in (ws / site / "log.txt").read_text(errors="replace").splitlines():
            m, t = _VAL.search(line), bc.log_time(line)
            if m and t is not None:
                curve.setdefault(int(m.group(2)), {})[site] = (t - t0, float(ast.literal_eval(m.group(3))["dice"]))
    points = [(max(v[0] for v in per.values()), min(v[1] for v in per.values()), r)
              for r, per in sorted(curve.items()) if len(per) == len(bc.SITES)]
    return {"wall_s": wall, "rounds": spec["num_rounds"], "local_epochs": spec["client_args"]["local_epochs"],
            "points": points}  # (s since launch, the lower site's validation Dice, round)


def centralized_child(data: str, epochs: int, every: int, threads: int, seed: int, stop_at: float) -> None:
    import torch

    from fedxmodal.data.preprocess import PreprocessConfig
    from fedxmodal.data.slices import SiteSlices
    from fedxmodal.engine.base import SliceData, seed_everything
    from fedxmodal.engine.supervised import TrainConfig
    from fedxmodal.methods import build_trainer
    from fedxmodal.networks.unet import UNetConfig

    spec, structures, network, train, preprocess = bc.job_settings()
    torch.set_num_threads(threads)
    seed_everything(seed)
    sites = [SiteSlices(Path(data) / s, structures, PreprocessConfig.from_dict(preprocess), progress=False)
             for s in bc.SITES]
    pooled = [s.slices("training", foreground_only=True) for s in sites]
    for s in sites:
        s.volumes("validation")
    x, y = torch.cat([p[0] for p in pooled]), torch.cat([p[1] for p in pooled])
    trainer = build_trainer(structures, UNetConfig.from_dict(network),
                            TrainConfig.from_dict({**train, "method": spec["client_args"].get("method", "gin"),
                                                   "seed": seed}), device="cpu")
    trainer.method.prepare([p[0] for p in pooled])
    points = []
    for done in range(every, epochs + 1, every):
        trainer.fit(SliceData(x, y), epochs=every)
        dice = min(trainer.evaluate(s, "validation")["summary"]["mean_dice"] for s in sites)
        points.append((time.time(), float(dice), done))  # absolute: the parent subtracts its launch time
        print(f"  centralized: {done}/{epochs} pooled epochs, lower site's validation Dice {dice:.3f} "
              f"({points[-1][0] - _CHILD_T0:.0f} s in this process)", file=sys.stderr, flush=True)
        if dice >= stop_at:
            break
    print(json.dumps({"points": points, "slices": len(x)}))


def first_reach(points, threshold: float):
    return next(((t, r) for t, d, r in points if d >= threshold), (None, None))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help="federated rounds (default: the committed job's)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6])
    p.add_argument("--central-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--out")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        d, e, ev, th, sd, stop = a.child
        centralized_child(d, int(e), int(ev), int(th), int(sd), float(stop))
        return 0
    from fedxmodal.data.phantom import write_phantom_federation

    tmp = Path(tempfile.mkdtemp(prefix="bench_ttd."))
    try:
        bc.say(f"writing the demo phantom federation (seed {a.seed}) into {tmp / 'data'}")
        write_phantom_federation(tmp / "data", seed=a.seed, task="abdomen", progress=False)
        bc.say("federated: nvflare simulator, the committed FedGIN job")
        fed = federated(tmp, tmp / "data", a.rounds, a.seed, a.timeout)
        epochs = fed["rounds"] * fed["local_epochs"]
        bc.say(f"centralized: pooled slices, {a.central_threads} threads, up to {epochs} epochs, "
               f"validation every {fed['local_epochs']}")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tmp / "data"), str(epochs),
               str(fed["local_epochs"]), str(a.central_threads), str(a.seed), str(max(a.thresholds))]
        t_launch = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=a.timeout)
        if proc.returncode:
            raise RuntimeError(f"centralized run failed (exit {proc.returncode})")
        cen = json.loads(proc.stdout.strip().splitlines()[-1])
        cen["points"] = [(t - t_launch, d, e) for t, d, e in cen["points"]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n== time-to-Dice, FedGIN phantom (seed {a.seed}), {time.strftime('%Y-%m-%d %H:%M')}, "
          f"1-min load {bc.load1():.2f} ==")
    print(f"federated: nvflare simulator, {fed['rounds']} rounds x {fed['local_epochs']} local epochs, 2 sites x 1 "
          f"thread, wall {fed['wall_s']:.0f} s, last round's lower site Dice {fed['points'][-1][1]:.3f}")
    print(f"centralized: {cen['slices']} pooled slices, {a.central_threads} threads, "
          f"{cen['points'][-1][2]} epochs, last lower site Dice {cen['points'][-1][1]:.3f}")
    rows = []
    for thr in a.thresholds:
        (tf, rf), (tc, ec) = first_reach(fed["points"], thr), first_reach(cen["points"], thr)
        rows.append([f"{thr:.2f}", bc.fmt(tf, 0) + (f" (round {rf})" if rf is not None else " (not reached)"),
                     bc.fmt(tc, 0) + (f" (epoch {ec})" if ec is not None else " (not reached)"),
                     bc.fmt(tf / tc, 2) if tf and tc else "n/a"])
    print(bc.table(rows, ["both sites' validation Dice >=", "federated s", "centralized s", "fed / central"]))
    if a.out:
        Path(a.out).write_text(json.dumps({"federated": fed, "centralized": cen, "argv": sys.argv[1:]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
