"""POC federation with poc/fedxmodal_poc.py: up (named sites, data through each site's local
configuration) -> submit FedGIN (2 sites, 2 rounds, tiny phantom) -> wait -> download -> down, on
loopback; the server and sites run a Python without fedxmodal (the code travels with the job) and
nothing is left running. Plus the fast pieces of fedxmodal.deploy.federation (project, site config, ports,
GPU resources)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import FEDGIN_SPEC, POC_CLI, REPO, assert_nothing_left, listening_addresses
from fedxmodal.deploy import federation as deploy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SITES = ("ct-site", "mr-site")


def run_cli(ws: Path, *args, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_") and k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(POC_CLI), "--workspace", str(ws), *map(str, args)], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    with open(ws.parent / "cli.log", "a") as log:
        log.write(f"$ {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}\n")
    return proc


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_poc_cli_runs_fedgin_end_to_end(tmp_path):
    from fedxmodal.data.phantom import write_phantom_federation

    data = tmp_path / "data"
    write_phantom_federation(data, seed=0, task="abdomen", n_train=2, n_val=1, n_test=1, progress=False)
    ws = tmp_path / "poc"
    try:
        up = run_cli(ws, "up", "--sites", *SITES, "--data-root", data, timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "sites connected: ct-site, mr-site" in up.stdout
        fed = deploy.Federation.load(ws)
        assert listening_addresses(fed.port) == ["127.0.0.1"]  # loopback only
        for site in SITES:  # each site's data is in ITS kit's local configuration
            cfg = json.loads((fed.kit(site) / "local" / "fedxmodal_site.json").read_text())
            assert cfg == {"data_dir": str((data / site).resolve())}
        # the server and sites run a Python in which fedxmodal is not importable
        probe = subprocess.run([fed.python, "-c", "import importlib.util as u; print(u.find_spec('fedxmodal'))"],
                               capture_output=True, text=True, cwd=str(tmp_path), env={"PATH": os.environ["PATH"]})
        assert probe.stdout.strip() == "None", probe.stdout + probe.stderr

        sub = run_cli(ws, "submit", FEDGIN_SPEC, "--set", "num_rounds=2", "client_args.local_epochs=1",
                      "client_args.preprocess.size=64", "client_args.train.batch_size=8")
        assert sub.returncode == 0, sub.stdout + sub.stderr
        job_id = sub.stdout.strip().splitlines()[-1]
        meta = json.loads((ws / "jobs" / "fedgin" / "meta.json").read_text())
        assert meta["resource_spec"] == {"@default": {"num_of_gpus": 1}}  # a GPU job, accepted by CPU sites

        wait = run_cli(ws, "wait", "--timeout", 840)
        assert wait.returncode == 0, wait.stdout + wait.stderr
        assert "Round 0 started" in wait.stdout and "Round 1 started" in wait.stdout
        assert f"job {job_id} ended: FINISHED:COMPLETED" in wait.stdout

        dl = run_cli(ws, "download", "--out", tmp_path / "results")
        assert dl.returncode == 0, dl.stdout + dl.stderr
        result = Path(dl.stdout.strip().splitlines()[-1])
        assert result == tmp_path / "results" / job_id
        run = result / "workspace"
        assert (run / "app_server" / "FL_global_model.pt").is_file()
        assert (run / "app_server" / "best_FL_global_model.pt").is_file()
        rounds = [json.loads(line)["round"] for line in (run / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
        assert rounds == [0, 1]
        cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
        assert set(cse) == set(SITES)
        for results in cse.values():
            assert set(results) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
            assert all(0.0 <= r["dice"] <= 1.0 for r in results.values())

        # every site ran the fedxmodal shipped in the job, on its own data
        for site, modality in (("ct-site", "CT"), ("mr-site", "MR")):
            log = (fed.kit(site) / job_id / "log.txt").read_text()
            assert f"fedxmodal from {fed.kit(site) / job_id / f'app_{site}' / 'custom' / 'fedxmodal'}" in log
            assert f"[{site}] {modality}:" in log and "training slices" in log

        down = run_cli(ws, "down", timeout=200)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "no process left" in down.stdout
        assert_nothing_left(ws)
    finally:  # whatever happened above, leave nothing running
        if (ws / deploy.STATE_FILE).is_file():
            deploy.Federation.load(ws).stop()


# ------------------------------------------------------------------------------------ fast pieces
def test_poc_project_names_sites_and_rejects_bad_names():
    project = deploy.poc_project(["ct-site", "mr-site", "pet-site"], 12345)
    parts = {p["name"]: p for p in project["participants"]}
    assert parts["localhost"]["fed_learn_port"] == 12345 and parts["localhost"]["type"] == "server"
    assert [p["name"] for p in project["participants"] if p["type"] == "client"] == ["ct-site", "mr-site", "pet-site"]
    assert parts[deploy.DEFAULT_ADMIN]["role"] == "project_admin"
    for bad in (["ct-site", "ct-site"], ["localhost"], ["a b"], []):
        with pytest.raises(ValueError):
            deploy.poc_project(bad, 12345)


def test_site_resources_cpu_site_accepts_gpu_jobs_and_gpu_site_gets_its_gpus(tmp_path):
    """CPU site: PassthroughResourceManager (a job asking for a GPU is scheduled and runs on the
    CPU). GPU site: GPUResourceManager over exactly the GPUs it is given, and the consumer that
    sets the job process's CUDA_VISIBLE_DEVICES."""
    from nvflare.app_common.resource_managers.passthrough_resource_manager import PassthroughResourceManager
    from nvflare.utils.job_launcher_utils import get_resource_manager_spec

    local = tmp_path / "kit" / "local"
    local.mkdir(parents=True)
    (local / "resources.json.default").write_text(json.dumps({"format_version": 2, "components": [
        {"id": "resource_manager", "path": "x.GPUResourceManager", "args": {"num_of_gpus": 0}},
        {"id": "resource_consumer", "path": "x.GPUResourceConsumer", "args": {}},
        {"id": "process_launcher", "path": "x.ClientProcessJobLauncher", "args": {}}]}))
    assert deploy.configure_site_resources(tmp_path / "kit", []) == {"gpus": [], "resource_manager": "PassthroughResourceManager"}
    comps = {c["id"]: c for c in json.loads((local / "resources.json").read_text())["components"]}
    assert comps["resource_manager"]["path"].endswith("PassthroughResourceManager")
    assert comps["resource_consumer"]["path"].endswith("PassthroughResourceConsumer")
    assert comps["process_launcher"]["path"] == "x.ClientProcessJobLauncher"  # the rest is kept
    # what NVFlare asks a site's resource manager for the committed FedGIN job
    meta = json.loads((REPO / "jobs" / "fedgin" / "meta.json").read_text())
    need = get_resource_manager_spec(meta, "any-site-name")
    assert need == {"num_of_gpus": 1}
    ok, _ = PassthroughResourceManager().check_resources(need, fl_ctx=None)
    assert ok

    deploy.configure_site_resources(tmp_path / "kit", [1, 3])
    comps = {c["id"]: c for c in json.loads((local / "resources.json").read_text())["components"]}
    assert comps["resource_manager"]["path"].endswith("GPUResourceManager")
    assert comps["resource_manager"]["args"]["num_of_gpus"] == 2
    assert comps["resource_consumer"]["path"].endswith("GPUResourceConsumer")
    fed = deploy.Federation(root=tmp_path / "fed", prod_dir=tmp_path, project="p", server="server", admin="a",
                            sites=["kit"], port=1, site_gpus={"kit": [1, 3]})
    assert fed._env("kit")["CUDA_VISIBLE_DEVICES"] == "1,3"  # the site process sees only its GPUs
    assert fed._env("kit")[deploy.MARKER_ENV] == f"{(tmp_path / 'fed').resolve()}::kit"


def test_site_env_carries_no_fedxmodal_settings_of_the_caller(tmp_path, monkeypatch):
    """A site's data must come from its kit's local config, not from the environment of whoever
    started the POC."""
    monkeypatch.setenv("FEDXMODAL_DATA_ROOT", "/somewhere")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    fed = deploy.Federation(root=tmp_path, prod_dir=tmp_path, project="p", server="server", admin="a",
                            sites=["ct-site"], port=1, python="/usr/bin/python3")
    env = fed._env("ct-site")
    assert not any(k.startswith("FEDXMODAL_") and k != deploy.MARKER_ENV for k in env)
    assert "PYTHONPATH" not in env
    shim = Path(env["PATH"].split(os.pathsep)[0]) / "python3"
    assert '"/usr/bin/python3"' in shim.read_text()


def test_site_data_config_is_read_by_site_config(tmp_path):
    from fedxmodal.fl.site_config import resolve_site_config

    kit = tmp_path / "ct-site"
    (kit / "local").mkdir(parents=True)
    (kit / "startup").mkdir()
    data = tmp_path / "data" / "ct"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    deploy.configure_site_data(kit, data)
    cfg = resolve_site_config("ct-site", workspace_dir=kit, environ={})
    assert cfg.data_dir == data.resolve() and cfg.source.endswith("local/fedxmodal_site.json")


def test_busy_port_is_refused_with_a_clear_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not deploy.port_is_free(port)
        with pytest.raises(deploy.DeployError, match=f"port {port} .* in use"):
            deploy.prepare_poc(tmp_path / "poc", port=port)
    assert deploy.port_is_free(deploy.free_port())


def test_cli_without_a_federation_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(POC_CLI), "--workspace", str(tmp_path / "none"), "status"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "run `up` first" in proc.stderr
    proc = subprocess.run([sys.executable, str(POC_CLI), "--workspace", str(tmp_path / "none"), "down"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "nothing prepared" in proc.stdout
