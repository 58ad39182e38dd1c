"""``compare --seeds``: one grid per seed, then mean +- sd per cell and differences to ``none``
judged against the seed spread (intervals of +-1 sd disjoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedxmodal.apps.compare_seeds import exceeds_spread, seed_dir, summarize_seeds

SITES = ["ct-site", "mr-site"]


def _write_cell(out, seed, method, regime, ct, mr):
    p = seed_dir(out, seed) / "results" / f"{method}__{regime.replace(':', '-')}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"per_site": {"ct-site": {"mean_dice": ct}, "mr-site": {"mean_dice": mr}}}))


def test_exceeds_spread_rule():
    assert exceeds_spread((0.8, 0.02, 3), (0.6, 0.05, 3)) is True
    assert exceeds_spread((0.65, 0.05, 3), (0.6, 0.05, 3)) is False
    assert exceeds_spread((0.8, float("nan"), 1), (0.6, 0.05, 3)) is None  # one seed: no spread


def test_summary_over_seeds(tmp_path):
    gin = {0: (0.70, 0.50), 1: (0.72, 0.40), 2: (0.74, 0.45)}
    none = {0: (0.50, 0.48), 1: (0.52, 0.44), 2: (0.54, 0.40)}
    for seed in (0, 1, 2):
        _write_cell(tmp_path, seed, "gin", "federated", *gin[seed])
        _write_cell(tmp_path, seed, "none", "federated", *none[seed])
    res = summarize_seeds(tmp_path, [0, 1, 2], ["none", "gin"], SITES, {"ct-site": "CT", "mr-site": "MR"})
    mean, sd, n = res["stats"][("gin", "federated")]["ct-site"]
    assert n == 3 and mean == pytest.approx(0.72) and sd == pytest.approx(np.std([0.70, 0.72, 0.74], ddof=1))
    d = res["diffs"]["gin__federated/ct-site"]
    assert d["diff"] == pytest.approx(0.20) and d["exceeds_spread"] is True
    assert res["diffs"]["gin__federated/mr-site"]["exceeds_spread"] is False  # 0.45 vs 0.44, wide spread
    # cells not run (local, centralized) are listed as missing, not invented
    assert res["stats"][("gin", "centralized")]["ct-site"] == (None, None, 0)
    md = (tmp_path / "compare_seeds.md").read_text()
    assert "0.720 +- 0.020 (n=3)" in md and "**yes**" in md
    assert json.loads((tmp_path / "compare_seeds.json").read_text())["seeds"] == [0, 1, 2]


def test_cli_runs_one_grid_per_seed(tmp_path, monkeypatch):
    """--seeds runs the grid once per seed into OUT/seed<k> (each grid resumable on its own)."""
    from fedxmodal.apps import compare
    from fedxmodal.cli import main
    from fedxmodal.data.phantom import write_phantom_federation

    write_phantom_federation(tmp_path / "data", seed=0, n_train=1, n_val=1, n_test=1, progress=False)
    ran = []
    monkeypatch.setattr(compare.CompareGrid, "run", lambda self: ran.append((self.seed, self.out.name)))
    assert main(["compare", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "grid"), "--quick",
                 "--methods", "none", "--seeds", "3", "5", "3"]) == 0
    assert ran == [(3, "seed3"), (5, "seed5")]
    assert (tmp_path / "grid" / "compare_seeds.md").is_file()
