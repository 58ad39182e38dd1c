"""The tables of experiments/fedcowpro_summary.py (FedCoWPro and its baselines) from hand-made cells: mean +- sd over
seeds, the same/cross-modality split, and the spread rule (|difference| > sd_a + sd_b; a
deterministic floor counts with sd 0, a single seed of anything else gives no verdict)."""

from __future__ import annotations

import json

from conftest import load_experiment


def _summary():
    return load_experiment("fedcowpro_summary")


def _cell(method, regime, seed, same, cross, setting=1):
    """One CT site, one MR site; ``same`` / ``cross``: liver Dice of same- / cross-modality pairs."""
    def pair(sm, qm, dice):
        res = {"dice": {"liver": dice}, "mean_dice": dice}
        return {"support_modality": sm, "query_modality": qm, "seconds_per_volume_structure": 1.0,
                "settings": {"in_range": res, "whole_volume": res, "in_range_prior": res}}
    return {"method": method, "regime": regime, "setting": setting, "seed": seed, "structures": ["liver"],
            "budget": {"rounds": 1}, "evaluation": {"ct->ct": pair("CT", "CT", same), "mr->mr": pair("MR", "MR", same),
                                                     "ct->mr": pair("CT", "MR", cross), "mr->ct": pair("MR", "CT", cross)}}


def test_spread_rule_and_tables(tmp_path):
    summary = _summary()
    cells = [_cell("fedcowpro", "federated", 0, 0.60, 0.10), _cell("fedcowpro", "federated", 1, 0.64, 0.12),
             _cell("ssl_alpnet", "federated", 0, 0.50, 0.30), _cell("ssl_alpnet", "federated", 1, 0.62, 0.30),
             _cell("raw", "floor", 0, 0.20, 0.05), _cell("untrained", "floor", 0, 0.30, 0.05)]
    (tmp_path / "results").mkdir()
    for i, c in enumerate(cells):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(c))
    assert summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "| 1 | CT |" in line}
    # 62.0 +- 2.8 vs 56.0 +- 8.5: a 6-point gap inside the spread
    assert "62.0 +- 2.8" in rows["ssl_alpnet federated"] and rows["ssl_alpnet federated"].endswith("| no |")
    assert rows["raw floor"].endswith("| yes |")  # deterministic: sd 0, the gap of 42 points counts
    assert rows["untrained floor"].endswith("| n/a (1 seed) |")  # one seed of a seeded floor: no verdict
    # the cross-modality table holds the cross pairs' values, not the same-modality ones
    cross = text.split("cross-modality")[1].split("###")[0]
    assert "30.0 +- 0.0" in cross and "62.0" not in cross
    # the overview: one row per cell kind, every protocol's mean, same-modality then cross-modality columns
    overview = text.split("### Overview")[1].split("###")[0]
    row = next(line for line in overview.splitlines() if line.startswith("| FedCoWPro | federated | 1 |"))
    assert row.count("62.0 +- 2.8") == 6 and row.count("11.0 +- 1.4") == 2
    assert "| floor: raw intensities | - | - | 20.0 |" in overview
