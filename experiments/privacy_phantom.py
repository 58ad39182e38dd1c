"""What each site output filter costs in Dice (and saves in bytes) on the phantom FedGIN run.

Every row runs the FedGIN job of jobs/specs/fedgin.json in `nvflare simulator` (ct-site + mr-site,
the phantom of `python -m fedxmodal demo-data`) at the SAME reduced budget -- ROUNDS rounds (10
instead of the job's 30) x the job's 2 local epochs, weight differences sent (params_transfer_type
DIFF, which the update filters need),
output guard on, no cross-site evaluation -- and differs only in the filters. The final global
model is evaluated on both sites' test volumes (3D Dice, as the demo does). Bytes per round: the
payload of each site's train result as the output guard measured it (the last filter, i.e. what
is sent: quantized arrays + quantization state).

Usage: python experiments/privacy_phantom.py [OUT_DIR] [--rows a,b] [--rounds N]   (run via
experiments/privacy_phantom.sh). A row whose results.json exists is skipped; --summary only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = ("ct-site", "mr-site")
SPEC = REPO / "jobs" / "specs" / "fedgin.json"
GDP = "fedxmodal.fl.dp.GaussianDPFilter"
# The input-facing convolutions of the U-Net (main path and residual): what gradient-inversion
# attacks read the input from most directly.
INPUT_LAYER = ["model.0.conv.unit0.conv.weight", "model.0.conv.unit0.conv.bias",
               "model.0.residual.weight", "model.0.residual.bias"]

ROWS = {  # key: (label, build_job overrides)
    "none": ("no filter", {}),
    "clip_only": ("clipping only: C=1, sigma=0 (no noise, no guarantee)",
                  {"site_output_filters": [{"path": GDP, "args": {"clip_norm": 1.0, "noise_multiplier": 0.0, "seed": 0}}]}),
    "dp_0.001": ("Gaussian DP, C=1, sigma=0.001",
                 {"site_output_filters": [{"path": GDP, "args": {"clip_norm": 1.0, "noise_multiplier": 0.001, "seed": 0}}]}),
    "dp_0.01": ("Gaussian DP, C=1, sigma=0.01",
                {"site_output_filters": [{"path": GDP, "args": {"clip_norm": 1.0, "noise_multiplier": 0.01, "seed": 0}}]}),
    "fp16": ("ModelQuantizer float16",
             {"site_output_filters": [{"path": "fedxmodal.fl.quantization.ModelQuantizer", "args": {"quantization_type": "float16"}}],
              "server_input_filters": [{"path": "fedxmodal.fl.quantization.ModelDequantizer", "args": {}}]}),
    "adaquant": ("ModelQuantizer adaquant",
                 {"site_output_filters": [{"path": "fedxmodal.fl.quantization.ModelQuantizer", "args": {"quantization_type": "adaquant"}}],
                  "server_input_filters": [{"path": "fedxmodal.fl.quantization.ModelDequantizer", "args": {}}]}),
    "percentile": ("PercentilePrivacy, percentile=90, gamma=0.01",
                   {"site_output_filters": [{"path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
                                             "args": {"percentile": 90, "gamma": 0.01}}]}),
    "svt": ("SVTPrivacy, NVFlare defaults (fraction=0.1, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6)",
            {"site_output_filters": [{"path": "nvflare.app_common.filters.svt_privacy.SVTPrivacy", "args": {}}]}),
    "exclude_input": ("ExcludeVars: input-layer convolutions",
                      {"site_output_filters": [{"path": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
                                                "args": {"exclude_vars": INPUT_LAYER}}]}),
    "dp_c2.5_0.004": ("Gaussian DP, C=2.5 (above the usual update norm), sigma=0.004 (noise std 0.01, as C=1, sigma=0.01)",
                      {"site_output_filters": [{"path": GDP, "args": {"clip_norm": 2.5, "noise_multiplier": 0.004, "seed": 0}}]}),
    "none_seed1": ("no filter, sites seeded 1 instead of 0 (run-to-run spread)", {"client_args_update": {"seed": 1}}),
    "dp_1": ("Gaussian DP, C=1, sigma=1",
             {"site_output_filters": [{"path": GDP, "args": {"clip_norm": 1.0, "noise_multiplier": 1.0, "seed": 0}}]}),
}

GUARD_RE = re.compile(r"output guard: train result of (\S+) accepted: .*payload_bytes=(\d+)")
DP_RE = re.compile(r"Gaussian DP \(round (\d+)\): update L2 norm ([\d.e+-]+) -> ([\d.e+-]+)")


def site_logs(ws: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(ws.glob("*/log.txt")) if p.parent.name in SITES)


def run_row(key: str, out: Path, data: Path, rounds: int) -> dict:
    sys.path.insert(0, str(REPO / "custom"))
    from fedxmodal.deploy.simulator import run_simulator
    from fedxmodal.data.slices import SiteSlices
    from fedxmodal.recipes.export import export_job, load_spec
    from fedxmodal.apps.models import trainer_from_fl_model

    label, overrides = ROWS[key]
    spec = load_spec(SPEC)
    spec.update(name=f"privacy_{key}".replace(".", "_"), num_rounds=rounds, cross_site_eval=False,
                params_transfer_type="DIFF")
    overrides = dict(overrides)
    spec["client_args"].update(overrides.pop("client_args_update", {}))
    spec.update(overrides)
    work = out / key
    shutil.rmtree(work, ignore_errors=True)
    job = export_job(work / "jobs", spec)
    ws = work / "workspace"
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(data), "FEDXMODAL_CHECKPOINT_DIR": str(work / "checkpoints"),
           "PYTHONUNBUFFERED": "1"}
    print(f"== {key}: {label}", flush=True)
    wall = run_simulator(job, ws, env, work / "simulator.log", rounds, ("ct-site", "mr-site"))
    if not (ws / "server" / "simulate_job" / "app_server" / "FL_global_model.pt").is_file():
        raise RuntimeError(f"{key}: the simulator produced no global model; see {work / 'simulator.log'}")

    import torch

    torch.set_num_threads(1)
    structures = spec["client_args"]["structures"]
    engine = trainer_from_fl_model(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.pt", job)
    dice = {}
    for s in SITES:
        ev = engine.evaluate(SiteSlices(data / s, structures, progress=False), "test")
        dice[s] = {"mean_dice": ev["summary"]["mean_dice"], "dice": ev["summary"]["dice"]}
    logs = site_logs(ws)
    sent = {}
    for site, n in GUARD_RE.findall(logs):
        sent.setdefault(site, []).append(int(n))
    dp = [(int(r), float(a), float(b)) for r, a, b in DP_RE.findall(logs)]
    res = {"key": key, "label": label, "rounds": rounds, "local_epochs": spec["client_args"]["local_epochs"], "simulator_seconds": wall,
           "dice": dice, "train_payload_bytes": sent, "filters": overrides,
           "dp_norms": dp, "refusals": logs.count("OUTPUT GUARD REFUSED")}
    (work / "results.json").write_text(json.dumps(res, indent=1))
    print(f"   CT {dice['ct-site']['mean_dice']:.3f}  MR {dice['mr-site']['mean_dice']:.3f}  ({wall:.0f} s)", flush=True)
    return res


def summarize(out: Path) -> str:
    sys.path.insert(0, str(REPO / "custom"))
    from fedxmodal.fl.dp import gaussian_dp_epsilon

    rows = []
    base = None
    order = ["none", "none_seed1", "fp16", "adaquant", "clip_only", "dp_c2.5_0.004", "dp_0.001", "dp_0.01", "dp_1",
             "percentile", "svt", "exclude_input"]
    for key in order + [k for k in ROWS if k not in order]:
        f = out / key / "results.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        ct, mr = r["dice"]["ct-site"]["mean_dice"], r["dice"]["mr-site"]["mean_dice"]
        mean = (ct + mr) / 2
        if key == "none":
            base = mean
        per_round = [n for v in r["train_payload_bytes"].values() for n in v]
        kb = statistics.mean(per_round) / 1024 if per_round else float("nan")
        rows.append((key, r, ct, mr, mean, kb))
    if not rows:
        return f"no results under {out}"
    base_kb = next((kb for k, *_, kb in rows if k == "none"), None)
    lines = ["| site output filter | CT Dice | MR Dice | mean | vs. no filter | KiB per site per round | vs. no filter | guarantee (see text) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r, ct, mr, mean, kb in rows:
        guar = ""
        if key.startswith("dp_") or key == "clip_only":
            sigma = r["filters"]["site_output_filters"][0]["args"]["noise_multiplier"]
            eps = gaussian_dp_epsilon(sigma, r["rounds"], 1e-5)
            clipped = sum(1 for _, a, b in r["dp_norms"] if b < a - 1e-12)
            norms = sorted(a for _, a, _ in r["dp_norms"])
            guar = (f"site-level ({eps:.3g}, 1e-5)-DP over {r['rounds']} rounds" if sigma > 0 else "none (no noise)") + \
                f"; {clipped}/{len(r['dp_norms'])} updates clipped (norms {norms[0]:.2f}-{norms[-1]:.2f})"
        elif key == "svt":
            acc = re.findall(r"SVT privacy accountant: call epsilon ([\d.e+-]+), cumulative epsilon ([\d.e+-]+)",
                             site_logs(out / key / "workspace"))
            guar = (f"NVFlare's accountant: epsilon {float(acc[-1][0]):.0f} per round, {float(acc[-1][1]):.0f} "
                    "over the run (pure DP, per site)") if acc else "NVFlare's SVT accountant (see text)"
        elif key in ("percentile", "exclude_input"):
            guar = "none formal"
        elif key == "none_seed1":
            guar = "(spread of a perturbed run)"
        elif key in ("fp16", "adaquant"):
            guar = "none (communication only)"
        d = f"{mean - base:+.3f}" if base is not None else ""
        b = f"{base_kb / kb:.1f}x smaller" if base_kb and key != "none" and kb < base_kb / 1.05 else ""
        lines.append(f"| {r['label']} | {ct:.3f} | {mr:.3f} | {mean:.3f} | {d} | {kb:.0f} | {b} | {guar} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?", default="runs/privacy_phantom")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--summary", action="store_true", help="only print the table of the finished rows")
    a = p.parse_args()
    out = Path(a.out).resolve()
    data = out / "data"
    if not a.summary:
        if not all((data / s / "dataset.json").is_file() for s in SITES):
            subprocess.run([sys.executable, "-m", "fedxmodal", "demo-data", "--out", str(data)], check=True)
        for key in a.rows.split(","):
            if key not in ROWS:
                raise SystemExit(f"unknown row {key}; rows: {', '.join(ROWS)}")
            if (out / key / "results.json").is_file():
                print(f"== {key}: done, skipped", flush=True)
                continue
            t0 = time.time()
            run_row(key, out, data, a.rounds)
            print(f"   ({time.time() - t0:.0f} s with evaluation)", flush=True)
    table = summarize(out)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
