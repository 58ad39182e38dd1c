"""The tables of experiments/fedgin_phantom.sh's summary over seeds: mean +- sd per cell,
the federated/centralized comparison and GIN's lift on the unseen MR with the spread rule
(|difference| > sd_a + sd_b; one seed gives no verdict)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_experiment


def _summary():
    return load_experiment("summarize_fedgin")


def _site(liver):
    return {"dice": {"liver": liver}, "mean_dice": liver, "n_volumes": 3}


def _write_run(run: Path, fed, cen, none_mr, gin_mr):
    """One seed's run folder as fedgin_phantom.sh writes it (liver only; CT Dice = MR Dice + 0.1)."""
    def models(mr):
        return {"final": {"ct-site": _site(mr + 0.1), "mr-site": _site(mr)}}
    (run / "fedgin" / "results").mkdir(parents=True)
    (run / "fedgin" / "results" / "fedgin.json").write_text(json.dumps({"models": models(fed)}))
    for sub, mr in (("centralized_gin", cen), ("ct_only_none", none_mr), ("ct_only_gin", gin_mr)):
        (run / sub).mkdir()
        (run / sub / "results.json").write_text(json.dumps({"models": models(mr)}))


def test_three_seeds_give_mean_sd_and_spread_verdicts(tmp_path):
    mod = _summary()
    # FedGIN ~ centralized (overlapping), GIN far above none on MR (disjoint)
    for k, (fed, cen, none_mr, gin_mr) in enumerate([(0.60, 0.62, 0.05, 0.30), (0.64, 0.61, 0.07, 0.35),
                                                    (0.62, 0.66, 0.06, 0.40)]):
        _write_run(tmp_path / f"seed{k}", fed, cen, none_mr, gin_mr)
    runs = [mod.load(tmp_path / f"seed{k}", "final") for k in range(3)]
    md = mod.tables(runs, "final", 3)
    assert "mean +- sd over 3 seeds" in md
    assert "| FedGIN (federated, NVFlare simulator) | 0.620 +- 0.020 | 0.620 +- 0.020 |" in md  # MR rows
    fed_line = next(line for line in md.splitlines() if line.startswith("| MR | 0.620"))
    assert fed_line.endswith("| no |")  # 0.620 +- 0.020 vs 0.630 +- 0.026: overlapping
    lift = next(line for line in md.splitlines() if line.startswith("| liver | 0.060"))
    assert "+0.290" in lift and lift.endswith("| **yes** |")


def test_one_seed_has_no_spread_verdict(tmp_path):
    mod = _summary()
    _write_run(tmp_path / "seed0", 0.6, 0.7, 0.0, 0.4)
    md = mod.tables([mod.load(tmp_path / "seed0", "final")], "final", 1)
    assert "+- " not in md and "| n/a |" in md
    assert "| CT | 0.700 | 0.800 | 0.875 | n/a |" in md
