"""FedCoWPro through NVFlare: jobs/fedcowpro runs 2 rounds in the real `nvflare simulator` on tiny
phantom sites whose training cases have NO label, and gives a global model, a best model and
cross-site results; the site's validation falls back to episode metrics without a labelled
validation volume; the registry, the trainer and the recipe see the three methods."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fedxmodal.cli import main
from fedxmodal.recipes.export import compare_job_dirs, export_job, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "specs" / "fedcowpro.json"
SITES = ("ct-site", "mr-site")
TINY = {"structures": ["liver", "spleen"], "local_steps": 2,
        "train": {"batch_size": 2, "val_episodes": 2, "lr": 0.001, "method_args": {}}}


def drop_training_labels(site: Path) -> None:
    spec = json.loads((site / "dataset.json").read_text())
    spec["training"] = [{"image": e["image"]} for e in spec["training"]]
    (site / "dataset.json").write_text(json.dumps(spec, indent=1))


@pytest.fixture(scope="module")
def unlabelled_federation(tmp_path_factory):
    from fedxmodal.data.phantom import write_phantom_federation

    root = tmp_path_factory.mktemp("fcp") / "data"
    write_phantom_federation(root, seed=0, task="abdomen", n_train=2, n_val=1, n_test=1, progress=False)
    for s in SITES:
        drop_training_labels(root / s)
    return root


def tiny_spec(**overrides) -> dict:
    spec = load_spec(SPEC)
    spec["client_args"] = {**spec["client_args"], **TINY}
    spec.update(num_rounds=2, **overrides)
    return spec


def test_committed_fedcowpro_job_is_in_sync(tmp_path):
    """jobs/fedcowpro/ is generated: python -m fedxmodal.recipes.export jobs/specs/fedcowpro.json --export-dir jobs"""
    fresh = export_job(tmp_path, load_spec(SPEC))
    diffs = [d for d in compare_job_dirs(fresh, REPO / "jobs" / "fedcowpro") if "app/custom/" not in d]
    assert diffs == [], diffs[:20]
    client = (REPO / "jobs" / "fedcowpro" / "app" / "config" / "config_fed_client.json").read_text()
    assert "fedxmodal/fl/site.py" in client and "OutputGuard" in client
    meta = json.loads((REPO / "jobs" / "fedcowpro" / "meta.json").read_text())
    assert meta["resource_spec"] == {"@default": {"num_of_gpus": 1}}


def test_registry_and_recipe_know_the_three_methods(tmp_path):
    from fedxmodal.engine.episodic import EpisodicTrainer
    from fedxmodal.methods import METHODS

    for name in ("fedcowpro", "cowpro", "ssl_alpnet"):
        cls = METHODS[name]
        assert cls.trainer is EpisodicTrainer and not cls.needs_labels
        assert set(cls.regimes) == {"local", "centralized", "federated"}
    # a package script that is not the one site script is refused
    spec = load_spec(SPEC)
    spec["client_script"] = str(REPO / "custom" / "fedxmodal" / "fl" / "client_loop.py")
    with pytest.raises(ValueError, match="fl/site.py"):
        export_job(tmp_path, spec)


def test_site_validates_with_episode_metrics_without_a_labelled_volume(unlabelled_federation, tmp_path):
    """A site with no validation split: the key metric is the episode Dice (one-shot needs a labelled volume)."""
    import shutil

    from fedxmodal.data.slices import SiteSlices
    from fedxmodal.methods.site_runners import EpisodicSiteRunner
    from fedxmodal.methods import trainer_from_job_args

    site = tmp_path / "ct-site"
    shutil.copytree(unlabelled_federation / "ct-site", site)
    spec = json.loads((site / "dataset.json").read_text())
    spec["validation"] = []
    (site / "dataset.json").write_text(json.dumps(spec))
    job = tiny_spec()
    args = {**job["client_args"], "model": job["model"]}
    runner = EpisodicSiteRunner(trainer_from_job_args(args, device="cpu"),
                                SiteSlices(site, args["structures"], progress=False), "ct-site", 0, args)
    val = runner.validate()
    assert val["oneshot"] == 0.0 and val["dice"] == val["episode_dice"] and val["episode_loss"] > 0
    assert (site / ".fedxmodal_cache" / "superpixels").is_dir()  # pseudo-labels cached in the site's folder


@pytest.mark.slow
def test_fedcowpro_runs_two_rounds_in_the_simulator_on_unlabelled_sites(unlabelled_federation, tmp_path):
    from fedxmodal.deploy.simulator import run_simulator

    data = unlabelled_federation
    for s in SITES:  # check-data accepts the sites and reports the unlabelled training cases
        assert main(["check-data", str(data / s), "--structures", "liver,spleen", "--quiet"]) == 0
    job = export_job(tmp_path / "jobs", tiny_spec())
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(data), "FEDXMODAL_CHECKPOINT_DIR": str(tmp_path / "ck"),
           "FEDXMODAL_NUM_THREADS": "1"}
    run_simulator(job, tmp_path / "ws", env, tmp_path / "sim.log", 2, sites=SITES, timeout=900, echo=False)
    run = tmp_path / "ws" / "server" / "simulate_job"
    assert (run / "app_server" / "FL_global_model.pt").is_file()
    assert (run / "app_server" / "best_FL_global_model.pt").is_file()
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    for site in SITES:
        assert set(cse[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
        for metrics in cse[site].values():
            assert 0.0 <= metrics["dice"] <= 1.0 and metrics["oneshot"] == 1.0
            assert set(metrics) <= {"dice", "dice_liver", "dice_spleen", "n_volumes", "oneshot", "self_support",
                                    "episode_loss", "episode_dice", "whole_volume_dice"}
    log = (tmp_path / "sim.log").read_text()
    assert "refused" not in log.lower()  # the output guard let every result through
    # superpixels stay in the sites' folders: nothing of them in the server's workspace
    for s in SITES:
        assert any((data / s / ".fedxmodal_cache" / "superpixels").rglob("*.npz"))
    assert not list((tmp_path / "ws").rglob("*.npz"))
    # the global model is the encoder of the job, usable by `segment --support` with the job folder
    weights = torch.load(run / "app_server" / "FL_global_model.pt", weights_only=False)["model"]
    assert any(k.startswith("project.") for k in weights)
    spec = json.loads((data / "mr-site" / "dataset.json").read_text())
    image = data / "mr-site" / spec["test"][0]["image"]
    ct = json.loads((data / "ct-site" / "dataset.json").read_text())["validation"][0]
    support, support_label = data / "ct-site" / ct["image"], data / "ct-site" / ct["label"]
    assert main(["segment", str(image), "--model", str(run / "app_server" / "FL_global_model.pt"),
                 "--job", str(job), "--support", str(support), str(support_label), "--structure", "liver",
                 "--support-label-id", "1", "--out", str(tmp_path / "mask.nii.gz")]) == 0  # CT support, MR query
    import nibabel as nib

    mask, img = nib.load(str(tmp_path / "mask.nii.gz")), nib.load(str(image))
    assert mask.shape == img.shape
