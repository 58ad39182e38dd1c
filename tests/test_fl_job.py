"""The fedxmodal NVFlare job, end to end: export, shipping of code, the real `nvflare simulator`
(2 sites, 2 rounds, 2 threads) with the toy client, best model, cross-site evaluation, resume.

The simulator runs use a Python in which ``fedxmodal`` is NOT importable (a venv that sees this
environment's site-packages through a plain .pth line, so the editable install's own .pth is not
processed): the job only works if its code travels with it in app/custom/.
"""

import io
import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "tests" / "fl_toy" / "toy_job.json"
FEDGIN_SPEC = REPO / "jobs" / "specs" / "fedgin.json"
TOY = REPO / "tests" / "fl_toy"
SITES = {"ct-site": ("CT", 64), "mr-site": ("MR", 40)}
MODELS = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}

sys.path.insert(0, str(TOY))
from toy_client import weights_digest  # noqa: E402

from fedxmodal.fl.client_args import parse_client_args  # noqa: E402
from fedxmodal.recipes.export import compare_job_dirs, export_job, load_spec  # noqa: E402


# ------------------------------------------------------------------ helpers / fixtures
def make_toy_sites(root: Path) -> Path:
    for site, (modality, n) in SITES.items():
        (root / site).mkdir(parents=True, exist_ok=True)
        (root / site / "dataset.json").write_text(
            json.dumps({"name": site, "modality": modality, "toy": {"n_training": n, "n_validation": 16, "n_test": 16}})
        )
    return root


@pytest.fixture(scope="module")
def python_without_fedxmodal(tmp_path_factory):
    """A venv seeing this environment's packages but not the editable fedxmodal install."""
    venv = tmp_path_factory.mktemp("nofx") / "venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (purelib / "fedxmodal_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import nvflare, torch, importlib.util as u; print(u.find_spec('fedxmodal') or 'ok')"],
        capture_output=True, text=True, cwd=venv, env=_clean_env(),
    )
    assert probe.stdout.strip() == "ok", probe.stdout + probe.stderr
    return python


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_") and k != "PYTHONPATH"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_simulator(python, job_dir, workspace, env, timeout=120):
    cmd = [str(python), "-m", "nvflare.cli", "simulator", str(job_dir), "-w", str(workspace),
           "-n", "2", "-t", "2", "-c", ",".join(SITES)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=workspace.parent, capture_output=True, text=True, timeout=timeout)
    (workspace.parent / f"{workspace.name}.out.txt").write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.time() - t0, proc.stdout + proc.stderr


def read_events(events_dir: Path, site: str):
    path = events_dir / f"{site}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def export_toy_job(job_root: Path, **overrides) -> Path:
    spec = load_spec(SPEC)
    spec.update(overrides)
    return export_job(job_root, spec)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, python_without_fedxmodal):
    tmp = tmp_path_factory.mktemp("fl_main")
    job = export_toy_job(tmp / "jobs", num_rounds=2)
    (tmp / "events").mkdir()
    env = _clean_env(
        FEDXMODAL_DATA_ROOT=make_toy_sites(tmp / "data"),
        FEDXMODAL_CHECKPOINT_DIR=tmp / "ckpt",
        FEDXMODAL_TOY_EVENTS=tmp / "events",
    )
    rc, wall, out = run_simulator(python_without_fedxmodal, job, tmp / "ws", env)
    return dict(tmp=tmp, job=job, rc=rc, wall=wall, out=out, ws=tmp / "ws", run=tmp / "ws" / "server" / "simulate_job")


# ------------------------------------------------------------------ export / shipping (fast)
def test_export_puts_every_knob_in_the_config(tmp_path):
    client_args = {"local_epochs": 5, "seed": 7, "structures": ["liver", "spleen"], "num_threads": 1}
    job = export_toy_job(
        tmp_path, name="knobs", num_rounds=7, min_clients=3, client_args=client_args, task_request_interval=0.3
    )
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    meta = json.loads((job / "meta.json").read_text())
    assert meta["name"] == "knobs" and meta["min_clients"] == 3
    assert server["server"]["task_request_interval"] == 0.3
    wf = {w["id"]: w for w in server["workflows"]}
    assert wf["fedavg"]["path"] == "fedxmodal.fl.server.ResumableFedAvg"
    assert wf["fedavg"]["args"]["num_rounds"] == 7 and wf["fedavg"]["args"]["num_clients"] is None
    assert "cross_site_model_eval" in wf
    comps = {c["id"]: c for c in server["components"]}
    assert comps["persistor"]["args"]["model"]["path"] == "toy_task.ToyNet"
    assert comps["persistor"]["args"]["checkpoint_dir"] == "fedxmodal_checkpoints"
    assert comps["model_selector"]["args"]["key_metric"] == "dice"
    ex = client["executors"][0]["executor"]["args"]
    assert ex["task_script_path"] == "toy_client.py"
    args = parse_client_args(ex["task_script_args"].split())
    assert args["model"] == comps["persistor"]["args"]["model"]
    assert {k: args[k] for k in client_args} == client_args
    # the code travels with the job, without caches, and nothing points outside it
    custom = job / "app" / "custom"
    assert (custom / "fedxmodal" / "fl" / "server.py").is_file()
    assert (custom / "toy_client.py").is_file() and (custom / "toy_task.py").is_file()
    assert not list(job.rglob("__pycache__")) and not list(job.rglob("*.pyc"))
    assert str(REPO) not in (job / "app/config/config_fed_client.json").read_text()


def test_script_inside_the_package_runs_in_place(tmp_path):
    """A site script that is part of the shipped package is not copied a second time."""
    pkg = tmp_path / "src" / "fedxmodal"
    (pkg / "fl").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fl" / "__init__.py").write_text("")
    (pkg / "fl" / "site.py").write_text("print('site')\n")
    spec = load_spec(SPEC)
    spec.update(name="inpkg", package_dir=str(pkg), client_script=str(pkg / "fl" / "site.py"))
    job = export_job(tmp_path / "jobs", spec)
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["task_script_path"] == "fedxmodal/fl/site.py"
    assert (job / "app/custom/fedxmodal/fl/site.py").is_file()
    assert not (job / "app/custom/site.py").exists()


def test_export_is_reproducible(tmp_path):
    a = export_toy_job(tmp_path / "a")
    b = export_toy_job(tmp_path / "b")
    assert compare_job_dirs(a, b) == []


def test_committed_fedgin_job_is_in_sync(tmp_path):
    """jobs/fedgin/ is GENERATED from jobs/specs/fedgin.json and custom/fedxmodal (the one source).
    Git holds its meta.json and app/config/; app/custom/ is written by `make` (git-ignored), so the
    code exists once in the repository. If this fails:
    python -m fedxmodal.recipes.export jobs/specs/fedgin.json --export-dir jobs"""
    fresh = export_job(tmp_path, load_spec(FEDGIN_SPEC))
    committed = REPO / "jobs" / "fedgin"
    diffs = [d for d in compare_job_dirs(fresh, committed) if "app/custom/" not in d]
    assert diffs == [], (
        "jobs/fedgin is out of date; regenerate with "
        "`python -m fedxmodal.recipes.export jobs/specs/fedgin.json --export-dir jobs`:\n" + "\n".join(diffs[:40])
    )
    assert (committed / "meta.json").is_file() and (committed / "app" / "config" / "config_fed_client.json").is_file()
    client = json.loads((committed / "app" / "config" / "config_fed_client.json").read_text())
    assert "fedxmodal/fl/site.py" in json.dumps(client)


def test_cli_job_submit_keeps_the_configs(tmp_path):
    """`nvflare job submit` re-saves every config of a copy of the job before uploading it; a file
    whose FIRST key holds an object is replaced by that object (meta.json sorted with deploy_map
    first -> "deploy_map is empty"). The exporter must keep FedJob's key order."""
    import argparse
    import shutil

    from nvflare.tool.job import job_cli

    job = export_toy_job(tmp_path / "jobs")
    copy = tmp_path / "submitted"
    shutil.copytree(job, copy)
    apps = [os.path.basename(d) for d in job_cli.get_app_dirs_from_job_folder(str(job))] or ["app"]
    job_cli.prepare_job_config(argparse.Namespace(job_folder=str(job), config_file=None, debug=False), apps, str(copy))
    for rel in ("meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json"):
        assert json.loads((copy / rel).read_text()) == json.loads((job / rel).read_text()), rel


def test_nvflare_packing_does_not_follow_directory_symlinks(tmp_path):
    """Why the package is copied into the job rather than symlinked: the simulator and the FLARE
    API's submit_job pack a job with zip_utils, which ships a symlinked directory EMPTY."""
    from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    custom = tmp_path / "job" / "app" / "custom"
    custom.mkdir(parents=True)
    (custom / "pkg").symlink_to(tmp_path / "pkg", target_is_directory=True)
    names = zipfile.ZipFile(io.BytesIO(zip_directory_to_bytes(str(tmp_path), "job"))).namelist()
    assert any(n.rstrip("/").endswith("custom/pkg") for n in names)
    assert not any(n.endswith("pkg/mod.py") for n in names)


# ------------------------------------------------------------------ the real simulator
@pytest.mark.slow
def test_simulator_run(main_run):
    run, ws = main_run["run"], main_run["ws"]
    assert main_run["rc"] == 0, main_run["out"][-3000:]
    assert main_run["wall"] < 60

    # global model every round + best model, in the run and in the resumable checkpoint folder
    assert (run / "app_server" / "FL_global_model.pt").is_file()
    assert (run / "app_server" / "best_FL_global_model.pt").is_file()
    state = json.loads((main_run["tmp"] / "ckpt" / "toyjob" / "fedxmodal_state.json").read_text())
    assert state["last_round"] == 1 and state["num_rounds"] == 2 and state["best"]["round"] == 1
    assert (main_run["tmp"] / "ckpt" / "toyjob" / "best_FL_global_model.pt").is_file()

    # cross-site evaluation: every site x every model (both sites' local models + global + best)
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(cse) == set(SITES)
    for site, results in cse.items():
        assert set(results) == MODELS, (site, results.keys())
        assert all(0.0 <= r["dice"] <= 1.0 for r in results.values())

    # FedAvg weighted by training slices; the global model's validation Dice improves
    rounds = [json.loads(line) for line in (run / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    weights = {s["name"]: s["weight"] for s in rounds[0]["sites"]}
    assert weights == {site: float(n) for site, (_, n) in SITES.items()}
    dice = [next(m["value"] for m in r["aggregated_metrics"] if m["name"] == "dice") for r in rounds]
    assert dice[1] > dice[0], dice

    # the sites used the code shipped in the job, got total_rounds, served every task
    for site in SITES:
        events = read_events(main_run["tmp"] / "events", site)
        assert events, f"no events from {site}"
        assert all(f"{ws}/{site}/" in e["fedxmodal_file"] and "/custom/fedxmodal/" in e["fedxmodal_file"]
                   for e in events)
        tasks = [e["name"] for e in events if e["task"] == "received"]
        assert tasks[:2] == ["train", "train"]
        assert sorted(tasks[2:]) == ["submit_model"] + ["validate"] * len(MODELS)
        assert {e["total"] for e in events if e.get("name") == "train"} == {2}

    # metrics streamed to the server's TensorBoard folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for site in SITES:
        acc = EventAccumulator(str(run / "tb_events" / site))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "val/dice" in tags and "train/loss" in tags
        assert [e.step for e in acc.Scalars("val/dice")] == [0, 1]


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, python_without_fedxmodal):
    job = export_toy_job(tmp_path / "jobs", num_rounds=2)
    data = make_toy_sites(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    events = tmp_path / "events"
    events.mkdir()
    common = dict(FEDXMODAL_CHECKPOINT_DIR=ckpt, FEDXMODAL_TOY_EVENTS=events)

    # run 1: a site crashes in round 1 -> the job stops after persisting round 0
    rc, wall1, out = run_simulator(
        python_without_fedxmodal, job, tmp_path / "ws1",
        _clean_env(FEDXMODAL_DATA_ROOT=data, FEDXMODAL_TOY_FAIL_AT_ROUND=1, **common),
    )
    assert rc != 0
    state = json.loads((ckpt / "toyjob" / "fedxmodal_state.json").read_text())
    assert state["last_round"] == 0
    saved = torch.load(ckpt / "toyjob" / "FL_global_model.pt", weights_only=True)["model"]
    digest_after_round0 = weights_digest(saved)

    # run 2: a fresh workspace; this time the sites find their data through the workspace file
    # <ws>/local/fedxmodal_site.json (the simulator copies it into every site's local/)
    ws2 = tmp_path / "ws2"
    (ws2 / "local").mkdir(parents=True)
    (ws2 / "local" / "fedxmodal_site.json").write_text(
        json.dumps({"sites": {site: {"data_dir": str(data / site)} for site in SITES}})
    )
    for f in events.iterdir():
        f.rename(f.with_suffix(".run1"))
    rc, wall2, out = run_simulator(python_without_fedxmodal, job, ws2, _clean_env(**common))
    assert rc == 0, out[-3000:]
    assert wall1 + wall2 < 90

    server_log = (ws2 / "server" / "log.txt").read_text()
    assert "Resuming at round 1 of 2" in server_log
    run = ws2 / "server" / "simulate_job"
    rounds = [json.loads(line)["round"] for line in (run / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
    assert rounds == [1]
    for site in SITES:
        first_train = next(e for e in read_events(events, site) if e.get("name") == "train")
        assert first_train["round"] == 1 and first_train["total"] == 2
        assert first_train["digest"] == digest_after_round0  # started from the persisted weights
    assert json.loads((ckpt / "toyjob" / "fedxmodal_state.json").read_text())["last_round"] == 1
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(cse) == set(SITES) and all(set(r) == MODELS for r in cse.values())
