"""``run``: any job of the project, as its NVFlare Recipe, in one of NVFlare 2.9's execution
environments, at a chosen budget::

    python -m fedxmodal run fedgin --env sim --data demo/data --set num_rounds=2 client_args.local_epochs=1
    python -m fedxmodal run jobs/specs/fedcowpro.json --env poc --data demo/data
    python -m fedxmodal run fedgin --env prod --startup-kit prod_00/admin@example.org

``sim``: ``SimEnv`` (one thread per site) in ``<workspace>/<job>`` (a fresh run unless ``--resume``);
``poc``: ``PocEnv``, a POC federation of the named sites on a free loopback port in ``<workspace>``,
taken down after the job; ``prod``: ``ProdEnv``, the job submitted with an admin's startup kit to a
running provisioned federation (its sites read their data from their own kits). Prints where the
global models and the cross-site results are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

WORKSPACES = {"sim": "workspace/sim", "poc": "workspace/poc-env"}
DEFAULT_SITES = ("ct-site", "mr-site")
LOGIN_TIMEOUT = 30.0  # s; NVFlare's 5-10 s is short for a loaded machine


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run any job (a spec file or a job name) as its NVFlare Recipe in SimEnv, "
                                   "PocEnv or ProdEnv")
    p.add_argument("job", metavar="SPEC_OR_NAME", help="jobs/specs/<name>.json, another spec file, or a job name")
    p.add_argument("--env", choices=("sim", "poc", "prod"), default="sim", help="execution environment (default sim)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="spec overrides, dotted keys and JSON values, e.g. num_rounds=2 "
                        "client_args.local_epochs=1 (default: none)")
    p.add_argument("--data", metavar="ROOT", help="folder of the site folders (<ROOT>/<site>; sim and poc)")
    p.add_argument("--sites", nargs="+", help="site names (sim and poc; default: the job's, else ct-site mr-site)")
    p.add_argument("--startup-kit", metavar="DIR", help="an admin's startup kit (prod)")
    p.add_argument("--username", help="the admin user of --startup-kit (default: the kit folder's name)")
    p.add_argument("--workspace", help="sim: workspace root (default workspace/sim); poc: the POC's folder "
                                       "(default workspace/poc-env)")
    p.add_argument("--resume", action="store_true", help="sim: keep the previous run's workspace (resume it)")
    p.add_argument("--timeout", type=float, default=0.0, help="poc/prod: seconds to wait for the job (0: no limit)")
    p.set_defaults(func=cmd_run)


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_run(args) -> int:
    from ..recipes.nvflare_recipes import parse_overrides, recipe_for

    if args.env == "prod" and not args.startup_kit:
        return _usage("--env prod needs --startup-kit DIR (an admin's startup kit)")
    if args.startup_kit and not Path(args.startup_kit, "startup").is_dir():
        return _usage(f"{args.startup_kit}: not a startup kit (no startup/ folder)")
    if args.data and not Path(args.data).is_dir():
        return _usage(f"--data {args.data}: no such folder")
    try:
        recipe = recipe_for(args.job, parse_overrides(args.set))
    except (ValueError, TypeError, KeyError) as e:
        return _usage(f"{args.job}: {e}")
    sites = args.sites or recipe.sites or list(DEFAULT_SITES)
    extra = {"data_root": str(Path(args.data).resolve())} if args.data else {}
    env, clean_up = make_env(args, recipe.name, sites, extra)
    print(f"{recipe.name}: {recipe.spec.server.num_rounds} round(s), {args.env} env, sites {', '.join(sites)}",
          flush=True)
    try:
        run = recipe.run(env)
    except (RuntimeError, ValueError) as e:  # the env's own one-line reason (failed simulation, refused submit)
        print(f"error: {recipe.name}: {e}", file=sys.stderr)
        if clean_up:
            env.stop(clean_up=False)
        return 1
    result = run.get_result(timeout=args.timeout, clean_up=False)
    if clean_up:
        env.stop(clean_up=False)
    if not result:
        print(f"error: job {run.get_job_id()} gave no result (status {run.get_status()})", file=sys.stderr)
        return 1
    report_result(Path(result), args.env)
    return 0


def make_env(args, job_name: str, sites, extra):
    """The execution environment of ``--env`` and whether it must be stopped after the job."""
    from nvflare.recipe import ProdEnv, SimEnv

    if args.env == "prod":
        kit = Path(args.startup_kit).resolve()
        return ProdEnv(startup_kit_location=str(kit), username=args.username or kit.name, login_timeout=LOGIN_TIMEOUT,
                       extra=extra), False
    root = Path(args.workspace or WORKSPACES[args.env]).resolve()
    if args.env == "sim":
        if not args.resume:  # the server's resumable checkpoint lives in the run's workspace
            shutil.rmtree(root / job_name, ignore_errors=True)
        return SimEnv(clients=list(sites), workspace_root=str(root), extra=extra), False
    return poc_env(root, sites, extra), True


def poc_env(root: Path, sites, extra):
    """NVFlare's PocEnv on a project of the named sites, a free loopback port and this Python."""
    import yaml
    from nvflare.recipe import PocEnv

    from ..deploy.kits import DEFAULT_ADMIN, poc_project
    from ..deploy.processes import free_port

    root.mkdir(parents=True, exist_ok=True)
    project = root.parent / f"{root.name}.project.yml"
    project.write_text(yaml.safe_dump(poc_project(sites, free_port()), sort_keys=False))
    os.environ["NVFLARE_POC_WORKSPACE"] = str(root)  # PocEnv reads it when built
    # the POC's start scripts run `python3`: this one, which has NVFlare
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return PocEnv(clients=list(sites), num_clients=len(sites), project_conf_path=str(project),
                  username=DEFAULT_ADMIN, extra={**extra, "login_timeout": LOGIN_TIMEOUT})


def report_result(result: Path, env: str) -> None:
    """Where the global models and the cross-site results are (a simulator or a downloaded workspace)."""
    run = result / "server" / "simulate_job" if env == "sim" else result / "workspace"
    if not run.is_dir():
        run = result
    print(f"results: {result}")
    for what, rel in (("global model", "app_server/FL_global_model.pt"),
                      ("best global model", "app_server/best_FL_global_model.pt"),
                      ("cross-site results", "cross_site_val/cross_val_results.json"),
                      ("round metrics", "metrics/round_metrics.jsonl")):
        if (run / rel).is_file():
            print(f"  {what}: {run / rel}")


# ------------------------------------------------------------------ SimEnv with its output in a log
ROUND = re.compile(r"Round (\d+) started")


@contextlib.contextmanager
def scoped_environ(**values):
    """Environment variables set for the processes started inside (SimEnv's simulator), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def output_to_log(log_path: Path, n_rounds: int, indent: str = "  "):
    """This process's stdout and stderr -- and so the simulator's, which inherits them -- into
    ``log_path``; round progress echoed on the console."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w")
    log = open(log_path, "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    done, t0 = threading.Event(), time.perf_counter()

    def follow():
        with open(log_path) as f:
            while True:
                line = f.readline()
                if not line:
                    if done.is_set():
                        return
                    time.sleep(0.2)
                    continue
                m = ROUND.search(line)
                if m:
                    console.write(f"{indent}round {int(m.group(1)) + 1}/{n_rounds} started "
                                  f"({time.perf_counter() - t0:.0f} s)\n")
                    console.flush()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        done.set()
        follower.join(10)
        for fd in saved:
            os.close(fd)
        log.close()
        console.close()


def run_in_sim(recipe, sites, workspace_root: Path, log_path: Path, **environ) -> Path:
    """``recipe`` in NVFlare's SimEnv (one thread per site) with ``environ`` set for its processes
    and its output in ``log_path``; returns the server's run folder. Raises with the log's tail."""
    from nvflare.recipe import SimEnv

    env = SimEnv(clients=list(sites), workspace_root=str(workspace_root))
    try:
        with scoped_environ(**environ), output_to_log(log_path, recipe.spec.server.num_rounds):
            result = recipe.run(env).get_result()
    except RuntimeError as e:
        tail = "".join(open(log_path).readlines()[-30:])
        raise RuntimeError(f"{e}\nlog: {log_path}\n{tail}") from None
    return Path(result) / "server" / "simulate_job"
