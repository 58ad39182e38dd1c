"""The experiment harness (fedxmodal.deploy.harness): a tiny spec, 1 round, in the real `nvflare
simulator` -> the run's models, parsed cross-site results and TensorBoard folder; a failed run's
error names the site that failed, read from the sites' logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedxmodal.deploy.harness import FederatedRun, SimulatorFailed, _failure, run_federated, site_env, site_failures
from fedxmodal.recipes.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TOY_SPEC = REPO / "tests" / "fl_toy" / "toy_job.json"
SITES = ("ct-site", "mr-site")


def toy_sites(root: Path, sites=SITES) -> Path:
    for site in sites:
        (root / site).mkdir(parents=True, exist_ok=True)
        (root / site / "dataset.json").write_text(json.dumps(
            {"name": site, "modality": "CT" if site.startswith("ct") else "MR",
             "toy": {"n_training": 24, "n_validation": 8, "n_test": 8}}))
    return root


def test_one_round_in_the_simulator_gives_models_cross_site_results_and_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDXMODAL_SITE_DIR_CT_SITE", str(tmp_path / "elsewhere"))  # a user's setting: not used
    spec = load_spec(TOY_SPEC)
    spec.update(num_rounds=1, name="harness_toy")
    spec["client_args"] = {**spec["client_args"], "local_epochs": 1}
    run = run_federated(spec, toy_sites(tmp_path / "data"), tmp_path / "run", seed=5, threads=1,
                        require=("global_model", "cross_site"), timeout=300)
    assert isinstance(run, FederatedRun) and run.sites == SITES and run.num_rounds == 1 and run.wall_s > 0
    assert run.job == tmp_path / "run" / "job" / "harness_toy" and (run.job / "meta.json").is_file()
    assert run.global_model.is_file() and run.log.is_file()
    assert run.best_model is None  # the server picks its best model from round 2 on (round 1's is the initial one)
    # the seed reached the sites and the initial model
    client = (run.job / "app" / "config" / "config_fed_client.json").read_text()
    assert "--seed=5" in client and '"init_seed": 5' in (run.job / "app" / "config" / "config_fed_server.json").read_text()
    # cross-site results parsed; every site's metrics of the server's final model
    assert set(run.cross_site) == set(SITES)
    metrics = run.site_metrics("global")
    assert set(metrics) == set(SITES) and all(0.0 <= m["dice"] <= 1.0 for m in metrics.values())
    assert {m for per_site in run.cross_site.values() for m in per_site} == {"SRV_FL_global_model.pt", *SITES}
    assert sorted(p.name for p in run.tb_dir.iterdir()) == sorted(SITES)  # the sites' streamed metrics
    assert run.site_log("mr-site").is_file() and run.server_log.is_file()
    assert json.loads(json.dumps(run.to_dict()))["global_model"] == str(run.global_model)
    with pytest.raises(SimulatorFailed, match="site 'ct-site' reported no 'dice' of SRV_nothing"):
        run.site_metrics("SRV_nothing")


def test_site_env_keeps_no_data_location_of_the_caller(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDXMODAL_SITE_CONFIG", "/x.json")
    monkeypatch.setenv("FEDXMODAL_NUM_THREADS", "3")
    env = site_env(tmp_path / "data", tmp_path / "ck", {"FEDXMODAL_SITE_STATE_DIR": tmp_path / "st"})
    assert "FEDXMODAL_SITE_CONFIG" not in env and env["FEDXMODAL_NUM_THREADS"] == "3"
    assert env["FEDXMODAL_DATA_ROOT"] == str(tmp_path / "data") and env["FEDXMODAL_SITE_STATE_DIR"] == str(tmp_path / "st")
    assert site_env(tmp_path, tmp_path, threads=1)["FEDXMODAL_NUM_THREADS"] == "1"


def _log(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_failed_run_names_the_site_from_its_log(tmp_path):
    """The logs of a real failed run (mr-site without data), shortened: the error names mr-site and
    its exception, not ct-site, which only logged the abort that followed."""
    ws = tmp_path / "ws"
    _log(ws / "mr-site" / "error_log.txt", (
        "2026-12-08 01:14:58,599 - TaskScriptRunner - ERROR - Traceback (most recent call last):\n"
        '  File "custom/toy_client.py", line 43, in main\n'
        "    cfg = resolve_site_config(site.site_name)\n"
        "fedxmodal.fl.site_config.SiteNotConfiguredError: Site 'mr-site': the data folder /d/mr-site does not exist\n"))
    _log(ws / "ct-site" / "error_log.txt",
         "2026-12-08 01:14:59,151 - InProcessClientAPI - ERROR - ask to abort job: reason: 'train' is aborted\n")
    _log(ws / "server" / "log.txt", "2026-12-08 01:14:59,075 - ERROR - Aborting current RUN due to FATAL_SYSTEM_ERROR "
                                    "received: Result from mr-site is bad, error code: TASK_ABORTED.\n")
    failures = site_failures(ws, SITES)
    assert [f.site for f in failures] == ["mr-site"] and "SiteNotConfiguredError" in failures[0].reason
    err = _failure("job toy: nvflare simulator failed", ws, SITES, tmp_path / "sim.log")
    assert isinstance(err, SimulatorFailed) and err.site == "mr-site"
    assert "site 'mr-site' failed: fedxmodal.fl.site_config.SiteNotConfiguredError" in str(err)
    # a site the server reports as bad, without an exception of its own, is named too
    (ws / "mr-site" / "error_log.txt").unlink()
    assert [(f.site, f.reason) for f in site_failures(ws, SITES)] == [
        ("mr-site", "the server got a bad result (TASK_ABORTED)")]
    # an output-guard refusal is a site's error
    _log(ws / "ct-site" / "log.txt", "2026-12-08 01:14:57,000 - OutputGuard - ERROR - OUTPUT GUARD REFUSED the train "
                                     "result of ct-site: undeclared entry 'images'. Nothing of it leaves the site.\n")
    assert site_failures(ws, SITES)[0].site == "ct-site"
