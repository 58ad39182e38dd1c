#!/usr/bin/env python3
"""A local NVFlare POC federation for fedxmodal: bring it up, run jobs on it, take it down.

    python poc/fedxmodal_poc.py up --sites ct-site mr-site --data-root demo/data
    python poc/fedxmodal_poc.py submit jobs/fedgin                 # or a spec: jobs/specs/fedgin.json --set num_rounds=2
    python poc/fedxmodal_poc.py wait                               # follows the last submitted job
    python poc/fedxmodal_poc.py download --out results
    python poc/fedxmodal_poc.py down

Everything lives in one folder (``--workspace``, default ``$FEDXMODAL_POC_WORKSPACE`` or
``./workspace/poc``) and on loopback: the startup kits (made by ``nvflare poc prepare -i``), their
processes, the ~/.nvflare of the nvflare CLI. Each site gets its data through its own local
configuration (``<site kit>/local/fedxmodal_site.json``); the server and sites run a Python in
which fedxmodal is NOT installed, so a job only runs with the code it carries (``app/custom``).
See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    from fedxmodal.deploy import federation as deploy
except ImportError:  # not installed: use the repository's copy
    sys.path.insert(0, str(REPO / "custom"))
    from fedxmodal.deploy import federation as deploy

ENV_WORKSPACE = "FEDXMODAL_POC_WORKSPACE"
LAST_JOB = "last_job.txt"
FOLLOW = re.compile(r"Round \d+ started|Finished FedAvg|SITE LOST|RESUMING|Resuming at|deemed disconnected|"
                    r"Beginning model validation|ERROR - .*(panic|Abort|abort|Exception)")


def _workspace(args) -> Path:
    return Path(args.workspace or os.environ.get(ENV_WORKSPACE) or "workspace/poc").expanduser().resolve()


def _load(args) -> deploy.Federation:
    return deploy.Federation.load(_workspace(args))


def _job_id(args, fed) -> str:
    if getattr(args, "job_id", None):
        return args.job_id
    path = fed.root / LAST_JOB
    if not path.is_file():
        raise deploy.DeployError("no job id given and no job submitted from this workspace yet")
    return path.read_text().strip()


def _participant(fed, name: str) -> str:
    """``server`` names the server whatever its kit is called (``localhost`` in the POC)."""
    return fed.server if name == "server" else name


def _parse_pairs(items, what):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {what} must be NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------ commands
def cmd_up(args) -> int:
    root = _workspace(args)
    data = {k: Path(v) for k, v in _parse_pairs(args.data, "--data").items()}
    data_root = Path(args.data_root).resolve() if args.data_root else None
    if args.phantom:
        from fedxmodal.data.phantom import write_phantom_federation

        data_root = root / "data"
        if not all((data_root / s / "dataset.json").is_file() for s in ("ct-site", "mr-site")):
            print(f"writing phantom sites into {data_root}", flush=True)
            write_phantom_federation(data_root, seed=0, task="abdomen", n_train=4, n_val=1, n_test=2, progress=False)
    gpus = None
    if args.gpus:
        gpus = {s: [int(g) for g in v.split(",") if g != ""] for s, v in _parse_pairs(args.gpus, "--gpus").items()}
        gpus = {s: gpus.get(s, []) for s in args.sites}
    site_python = {"isolated": "isolated", "current": None}.get(args.site_python, args.site_python)
    fed = deploy.prepare_poc(root, args.sites, port=args.port, data_root=data_root, data=data,
                             site_python=site_python, gpus=gpus, heartbeat_timeout=args.heartbeat_timeout,
                             dead_site_grace=args.dead_site_grace)
    print(f"POC federation prepared in {root}")
    print(f"  server: localhost:{fed.port} (listens on 127.0.0.1 only)    kits: {fed.prod_dir}")
    for site in fed.sites:
        cfg = fed.kit(site) / "local" / deploy.SITE_CONFIG_FILE
        where = json.loads(cfg.read_text())["data_dir"] if cfg.is_file() else "NOT CONFIGURED (jobs will fail here)"
        gpu = ",".join(map(str, fed.site_gpus.get(site) or [])) or "none (CPU; accepts GPU jobs)"
        print(f"  {site}: data {where}; GPUs {gpu}")
    print(f"  sites and server run {fed.python}")
    if args.no_start:
        return 0
    print("starting server and sites ...", flush=True)
    t0 = time.time()
    try:
        fed.start(timeout=args.timeout)
    except Exception:
        print("start failed; stopping what was started", file=sys.stderr)
        fed.stop()
        raise
    print(f"up in {time.time() - t0:.0f} s: sites connected: {', '.join(fed.connected_sites())}")
    print(f"admin startup kit: {fed.admin_kit} (user {fed.admin})")
    print(f"  e.g. nvflare job submit -j jobs/fedgin --startup-kit {fed.admin_kit}")
    return 0


def cmd_start(args) -> int:
    fed = _load(args)
    fed.start([_participant(fed, n) for n in args.participants] or None, timeout=args.timeout)
    print(f"running: {', '.join(sorted({p.participant for p in fed.processes()}))}")
    return 0


def cmd_status(args) -> int:
    fed = _load(args)
    procs = fed.processes()
    print(f"federation {fed.root} (server localhost:{fed.port})")
    for name in [fed.server, *fed.sites]:
        mine = [p for p in procs if p.participant == name]
        print(f"  {name}: {'running' if mine else 'stopped'} ({len(mine)} processes)")
    if any(p.participant == fed.server for p in procs):
        try:
            with fed.session() as s:
                info = s.get_system_info()
                print(f"  connected sites: {', '.join(sorted(c.name for c in info.client_info)) or 'none'}")
                for j in s.list_jobs():
                    print(f"  job {j['job_id']} {j.get('job_name') or j.get('name', '')} {j['status']}")
        except Exception as e:
            print(f"  server not reachable: {e}")
    return 0


def _export_spec(args, fed) -> Path:
    from fedxmodal.recipes.export import export_job, load_spec
    from fedxmodal.recipes.nvflare_recipes import apply_overrides, parse_overrides

    try:  # the same --set as `python -m fedxmodal run`
        spec = apply_overrides(load_spec(args.job), parse_overrides(args.set))
    except ValueError as e:
        raise SystemExit(f"error: {args.job}: {e}")
    return export_job(fed.root / "jobs", spec)


def cmd_submit(args) -> int:
    fed = _load(args)
    job = Path(args.job)
    if job.is_file() and job.suffix == ".json":
        job = _export_spec(args, fed)
        print(f"exported {job}")
    elif args.set:
        raise SystemExit("error: --set only applies to a job spec (.json), not to a job folder")
    job_id = fed.submit(job)
    (fed.root / LAST_JOB).write_text(job_id + "\n")
    print(job_id)
    return 0


def _follow(fed, job_id, timeout) -> dict:
    log = fed.kit(fed.server) / job_id / "log.txt"
    seen = 0
    last_status = None

    def on_status(meta):
        nonlocal seen, last_status
        if meta.get("status") != last_status:
            last_status = meta.get("status")
            print(f"[{time.strftime('%H:%M:%S')}] job {job_id}: {last_status}", flush=True)
        if log.is_file():
            lines = log.read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                if FOLLOW.search(line):
                    print(f"[{time.strftime('%H:%M:%S')}]   {line.strip()[:300]}", flush=True)
            seen = len(lines)

    return fed.wait_job(job_id, timeout=timeout, poll=2.0, on_status=on_status)


def cmd_wait(args) -> int:
    fed = _load(args)
    job_id = _job_id(args, fed)
    meta = _follow(fed, job_id, args.timeout)
    status = meta.get("status")
    print(f"job {job_id} ended: {status} (duration {meta.get('duration')})")
    return 0 if status == "FINISHED:COMPLETED" else 1


def cmd_download(args) -> int:
    fed = _load(args)
    job_id = _job_id(args, fed)
    path = fed.download(job_id, Path(args.out).resolve() if args.out else fed.root / "results")
    print(path)
    return 0


def cmd_run(args) -> int:
    if cmd_submit(args):
        return 1
    args.job_id = None
    rc = cmd_wait(args)
    cmd_download(args)
    return rc


def cmd_resume(args) -> int:
    """Re-run an interrupted job (e.g. after a server restart): NVFlare does not restart it; a
    clone with the same name continues from the last persisted global model."""
    fed = _load(args)
    job_id = _job_id(args, fed)
    with fed.session() as s:
        meta = s.get_job_meta(job_id)
        if not str(meta.get("status", "")).startswith(deploy.TERMINAL_PREFIX):
            try:
                s.abort_job(job_id)
                print(f"job {job_id} was {meta.get('status')}: aborted")
            except Exception:  # the entry a server restart leaves behind: nothing runs it
                print(f"job {job_id} is listed as {meta.get('status')} but nothing runs it (server restarted; "
                      "NVFlare 2.9 keeps the entry)")
        new_id = s.clone_job(job_id)
    (fed.root / LAST_JOB).write_text(new_id + "\n")
    print(new_id)
    return 0


def cmd_kill(args) -> int:
    fed = _load(args)
    sig = getattr(signal, args.signal)
    fed.kill(_participant(fed, args.participant), sig=sig)
    print(f"{args.participant}: killed ({args.signal})")
    return 0


def cmd_console(args) -> int:
    fed = _load(args)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = fed.admin_kit / "startup" / "fl_admin.sh"
    os.execv(str(script), [str(script)])
    return 0


def cmd_kit(args) -> int:
    fed = _load(args)
    print(fed.admin_kit if args.name in (None, "admin") else fed.kit(_participant(fed, args.name)))
    return 0


def cmd_down(args) -> int:
    root = _workspace(args)
    if not (root / deploy.STATE_FILE).is_file():
        print(f"nothing prepared in {root}")
        return 0
    fed = deploy.Federation.load(root)
    report = fed.stop(timeout=args.timeout)
    forced = len(report["terminated"]) + len(report["killed"])
    print(f"stopped {root}: {'graceful shutdown' if report['graceful'] else 'no server running'}"
          + (f"; {forced} process(es) needed a signal" if forced else "") + "; no process left")
    if args.clean:
        shutil.rmtree(root)
        print(f"removed {root}")
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedxmodal_poc.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", "-w", help=f"federation folder (default ${ENV_WORKSPACE} or ./workspace/poc)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("up", help="prepare the POC (startup kits, site configuration) and start it")
    s.add_argument("--sites", nargs="+", default=["ct-site", "mr-site"], help="site names (default: ct-site mr-site)")
    s.add_argument("--data-root", help="folder holding one data folder per site name")
    s.add_argument("--data", nargs="*", metavar="SITE=DIR", help="a site's data folder (wins over --data-root)")
    s.add_argument("--phantom", action="store_true", help="write small phantom ct-site/mr-site data and use it")
    s.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    s.add_argument("--gpus", nargs="*", metavar="SITE=IDS", help="GPUs per site, e.g. ct-site=0 mr-site=1 "
                   "(default: none on a CPU host, all on a GPU host)")
    s.add_argument("--site-python", default="isolated",
                   help="Python of server and sites: isolated (default: without fedxmodal), current, or a path")
    s.add_argument("--heartbeat-timeout", type=float, default=60.0,
                   help="s without heartbeat before the server drops a site (default 60; NVFlare: 600)")
    s.add_argument("--dead-site-grace", type=float, default=None,
                   help="s a round keeps waiting for a dropped site (NVFlare default 60)")
    s.add_argument("--no-start", action="store_true", help="only prepare")
    s.add_argument("--timeout", type=float, default=180.0, help="s to wait for server and sites")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("start", help="start (again) the server and/or sites")
    s.add_argument("participants", nargs="*", help="server and/or site names (default: all)")
    s.add_argument("--timeout", type=float, default=180.0)
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("status", help="processes, connected sites, jobs")
    s.set_defaults(func=cmd_status)

    def job_args(s):
        s.add_argument("job", help="a job folder (jobs/fedgin) or a job spec (jobs/specs/fedgin.json)")
        s.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                       help="spec overrides (dotted keys, JSON values), e.g. num_rounds=2 client_args.local_epochs=1")

    s = sub.add_parser("submit", help="submit a job (FLARE API); prints its id")
    job_args(s)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("wait", help="follow a job until it ends (exit 0 if it completed)")
    s.add_argument("job_id", nargs="?", help="default: the last one submitted from here")
    s.add_argument("--timeout", type=float, default=0.0, help="s (0: no limit)")
    s.set_defaults(func=cmd_wait)

    s = sub.add_parser("download", help="download a job's results")
    s.add_argument("job_id", nargs="?")
    s.add_argument("--out", help="destination folder (default <workspace>/results)")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("run", help="submit, wait and download")
    job_args(s)
    s.add_argument("--timeout", type=float, default=0.0)
    s.add_argument("--out", help="destination folder (default <workspace>/results)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("resume", help="re-run an interrupted job from its last persisted global model")
    s.add_argument("job_id", nargs="?")
    s.set_defaults(func=cmd_resume)

    s = sub.add_parser("kill", help="kill a participant's processes (fault drills)")
    s.add_argument("participant", help="server or a site name")
    s.add_argument("--signal", default="SIGKILL", choices=["SIGKILL", "SIGTERM"])
    s.set_defaults(func=cmd_kill)

    s = sub.add_parser("console", help="open the admin console (fl_admin.sh of the admin kit)")
    s.set_defaults(func=cmd_console)

    s = sub.add_parser("kit", help="print a startup kit's path (admin by default)")
    s.add_argument("name", nargs="?")
    s.set_defaults(func=cmd_kit)

    s = sub.add_parser("down", help="stop everything (running jobs are aborted); nothing is left running")
    s.add_argument("--timeout", type=float, default=45.0, help="s of graceful shutdown before signals")
    s.add_argument("--clean", action="store_true", help="also delete the workspace folder")
    s.set_defaults(func=cmd_down)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except deploy.DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
