"""The comparison grid beyond the supervised methods: a method's class says how its cells are run
and scored (``evaluation``, ``job_spec``), the plan of cells per method, the federated jobs of a
one-shot and a generative method, a supervised grid's settings (its digest) untouched by them,
and a one-shot cell run here at a tiny budget, scored by the method's own protocol."""

from __future__ import annotations

import json
import re

import pytest

from conftest import blob_case, write_site
from fedxmodal.apps import cells
from fedxmodal.apps.compare import CompareGrid, default_methods, grid_methods
from fedxmodal.apps.grid import applicable, grid_cells
from fedxmodal.methods import METHODS
from fedxmodal.recipes.export import export_job

SITES = ["ct-site", "mr-site"]
MIXED = ["gin", "fedcowpro", "data_factory"]


@pytest.fixture
def sites(tmp_path):
    for i, (name, modality) in enumerate((("ct-site", "CT"), ("mr-site", "MR"))):
        write_site(tmp_path / "data" / name, {"training": [blob_case(10 * i), blob_case(10 * i + 1)],
                                              "validation": [blob_case(10 * i + 2)], "test": [blob_case(10 * i + 3)]},
                   modality=modality)
    return tmp_path / "data"


def test_the_method_class_says_how_its_cells_run(sites, tmp_path):
    grid = CompareGrid(sites, tmp_path / "out", "abdomen", quick=True, methods=MIXED)
    assert {m: type(grid.cells_of(m)).__name__ for m in MIXED} == {
        "gin": "SegmentationCells", "fedcowpro": "OneShotCells", "data_factory": "GenerativeCells"}
    assert grid.dice_methods() == ["gin", "fedcowpro"]  # the GAN is scored by SWD: no Dice table, ratio or chart
    # every regime a method declares is planned; the ones it does not are n/a
    plan = {(m, r): applicable(m, r) for m, r in grid_cells(MIXED + ["feddg_amp"], grid.sites)}
    assert all(plan[(m, f"local:{s}")] for m in MIXED for s in SITES)
    assert all(plan[(m, r)] for m in MIXED for r in ("centralized", "federated"))
    assert not plan[("feddg_amp", "local:ct-site")]
    # the default grid is the supervised one; every method with a federated regime can join it
    assert default_methods() == [m for m, c in METHODS.items() if c.needs_labels and "federated" in c.regimes]
    assert set(grid_methods()) == set(default_methods()) | {"ssl_alpnet", "cowpro", "fedcowpro", "data_factory"}
    with pytest.raises(ValueError, match="without a federated regime"):
        CompareGrid(sites, tmp_path / "o", "abdomen", quick=True, methods=["data_factory_adapt"])


def test_a_supervised_grid_keeps_its_settings_and_the_others_add_their_jobs(sites, tmp_path):
    plain = CompareGrid(sites, tmp_path / "a", "abdomen", quick=True, methods=["gin", "dsbn"])
    assert set(plain.config) == {"task", "structures", "seed", "budget", "sites", "train", "model", "preprocess"}
    mixed = CompareGrid(sites, tmp_path / "b", "abdomen", quick=True, methods=MIXED, local_steps=3)
    assert {k: v for k, v in mixed.config.items() if k not in ("oneshot", "generative")} == plain.config
    oneshot, gan = mixed.config["oneshot"]["jobs"]["fedcowpro"], mixed.config["generative"]["jobs"]["factory"]
    assert oneshot["local_steps"] == gan["local_steps"] == 3
    assert oneshot["train"]["batch_size"] == 2 and oneshot["preprocess"] == {"spacing": 3.0, "size": 128}
    assert gan["train"]["method_args"]["sites"] == SITES and gan["model"]["n_sites"] == 2
    with pytest.raises(ValueError, match="--local-steps must be >= 1"):
        CompareGrid(sites, tmp_path / "c", "abdomen", quick=True, methods=MIXED, local_steps=0)


def test_federated_jobs_of_a_oneshot_and_a_generative_method(sites, tmp_path):
    grid = CompareGrid(sites, tmp_path / "out", "abdomen", quick=True, methods=MIXED, seed=4)
    fcp = grid.cells_of("fedcowpro")
    spec = fcp.federated_spec("fedcowpro", fcp.settings("fedcowpro"))
    ca = spec["client_args"]
    assert spec["client_script"].endswith("fedxmodal/fl/site.py") and spec["min_clients"] == 2
    assert (ca["method"], ca["seed"], ca["local_steps"], spec["num_rounds"]) == ("fedcowpro", 4, 2, 2)
    assert ca["structures"] == list(grid.structures) and spec["model"]["args"]["init_seed"] == 4
    gan = grid.cells_of("data_factory")
    spec = gan.federated_spec("data_factory", gan.settings("data_factory"))
    assert spec["client_script"].endswith("fedxmodal/fl/site.py")
    assert spec["client_args"]["train"]["method_args"]["sites"] == SITES and spec["model"]["args"]["n_sites"] == 2
    assert spec["clients_per_round"] == 2 and spec["client_sampling_seed"] == 4
    job = export_job(tmp_path / "jobs", spec)  # the recipe accepts it (site script, guard declarations)
    assert "UniformAggregator" in (job / "app" / "config" / "config_fed_server.json").read_text()


def test_a_oneshot_cell_is_trained_here_and_scored_by_its_protocol(sites, tmp_path, monkeypatch, one_torch_thread):
    spec_of = cells.job_spec_of

    def small(method):  # 64 px slices: the same code path, a quarter of the pixels
        spec = spec_of(method)
        spec["client_args"]["preprocess"]["size"] = 64
        return spec

    monkeypatch.setattr(cells, "job_spec_of", small)
    grid = CompareGrid(sites, tmp_path / "out", "abdomen", quick=True, methods=["fedcowpro"], regimes=["centralized"],
                       device="cpu")
    grid.run()
    cell = json.loads((tmp_path / "out" / "results" / "fedcowpro__centralized.json").read_text())
    assert cell["train_sites"] == SITES and cell["steps"] == 4 and (tmp_path / "out" / "runs").is_dir()
    assert set(cell["pairs"]) == {"ct-site->ct-site", "mr-site->ct-site", "ct-site->mr-site", "mr-site->mr-site"}
    for site, summary in cell["per_site"].items():
        assert summary["support_site"] == site and set(summary["dice"]) == {"liver", "spleen"}  # what the sites hold
        assert 0.0 <= summary["mean_dice"] <= 1.0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert re.search(r"\| FedCoWPro \(CoWPro \+ Dice \+ edge Dice\) \| centralized \| [0-9.]+ ", md)
    assert "One-shot methods" in md
