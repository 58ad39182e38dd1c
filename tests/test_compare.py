"""``compare --quick`` on a tiny phantom, for the two methods with their own NVFlare parts: FedDG's
amplitude exchange runs through NVFlare (simulator), FedBN keeps BatchNorm out of the global
model, every cell writes its JSON, the table/chart/ratios are written, and a rerun resumes
(skips finished cells) while a grid with other settings is refused."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedxmodal.cli import main
from fedxmodal.networks.domain_norm import batchnorm_state_keys
from fedxmodal.networks.unet import SegmentationUNet

METHODS = ["feddg_amp", "dsbn"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = root / "grid"
    rc = main(["compare", "--data", str(root / "data"), "--task", "abdomen", "--quick", "--out", str(out),
               "--methods", *METHODS])
    assert rc == 0
    return root, out


def test_every_applicable_cell_writes_its_json(grid):
    _, out = grid
    cells = sorted(p.name for p in (out / "results").glob("*.json"))
    assert cells == ["dsbn__centralized.json", "dsbn__federated.json",
                     "feddg_amp__centralized.json", "feddg_amp__federated.json"]
    for p in (out / "results").glob("*.json"):
        cell = json.loads(p.read_text())
        assert set(cell["per_site"]) == {"ct-site", "mr-site"}
        for summary in cell["per_site"].values():
            assert 0.0 <= summary["mean_dice"] <= 1.0
            assert set(summary["dice"]) == {"liver", "kidney_right", "kidney_left", "spleen", "pancreas",
                                            "gallbladder"}
    md = (out / "compare.md").read_text()
    assert "| FedDG amplitude | local CT only | n/a" in md  # needs two domains: not run
    assert re.search(r"\| DSBN / FedBN \| federated \| [0-9.]+ ", md)
    assert "Federated / centralized" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = json.loads((out / "compare.json").read_text())["fed_central_ratio"]
    assert set(ratios) == set(METHODS)


def test_feddg_amplitudes_are_exchanged_through_nvflare(grid):
    _, out = grid
    log = (out / "runs" / "feddg_amp__federated" / "simulator.log").read_text()
    shared = dict(re.findall(r"\[(\S+-site)\] sharing \{'amplitudes': \((\d+), 1, 25, 25\)\}", log))
    received = dict(re.findall(r"\[(\S+-site)\] received (\d+) amplitude spectra of other sites", log))
    assert set(shared) == {"ct-site", "mr-site"}, log[-3000:]
    # each site's bank is exactly the other site's shared spectra
    assert received == {"ct-site": shared["mr-site"], "mr-site": shared["ct-site"]}
    assert "FedDG amplitude exchange finished" in log
    assert log.index("FedDG amplitude exchange finished") < log.index("Round 0 started")


def test_fedbn_global_model_keeps_batchnorm_out_of_the_average(grid):
    _, out = grid
    ckpt = torch.load(out / "runs" / "dsbn__federated" / "model" / "FL_global_model.pt", weights_only=False)
    weights = ckpt["model"]
    spec = json.loads((out / "results" / "dsbn__federated.json").read_text())
    job_cfg = json.loads((next((out / "runs" / "dsbn__federated" / "job").glob("*/app/config/config_fed_server.json"))
                          ).read_text())
    assert "FedBNAggregator" in json.dumps(job_cfg)
    initial = SegmentationUNet(n_structures=6, init_seed=spec["seed"]).state_dict()
    bn = batchnorm_state_keys(SegmentationUNet(n_structures=6))
    assert bn and all(torch.equal(torch.as_tensor(weights[k]).to(initial[k].dtype), initial[k]) for k in bn)
    convs = [k for k in weights if k not in bn and k.endswith("weight")]
    assert any(not torch.allclose(torch.as_tensor(weights[k]).float(), initial[k].float()) for k in convs)


def test_rerun_skips_finished_cells_and_refuses_other_settings(grid, capsys):
    root, out = grid
    before = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    capsys.readouterr()
    assert main(["compare", "--data", str(root / "data"), "--task", "abdomen", "--quick", "--out", str(out),
                 "--methods", *METHODS]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == before
    with pytest.raises(SystemExit, match="other settings"):
        main(["compare", "--data", str(root / "data"), "--task", "abdomen", "--quick", "--out", str(out),
              "--methods", *METHODS, "--seed", "1"])
    # a larger budget (--rounds / --local-epochs) is another grid too: refused in the same folder
    with pytest.raises(SystemExit, match="other settings"):
        main(["compare", "--data", str(root / "data"), "--task", "abdomen", "--quick", "--out", str(out),
              "--methods", *METHODS, "--rounds", "3", "--local-epochs", "2"])


def test_budget_override_reaches_every_regime(tmp_path):
    """``--rounds`` / ``--local-epochs`` set the federated cells' rounds and local epochs and the
    local/centralized cells' epochs (rounds x local epochs); a budget below 1 is refused."""
    from fedxmodal.apps.compare import CompareGrid

    grid = CompareGrid(tmp_path, tmp_path / "out", "abdomen", quick=False, methods=["none"], rounds=30,
                       local_epochs=5)
    assert grid.budget == {"rounds": 30, "local_epochs": 5} and grid.config["budget"] == grid.budget
    assert CompareGrid(tmp_path, tmp_path / "o", "abdomen", quick=True, methods=["none"]).budget == {
        "rounds": 2, "local_epochs": 1}
    with pytest.raises(ValueError, match="--local-epochs must be >= 1"):
        CompareGrid(tmp_path, tmp_path / "o", "abdomen", quick=False, methods=["none"], local_epochs=0)
