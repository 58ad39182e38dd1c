"""Faults in a POC federation on loopback (3 sites, toy job, sites without fedxmodal installed):

* the server killed mid-job: NVFlare does not restart the job; after the restart, `resume`
  (a clone of the job) continues from the last persisted global model without redoing the
  finished rounds;
* a site killed (SIGKILL, all its processes) mid-round: with min_clients=2 of 3 the round completes
  with the two others and the job finishes (cross-site evaluation included); with min_clients=2 of
  2 the job ends with a message naming the missing site, and the global model of the last complete
  round stays persisted.

(A startup kit from another provisioned project: tests/test_provision.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deploy_helpers import (DEAD_SITE_GRACE, HEARTBEAT_TIMEOUT, POC_CLI, REPO, assert_nothing_left,
                            export_toy_job, make_toy_sites, job_results, read_events, round_numbers,
                            site_python, wait_for)  # noqa: F401
from fedxmodal.deploy import federation as deploy

sys.path.insert(0, str(REPO / "tests" / "fl_toy"))
from toy_client import weights_digest  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SITES = ("ct-site", "mr-site", "ct-site-2")
SLOW_TRAINING = {"local_epochs": 100}  # a few seconds of local training: time to kill a site mid-round


@pytest.fixture(scope="module")
def poc(tmp_path_factory, site_python):
    tmp = tmp_path_factory.mktemp("faults")
    data = make_toy_sites(tmp / "data", SITES)
    fed = deploy.prepare_poc(tmp / "poc", SITES, data_root=data, site_python=site_python,
                             heartbeat_timeout=HEARTBEAT_TIMEOUT, dead_site_grace=DEAD_SITE_GRACE)
    events = tmp / "events"
    events.mkdir()
    env = {"FEDXMODAL_TOY_EVENTS": str(events)}
    try:
        fed.start(env=env, timeout=240)
        yield dict(fed=fed, tmp=tmp, events=events, env=env)
    finally:
        fed.stop()
        assert_nothing_left(fed.root)


def job_events(events: Path, site: str, job_id: str):
    return [e for e in read_events(events, site) if f"/{job_id}/" in e.get("fedxmodal_file", "")]


def received_train(events: Path, site: str, job_id: str, rnd: int) -> bool:
    return any(e["task"] == "received" and e.get("name") == "train" and e.get("round") == rnd
               for e in job_events(events, site, job_id))


def contributors(run_dir: Path):
    path = run_dir / "metrics" / "round_metrics.jsonl"
    return {r["round"]: sorted(s["name"] for s in r["sites"]) for r in map(json.loads, path.read_text().splitlines())}


def checkpoint(fed, job_name):
    return fed.kit(fed.server) / "fedxmodal_checkpoints" / job_name


def test_server_killed_mid_job_resumes_from_the_last_persisted_round(poc):
    fed, events, tmp = poc["fed"], poc["events"], poc["tmp"]
    assert fed.connected_sites() == sorted(SITES)
    job = export_toy_job(tmp / "jobs", name="restartjob", num_rounds=3, min_clients=3, cross_site_eval=False,
                         client_args=SLOW_TRAINING)
    job_id = fed.submit(job)
    state_file = checkpoint(fed, "restartjob") / "fedxmodal_state.json"
    wait_for(lambda: all(received_train(events, s, job_id, 1) for s in SITES), 300, "round 1 to start")
    assert json.loads(state_file.read_text())["last_round"] == 0
    persisted = weights_digest(torch.load(state_file.with_name("FL_global_model.pt"), weights_only=True)["model"])
    fed.kill(fed.server)  # mid-round 1: round 0 is done and persisted

    fed.start([fed.server], timeout=120)
    fed.wait_sites(SITES, timeout=120)  # the sites reconnect by themselves
    # NVFlare 2.9 does not restart the interrupted job (its entry stays "RUNNING" with nothing
    # behind it) and the sites drop their part of it
    assert fed.job_meta(job_id)["status"] == "RUNNING"
    wait_for(lambda: not [p for s in SITES for p in fed.processes(s) if "worker_process" in p.cmdline], 60,
             "the sites to end their part of the dead job")

    proc = subprocess.run([sys.executable, str(POC_CLI), "--workspace", str(fed.root), "resume", job_id],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing runs it" in proc.stdout
    new_id = proc.stdout.strip().splitlines()[-1]
    assert new_id != job_id
    meta = fed.wait_job(new_id, timeout=300)
    assert meta["status"] == "FINISHED:COMPLETED", meta

    assert round_numbers(job_results(fed, new_id, tmp / "results")) == [1, 2]  # round 0 was not redone
    assert "Resuming at round 1 of 3" in fed.job_log(new_id, pattern="Resuming")
    for site in SITES:
        trains = [e for e in job_events(events, site, new_id) if e["task"] == "received" and e.get("name") == "train"]
        assert [e["round"] for e in trains] == [1, 2]
        assert trains[0]["digest"] == persisted  # from exactly the persisted global model
        assert trains[0]["total"] == 3
    assert json.loads(state_file.read_text())["last_round"] == 2


def test_site_killed_mid_round_the_round_completes_with_the_others(poc):
    fed, events = poc["fed"], poc["events"]
    job = export_toy_job(poc["tmp"] / "jobs", name="lossjob", num_rounds=2, min_clients=2, client_args=SLOW_TRAINING)
    job_id = fed.submit(job)
    wait_for(lambda: received_train(events, "ct-site-2", job_id, 1), 240, "ct-site-2 to start round 1")
    killed = time.time()
    fed.kill("ct-site-2")
    assert fed.processes("ct-site-2") == []

    meta = fed.wait_job(job_id, timeout=300)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert time.time() - killed < HEARTBEAT_TIMEOUT + 120
    run = job_results(fed, job_id, poc["tmp"] / "results")
    assert round_numbers(run) == [0, 1]
    sites = contributors(run)
    assert sites[0] == sorted(SITES)
    assert sites[1] == ["ct-site", "mr-site"]  # round 1 completed without ct-site-2
    log = fed.job_log(job_id, pattern="SITE LOST")
    assert "site ct-site-2 stopped responding" in log and "2 of 3 sites left" in log and "goes on without ct-site-2" in log
    # the global model was persisted every round; cross-site evaluation ran with the sites left
    state = json.loads((checkpoint(fed, "lossjob") / "fedxmodal_state.json").read_text())
    assert state["last_round"] == 1
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(cse) == {"ct-site", "mr-site"}


def test_site_killed_below_min_clients_the_job_ends_naming_it(poc):
    fed, events = poc["fed"], poc["events"]
    job = export_toy_job(poc["tmp"] / "jobs", name="minjob", num_rounds=2, min_clients=2, cross_site_eval=False,
                         client_args=SLOW_TRAINING)
    # only ct-site and mr-site are left (ct-site-2 was killed above): 2 sites, min_clients=2
    wait_for(lambda: fed.connected_sites() == ["ct-site", "mr-site"], HEARTBEAT_TIMEOUT + 60,
             "the server to drop ct-site-2", poll=1)
    job_id = fed.submit(job)
    wait_for(lambda: received_train(events, "mr-site", job_id, 1), 240, "mr-site to start round 1")
    saved = torch.load(checkpoint(fed, "minjob") / "FL_global_model.pt", weights_only=True)
    fed.kill("mr-site")

    meta = fed.wait_job(job_id, timeout=300)
    assert meta["status"] != "FINISHED:COMPLETED" and meta["status"].startswith("FINISHED"), meta
    log = fed.job_log(job_id, pattern="SITE LOST")  # what an admin sees, through the FLARE API
    assert "site mr-site stopped responding" in log, log
    assert "1 of 2 sites left (ct-site), min_clients=2: the job cannot go on and ends" in log
    assert str(checkpoint(fed, "minjob")) in log
    # no global model lost: the one of round 0 is persisted, untouched by the aborted round 1
    state = json.loads((checkpoint(fed, "minjob") / "fedxmodal_state.json").read_text())
    assert state["last_round"] == 0
    kept = torch.load(checkpoint(fed, "minjob") / "FL_global_model.pt", weights_only=True)
    assert weights_digest(kept["model"]) == weights_digest(saved["model"])
    assert round_numbers(job_results(fed, job_id, poc["tmp"] / "results")) == [0]
