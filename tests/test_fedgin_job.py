"""The main job, for real: phantom data -> FedGIN in `nvflare simulator` (2 sites, 2 rounds) ->
global, best and cross-site results -> evaluation tables and curve; and a site with broken data
failing with a message that names the site and the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fedxmodal.cli import main
from fedxmodal.recipes.export import export_job, load_spec

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--workdir", str(work), "--quick"])
    return work, rc


def test_quick_demo_runs_fedgin_in_the_simulator(quick_demo):
    work, rc = quick_demo
    assert rc == 0
    assert "'nvflare simulator' is deprecated" not in (work / "results" / "simulator.log").read_text()  # SimEnv
    run = work / "workspace" / "fedgin" / "server" / "simulate_job"
    assert (run / "app_server" / "FL_global_model.pt").is_file()
    assert (run / "app_server" / "best_FL_global_model.pt").is_file()
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    for site in ("ct-site", "mr-site"):
        assert set(cse[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "ct-site", "mr-site"}
        assert all(0.0 <= m["dice"] <= 1.0 for m in cse[site].values())
    # The global model is persisted every round for resume, with its round counter.
    state = json.loads((work / "checkpoints" / "fedgin" / "fedxmodal_state.json").read_text())
    assert state["last_round"] == 1
    summary = json.loads((work / "results" / "fedgin.json").read_text())
    # Validation Dice of the global model each site received: round 1 above the initial model's.
    val = {s: dict(t["val/dice"]) for s, t in summary["curves"].items()}
    assert set(val) == {"ct-site", "mr-site"}
    mean_round = lambda r: sum(v[r] for v in val.values()) / len(val)  # noqa: E731
    assert mean_round(1) > mean_round(0) + 0.01, val
    for tag in ("final", "best"):
        assert set(summary["models"][tag]) == {"ct-site", "mr-site"}
        assert (work / "results" / f"fedgin_{tag}.md").read_text().count("| ct-site/") == 1
    assert (work / "results" / "fedgin_curve.png").stat().st_size > 5000
    assert "| final model on mr-site (MR) |" in (work / "results" / "fedgin.md").read_text()


def test_evaluate_and_segment_take_the_federated_model(quick_demo, tmp_path):
    work, _ = quick_demo
    model = work / "workspace" / "fedgin" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
    job = work / "jobs" / "fedgin"
    assert main(["evaluate", "--model", str(model), "--job", str(job), str(work / "data" / "ct-site"),
                 str(work / "data" / "mr-site"), "--out", str(tmp_path / "ev")]) == 0
    assert "ct-site" in (tmp_path / "ev" / "cross_modality.md").read_text()
    spec = json.loads((work / "data" / "mr-site" / "dataset.json").read_text())
    image = work / "data" / "mr-site" / spec["test"][0]["image"]
    assert main(["segment", str(image), "--model", str(work / "results" / "fedgin_best_model.pt"),
                 "--out", str(tmp_path / "mask.nii.gz")]) == 0  # modality guessed: MR
    import nibabel as nib
    import numpy as np

    mask, img = nib.load(str(tmp_path / "mask.nii.gz")), nib.load(str(image))
    assert mask.shape == img.shape and np.allclose(mask.affine, img.affine)


def test_a_site_with_broken_data_fails_naming_site_and_file(quick_demo, tmp_path):
    work, _ = quick_demo
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    spec = json.loads((data / "mr-site" / "dataset.json").read_text())
    broken = data / "mr-site" / spec["training"][0]["image"]
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated
    job_spec = load_spec(REPO / "jobs" / "specs" / "fedgin.json")
    job_spec.update(num_rounds=1, cross_site_eval=False)
    job = export_job(tmp_path / "jobs", job_spec)
    from fedxmodal.deploy.simulator import run_simulator

    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(data), "FEDXMODAL_CHECKPOINT_DIR": str(tmp_path / "ck")}
    log = tmp_path / "sim.log"
    try:
        run_simulator(job, tmp_path / "ws", env, log, 1, ("ct-site", "mr-site"), timeout=300)
        failed = False
    except RuntimeError:
        failed = True
    text = log.read_text()
    assert f"site mr-site: bad data: {broken}: unreadable or truncated image" in text
    # No global model comes out of a federation that lost a site it needs (min_clients = 2).
    assert failed or not (tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt").exists() \
        or "abort" in text.lower()


def test_a_seed_fixes_the_federated_run(quick_demo, tmp_path):
    """Same data and seed -> bit-identical global model: the server's initial weights and every
    site process are seeded (2 sites: FedAvg's sum does not depend on arrival order)."""
    import torch

    work, _ = quick_demo
    assert main(["demo", "--workdir", str(tmp_path / "again"), "--quick", "--data", str(work / "data")]) == 0
    rel = Path("workspace") / "fedgin" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
    a = torch.load(work / rel, weights_only=False)["model"]
    b = torch.load(tmp_path / "again" / rel, weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
