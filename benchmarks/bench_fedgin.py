"""FedGIN benchmark: what the engine, GIN and NVFlare cost on this machine (figures, not a test).

    .venv/bin/python benchmarks/bench_fedgin.py --quick            # ~2.5 min
    .venv/bin/python benchmarks/bench_fedgin.py [--out bench.json] # ~6 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/bench_fedgin.py --threads 1 2      # parts 1-2 also with 2 threads

Everything is measured in ONE run, on a tiny procedural phantom federation written into a temp
dir (``write_phantom_federation(n_train=2, n_val=1, n_test=1)``: ct-site 60, mr-site 51
foreground training slices of 128x128 with the job's preprocessing):

1. Engine overhead -- training throughput (slices/s) of ``SupervisedTrainer.fit`` (method "gin"
   with the FedGIN job's settings, and "none") vs a bare PyTorch loop over the same U-Net
   (``build_unet`` with the same ``UNetConfig``), the same in-memory ct-site slices, batch size,
   GIN module, DiceCE loss and Adam settings (randperm batches -> GIN -> forward -> loss ->
   backward -> step). The engine is measured with ``spatial_augment=False`` (apples to apples)
   and with its default (spatial augmentation on). Variants are interleaved (A B C ... A B C ...,
   order rotated every repetition), medians reported. torch threads: ``--threads``.
2. GIN's share of a training step -- median time of the GIN forward alone vs the whole bare step,
   per-sample nets and one batch-shared net, interleaved step by step.
3. NVFlare overhead at 2 sites -- wall time of a real ``nvflare simulator`` run (``-n 2 -t 2``)
   of the FedGIN job exported from ``jobs/specs/fedgin.json`` with ``num_rounds=R``,
   ``local_epochs=1``, everything else as committed (cross-site evaluation on, 1 torch thread per
   site) vs the same rounds run as plain loops in a fresh Python process (``plain.py``: both sites'
   engines: per round validation of the global model + 1 epoch + in-process FedAvg of the state
   dicts, sites in sequence, 1 torch thread), reported as the sequential time and as the
   "parallel-equivalent" time (per round, the slower site; the simulator runs the 2 sites in
   parallel on 2 cores). The simulator's wall time is split from its logs into startup, rounds,
   cross-site evaluation and teardown; the plain process reports the same phases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (fedgin_spec, fmt, job_settings, load1, median, parse_simulator_logs, say,  # noqa: E402
                    self_cpu_s, simulate, table)
from plain import run_plain, summarize_plain  # noqa: E402


# ============================================================== 1 + 2: engine vs bare loop, GIN
def load_site_slices(data_dir: Path, structures, preprocess: dict):
    from fedxmodal.data.preprocess import PreprocessConfig
    from fedxmodal.data.slices import SiteSlices

    data = SiteSlices(data_dir, structures, PreprocessConfig.from_dict(preprocess), progress=False)
    return data.slices("training", foreground_only=True)


class BareLoop:
    """The training step without the engine: randperm batches, GIN, forward, DiceCE, backward, Adam."""

    def __init__(self, structures, network: dict, train: dict, gin_args: dict | None, seed: int = 0):
        import torch

        from fedxmodal.losses.segmentation import build_segmentation_loss
        from fedxmodal.networks.unet import UNetConfig, build_unet
        from fedxmodal.transforms.gin import GINAugment

        torch.manual_seed(seed)
        self.model = build_unet(len(structures), UNetConfig.from_dict(network))
        self.gin = GINAugment(**gin_args) if gin_args is not None else None
        self.loss_fn = build_segmentation_loss()
        self.batch_size = int(train.get("batch_size", 16))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(train.get("lr", 1e-3)),
                                    betas=(float(train.get("beta1", 0.5)), 0.999),
                                    weight_decay=float(train.get("weight_decay", 3e-5)))

    def batches(self, n):
        import torch

        order = torch.randperm(n)
        bs = self.batch_size
        return [order[i:i + bs] for i in range(0, n, bs) if len(order[i:i + bs]) > 1]

    def step(self, images, labels, idx, timings=None):
        t0 = time.perf_counter()
        x, y = images[idx], labels[idx].long()
        if self.gin is not None:
            x = self.gin(x)
        t1 = time.perf_counter()
        loss = self.loss_fn(self.model(x), y[:, None])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        value = float(loss.detach())
        if timings is not None:
            timings.append((t1 - t0, time.perf_counter() - t0))
        if not math.isfinite(value):
            raise FloatingPointError("non-finite loss")
        return value

    def fit(self, images, labels, epochs=1):
        self.model.train()
        for _ in range(epochs):
            for idx in self.batches(images.shape[0]):
                self.step(images, labels, idx)


def bench_engine(images, labels, structures, network, train, threads, reps, epochs_per_rep, seed=0):
    """Interleaved repetitions of 5 variants; returns {variant: [slices/s per rep]}."""
    import torch

    from fedxmodal.engine.base import SliceData
    from fedxmodal.engine.supervised import TrainConfig
    from fedxmodal.methods import build_trainer
    from fedxmodal.networks.unet import UNetConfig

    torch.set_num_threads(threads)
    gin_args = dict(train.get("method_args", {}))  # the FedGIN job's GIN settings (method_args)

    def engine(method, spatial):
        torch.manual_seed(seed)
        # float32 like the bare loop (mixed precision is benchmarks/bench_precision.py's figure)
        tc = TrainConfig.from_dict({**train, "method": method, "method_args": gin_args if method == "gin" else {},
                                    "spatial_augment": spatial, "seed": seed, "amp": False})
        eng = build_trainer(structures, UNetConfig.from_dict(network), tc, device="cpu")
        return lambda: eng.fit(SliceData(images, labels), epochs=epochs_per_rep)

    def bare(with_gin):
        loop = BareLoop(structures, network, train, gin_args if with_gin else None, seed=seed)
        return lambda: loop.fit(images, labels, epochs=epochs_per_rep)

    variants = {
        "bare_gin": bare(True),
        "engine_gin_nospatial": engine("gin", False),
        "engine_gin_default": engine("gin", True),
        "bare_none": bare(False),
        "engine_none_nospatial": engine("none", False),
    }
    n_slices = images.shape[0] * epochs_per_rep
    for fn in variants.values():  # warm-up (first optimizer use, allocator), not counted
        fn()
    results = {k: [] for k in variants}
    names = list(variants)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            results[name].append(n_slices / (time.perf_counter() - t0))
        say(f"  threads={threads} rep {r + 1}/{reps}: " + ", ".join(
            f"{k} {results[k][-1]:.1f}" for k in names) + " slices/s")
    return results


def bench_gin_share(images, labels, structures, network, train, threads, steps, seed=0):
    """Per-step (GIN s, step s) for the per-sample and the batch-shared GIN, interleaved."""
    import torch

    torch.set_num_threads(threads)
    base = {k: v for k, v in train.get("method_args", {}).items() if k != "shared_across_batch"}
    loops = {name: BareLoop(structures, network, train, {**base, "shared_across_batch": shared}, seed=seed)
             for name, shared in (("per_sample", False), ("shared", True))}
    timings = {k: [] for k in loops}
    n = images.shape[0]
    bs = int(train.get("batch_size", 16))
    for lp in loops.values():
        lp.model.train()
        for _ in range(2):  # warm-up
            lp.step(images, labels, torch.randperm(n)[:bs])
    for _ in range(steps):
        idx = torch.randperm(n)[:bs]
        for name, lp in loops.items():
            lp.step(images, labels, idx, timings[name])
    return timings


# ============================================================== 3: NVFlare simulator (vs plain.py's loops)
def run_simulator(tmp: Path, rep: int, rounds: int, data_root: Path, timeout: int) -> dict:
    """The FedGIN job, ``rounds`` x 1 epoch, in the simulator; its wall time split from its logs."""
    run, t0, t_exit, cpu = simulate(fedgin_spec(rounds, local_epochs=1), tmp / f"run{rep}", data_root, timeout)
    out = parse_simulator_logs(run.workspace, t0, t_exit, rounds)
    out["cpu_s"] = cpu  # user+system CPU of the simulator and all its processes
    out["cse_results"] = sum(len(v) for v in run.cross_site.values())
    return out


# ============================================================== main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="~2.5 minutes: fewer reps, 3 FL rounds, 1 simulator run")
    p.add_argument("--out", help="also write all measurements as JSON here")
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="torch threads for parts 1-2 (default 1, as the job's sites; e.g. --threads 1 2)")
    p.add_argument("--reps", type=int, help="interleaved repetitions per variant, part 1 (default 7; quick 5)")
    p.add_argument("--epochs-per-rep", type=int, help="epochs per repetition, part 1 (default 2; quick 1)")
    p.add_argument("--steps", type=int, help="steps per GIN variant, part 2 (default 30; quick 15)")
    p.add_argument("--rounds", type=int, help="FL rounds, part 3 (default 5; quick 3)")
    p.add_argument("--fl-reps", type=int, help="simulator/plain pairs, part 3 (default 2; quick 1)")
    p.add_argument("--project-rounds", type=int, default=30,
                   help="also project simulator and plain times to this many rounds (default 30)")
    p.add_argument("--skip-engine", action="store_true", help="skip parts 1-2")
    p.add_argument("--skip-fl", action="store_true", help="skip part 3")
    p.add_argument("--timeout", type=int, default=600, help="per simulator / plain run (s)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, jobs, simulator workspaces)")
    a = p.parse_args(argv)
    q = a.quick
    a.reps = a.reps or (5 if q else 7)
    a.epochs_per_rep = a.epochs_per_rep or (1 if q else 2)
    a.steps = a.steps or (15 if q else 30)
    a.rounds = a.rounds or (3 if q else 5)
    a.fl_reps = a.fl_reps or (1 if q else 2)

    import torch

    from fedxmodal.data.phantom import write_phantom_federation

    t_start = time.time()
    spec, structures, network, train, preprocess = job_settings()
    env_info = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                "torch": torch.__version__, "mode": "quick" if q else "default", "argv": sys.argv[1:]}
    try:
        import monai
        import nvflare

        env_info.update(monai=monai.__version__, nvflare=nvflare.__version__)
    except Exception:  # pragma: no cover
        pass
    say(f"FedGIN benchmark ({env_info['mode']}): {env_info['cpus']} CPUs, torch {torch.__version__}, "
        f"threads {a.threads}, reps {a.reps} x {a.epochs_per_rep} epoch(s), GIN steps {a.steps}, "
        f"FL {a.rounds} rounds x {a.fl_reps} run(s)")
    results = {"env": env_info, "settings": vars(a),
               "load1": {"start": load1()}}
    if results["load1"]["start"] > 0.5 * (os.cpu_count() or 1):
        say(f"WARNING: 1-min load average {results['load1']['start']:.2f} on {os.cpu_count()} CPUs: "
            "other work is running, figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="bench_fedgin."))
    try:
        say(f"writing the phantom federation (n_train=2, n_val=1, n_test=1) into {tmp / 'data'}")
        write_phantom_federation(tmp / "data", seed=0, n_train=2, n_val=1, n_test=1, progress=False)
        rows1, rows2, rows3 = [], [], []

        if not a.skip_engine:
            images, labels = load_site_slices(tmp / "data" / "ct-site", structures, preprocess)
            results["slices"] = list(images.shape)
            say(f"ct-site training slices: {tuple(images.shape)}, batch {train.get('batch_size', 16)}, "
                f"GIN {train.get('method_args', {})}")
            results["engine"], results["gin"] = {}, {}
            for th in a.threads:
                say(f"part 1: engine vs bare loop, torch threads={th}")
                c0, w0 = self_cpu_s(), time.perf_counter()
                r = bench_engine(images, labels, structures, network, train, th, a.reps, a.epochs_per_rep)
                cores = (self_cpu_s() - c0) / (time.perf_counter() - w0)
                say(f"  CPU time / wall time of this process during part 1: {cores:.2f} (threads={th})")
                results["engine"][th] = r
                results.setdefault("cores_used", {})[th] = cores
                med = {k: median(v) for k, v in r.items()}
                for k, ref in (("bare_gin", "bare_gin"), ("engine_gin_nospatial", "bare_gin"),
                               ("engine_gin_default", "bare_gin"), ("bare_none", "bare_none"),
                               ("engine_none_nospatial", "bare_none")):
                    ratios = [e / b for e, b in zip(r[k], r[ref])]  # same repetition: robust to load drift
                    rows1.append([th, k, fmt(med[k], 1), f"{min(r[k]):.1f}-{max(r[k]):.1f}",
                                  fmt(med[k] / med[ref], 3), fmt(median(ratios), 3),
                                  f"{min(ratios):.2f}-{max(ratios):.2f}"])
                say(f"part 2: GIN forward vs whole step, torch threads={th}")
                g = bench_gin_share(images, labels, structures, network, train, th, a.steps)
                results["gin"][th] = {k: [[round(x, 6) for x in t] for t in v] for k, v in g.items()}
                for k, v in g.items():
                    gin_ms, step_ms = median([t[0] for t in v]) * 1e3, median([t[1] for t in v]) * 1e3
                    share = median([t[0] / t[1] for t in v])
                    rows2.append([th, k, fmt(gin_ms, 1), fmt(step_ms, 1), f"{100 * share:.1f}%"])
                    say(f"  {k}: GIN {gin_ms:.1f} ms of a {step_ms:.1f} ms step ({100 * share:.1f}%)")

            results["load1"]["after_engine"] = load1()

        if not a.skip_fl:
            sims, plains = [], []
            for rep in range(a.fl_reps):
                say(f"part 3: nvflare simulator, FedGIN job, {a.rounds} rounds x 1 epoch, 2 sites, CSE on "
                    f"(run {rep + 1}/{a.fl_reps})")
                s = run_simulator(tmp, rep, a.rounds, tmp / "data", a.timeout)
                sims.append(s)
                say(f"  simulator wall {s['wall_s']:.1f} s: startup {s['startup_s']:.1f}, rounds {s['rounds_s']:.1f} "
                    f"({s['per_round_steady_s']:.2f} s/round steady, NVFlare gap {s['per_round_fl_gap_s']:.2f}), "
                    f"CSE {s['cse_s']:.1f}, teardown {s['teardown_s']:.1f}")
                say(f"part 3: plain loops, same rounds, fresh process (run {rep + 1}/{a.fl_reps})")
                pl = run_plain(tmp, a.rounds, tmp / "data", a.timeout)
                pl["summary"] = summarize_plain(pl)
                plains.append(pl)
                ps = pl["summary"]
                say(f"  plain process wall {pl['wall_s']:.1f} s: startup {ps['startup_s']:.1f}, rounds seq "
                    f"{ps['rounds_seq_s']:.1f} / parallel-equivalent {ps['rounds_par_s']:.1f}, CSE-equivalent seq "
                    f"{ps['cse_seq_s']:.1f} / par {ps['cse_par_s']:.1f}")
            results["simulator"], results["plain"] = sims, plains
            S = {k: median([s[k] for s in sims]) for k in sims[0] if isinstance(sims[0][k], float)}
            P = {k: median([pl["summary"][k] for pl in plains]) for k in plains[0]["summary"]}
            results["fl_medians"] = {"simulator": S, "plain": P}
            R = a.rounds
            N = a.project_rounds
            fixed = S["wall_s"] - S["rounds_s"]
            proj_sim, proj_plain = fixed + N * S["per_round_steady_s"], N * P["per_round_par_steady_s"]

            def row(what, sim, plain, nd=1):
                ratio = fmt(sim / plain, 2) if sim is not None and plain is not None else ""
                return [what, "" if sim is None else fmt(sim, nd), "" if plain is None else fmt(plain, nd), ratio]

            rows3 += [
                row("whole run, wall (plain: whole process, sites in sequence)", S["wall_s"], P["wall_s"]),
                row("  startup: launch -> both sites ready", S["startup_s"], P["startup_s"]),
                row("    launch -> server up, round 0 scheduled", S["startup_server_s"], None),
                row("    site processes spawned + imports", S["startup_site_imports_s"], None),
                row("    site data preparation + engine", S["startup_site_data_s"], None),
                row(f"  {R} rounds (plain: sites in sequence)", S["rounds_s"], P["rounds_seq_s"]),
                row(f"  {R} rounds (plain: parallel-equivalent)", S["rounds_s"], P["rounds_par_s"]),
                row("    per round, rounds 1..R-1 (plain: parallel-equiv.)", S["per_round_steady_s"],
                    P["per_round_par_steady_s"], 2),
                row("      slower site busy: task out -> result in", S["per_round_site_busy_s"],
                    P["per_round_par_steady_s"], 2),
                row("      NVFlare gap: scheduling, polling, FedAvg", S["per_round_fl_gap_s"], None, 2),
                row("  cross-site evaluation (plain: its work, parallel-equiv.)", S["cse_s"], P["cse_par_s"]),
                row("  teardown", S["teardown_s"], None),
                row("CPU time, user+system, all processes", S["cpu_s"], P["cpu_s"]),
                row(f"simulator wall / plain {R} rounds, sites in sequence", S["wall_s"], P["rounds_seq_s"]),
                row(f"simulator wall / plain {R} rounds, parallel-equivalent", S["wall_s"], P["rounds_par_s"]),
                row("fixed cost: simulator wall - its rounds", fixed, None),
                row(f"projected {N} rounds: fixed + {N} x per round (plain: {N} x per round)", proj_sim, proj_plain),
            ]
            results["fl_ratios"] = {
                "sim_wall_over_plain_rounds_seq": S["wall_s"] / P["rounds_seq_s"],
                "sim_wall_over_plain_rounds_par": S["wall_s"] / P["rounds_par_s"],
                "sim_wall_over_plain_process": S["wall_s"] / P["wall_s"],
                "sim_rounds_over_plain_rounds_par": S["rounds_s"] / P["rounds_par_s"],
                "overhead_per_round_s": S["per_round_steady_s"] - P["per_round_par_steady_s"],
                "fl_gap_per_round_s": S["per_round_fl_gap_s"],
                "site_busy_over_plain_par": S["per_round_site_busy_s"] / P["per_round_par_steady_s"],
                "fixed_cost_s": S["wall_s"] - S["rounds_s"],
                "cpu_sim_over_plain": S["cpu_s"] / P["cpu_s"],
            }
    finally:
        if a.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["total_s"] = time.time() - t_start
    results["load1"]["end"] = load1()
    print()
    print(f"== FedGIN benchmark, {env_info['date']}, {env_info['cpus']} CPUs ({env_info['cpu']}), torch "
          f"{env_info['torch']}, mode {env_info['mode']}, total {results['total_s']:.0f} s ==")
    print("1-min load average: " + ", ".join(f"{k} {v:.2f}" for k, v in results["load1"].items()))
    if rows1:
        print(f"\n1. Training throughput, ct-site phantom {tuple(results['slices'])}, "
              f"batch {train.get('batch_size', 16)}, GIN {train.get('method_args', {})}; "
              f"median of {a.reps} interleaved reps x {a.epochs_per_rep} epoch(s)")
        print(table(rows1, ["threads", "variant", "slices/s", "min-max", "vs bare", "paired", "paired min-max"]))
        print("vs bare: ratio of the medians; paired: median over repetitions of (variant / bare loop of the "
              "same repetition)")
        print("CPU time / wall time during part 1: " + ", ".join(
            f"threads={k}: {v:.2f}" for k, v in results["cores_used"].items()))
    if rows2:
        print(f"\n2. GIN forward vs whole training step (bare loop, batch {train.get('batch_size', 16)}), "
              f"median of {a.steps} interleaved steps")
        print(table(rows2, ["threads", "GIN", "GIN ms", "step ms", "GIN share"]))
    if rows3:
        print(f"\n3. nvflare simulator (-n 2 -t 2, FedGIN job, {a.rounds} rounds x 1 epoch, CSE on, 1 thread/site) "
              f"vs plain loops (1 thread); median of {a.fl_reps} run(s)")
        print(table(rows3, ["what", "simulator s", "plain s", "sim/plain"]))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
