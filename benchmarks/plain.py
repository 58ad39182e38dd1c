"""The FedGIN job's rounds WITHOUT NVFlare, for the benchmarks to hold the simulator against: both
sites set up as the job's site script does, then R rounds of (validate the global model, 1 local
epoch, FedAvg of the state dicts) with the sites in sequence, then the cross-site evaluation's
work -- in a fresh Python process (``run_plain`` starts ``python plain.py --plain-child``), so
that imports count as they do at the sites. ``plain_site`` is also the site of
``bench_overhead.py``'s two-process variant."""

from __future__ import annotations

import time

_CHILD_T0 = time.time()  # process start (stdlib imports only so far); used by --plain-child

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SITES, children_cpu_s, job_settings  # noqa: E402


def run_plain(tmp: Path, rounds: int, data_root: Path, timeout: int) -> dict:
    """The same rounds without NVFlare, in a fresh Python process (so imports count, as in the sites)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-child", str(data_root), "--rounds", str(rounds)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_")}
    cpu0, t0 = children_cpu_s(), time.time()
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    t_exit, cpu = time.time(), children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"plain loop failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = t_exit - t0
    res["cpu_s"] = cpu
    res["startup_s"] = res.pop("t_ready") - t0  # launch -> data loaded, engines built (like the sites)
    return res


def plain_site(name: str, data_root) -> dict:
    """One site without NVFlare, set up as the FedGIN job's site script does: the site's seed (as
    ``init_site``), its slices (validation and test volumes prepared), the method's trainer with the
    job's settings and torch threads. Returns {"data", "x", "y", "train" (SliceData), "engine"}."""
    import torch

    from fedxmodal.data.preprocess import PreprocessConfig
    from fedxmodal.data.slices import SiteSlices
    from fedxmodal.engine.base import SliceData, seed_everything
    from fedxmodal.engine.supervised import TrainConfig
    from fedxmodal.methods import build_trainer
    from fedxmodal.networks.unet import UNetConfig

    spec, structures, network, train, preprocess = job_settings()
    ca = spec["client_args"]
    torch.set_num_threads(int(ca.get("num_threads", 1)) or 1)  # the job's per-site setting
    seed = int(ca.get("seed", 0)) + zlib.crc32(name.encode()) % 100_000  # as init_site
    seed_everything(seed)
    data = SiteSlices(Path(data_root) / name, structures, PreprocessConfig.from_dict(preprocess), progress=False)
    x, y = data.slices("training", foreground_only=True)
    data.volumes("validation")
    data.volumes("test")
    tc = TrainConfig.from_dict({**train, "method": ca.get("method", "gin"), "seed": seed})
    return dict(data=data, x=x, y=y, train=SliceData(x, y),
                engine=build_trainer(structures, UNetConfig.from_dict(network), tc, device="cpu"))


def plain_child(data_root: str, rounds: int) -> None:
    """Child process of run_plain: R rounds of (validate global, 1 epoch, FedAvg) for both sites in
    sequence, then the cross-site evaluation's work (each site: 4 models on its test split)."""
    from fedxmodal.methods.site_runners import aggregate_metrics
    from fedxmodal.utils import instantiate

    t_imports = time.time()
    spec = job_settings()[0]
    sites = {name: plain_site(name, data_root) for name in SITES}
    t_ready = time.time()
    glob = instantiate(spec["model"]).state_dict()
    best, best_dice = copy.deepcopy(glob), -1.0
    per_round = []
    for rnd in range(rounds):
        site_s, vals, states, weights = {}, [], [], []
        for name, s in sites.items():
            t = time.perf_counter()
            eng = s["engine"]
            eng.set_weights(glob)
            vals.append(aggregate_metrics(eng.evaluate(s["data"], "validation"))["dice"])
            eng.fit(s["train"], epochs=1)
            s["local"] = eng.get_weights()
            states.append(s["local"])
            weights.append(len(s["x"]))
            site_s[name] = time.perf_counter() - t
        t = time.perf_counter()
        tot = float(sum(weights))
        dice = sum(w * v for w, v in zip(weights, vals)) / tot
        if rnd > 0 and dice > best_dice:  # the selector skips round 0
            best, best_dice = glob, dice
        new = {}
        for k, ref in glob.items():
            avg = sum(w * st[k].double() for w, st in zip(weights, states)) / tot
            new[k] = avg.round().to(ref.dtype) if not ref.is_floating_point() else avg.to(ref.dtype)
        glob = new
        per_round.append({"sites_s": site_s, "fedavg_s": time.perf_counter() - t})
    t_rounds = time.time()
    models = {"SRV_FL_global_model": glob, "SRV_best_FL_global_model": best,
              **{name: s["local"] for name, s in sites.items()}}
    cse_site_s = {}
    for name, s in sites.items():
        t = time.perf_counter()
        for w in models.values():
            s["engine"].set_weights(w)
            aggregate_metrics(s["engine"].evaluate(s["data"], "test"))
        cse_site_s[name] = time.perf_counter() - t
    t_end = time.time()
    print(json.dumps({"t_ready": t_ready, "imports_s": t_imports - _CHILD_T0, "setup_s": t_ready - t_imports,
                      "per_round": per_round, "rounds_wall_s": t_rounds - t_ready, "cse_site_s": cse_site_s,
                      "cse_wall_s": t_end - t_rounds, "process_s": t_end - _CHILD_T0}))


def summarize_plain(p: dict) -> dict:
    seq = sum(sum(r["sites_s"].values()) + r["fedavg_s"] for r in p["per_round"])
    par = sum(max(r["sites_s"].values()) + r["fedavg_s"] for r in p["per_round"])
    steady = [max(r["sites_s"].values()) + r["fedavg_s"] for r in p["per_round"][1:]]
    return {"rounds_seq_s": seq, "rounds_par_s": par,
            "per_round_par_steady_s": statistics.mean(steady) if steady else float("nan"),
            "cse_seq_s": sum(p["cse_site_s"].values()), "cse_par_s": max(p["cse_site_s"].values()),
            "startup_s": p["startup_s"], "wall_s": p["wall_s"], "cpu_s": p["cpu_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plain-child", required=True, metavar="DATA_ROOT")
    p.add_argument("--rounds", type=int, required=True)
    a = p.parse_args(argv)
    plain_child(a.plain_child, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
