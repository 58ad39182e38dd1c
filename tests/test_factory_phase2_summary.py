"""experiments/summarize_factory_phase2.py: the factory's phase-2 Dice against the baselines, mean
+- sd over seeds per target and structure, and the spread verdicts, from the files that
``factory adapt`` and experiments/factory_baselines.py write (written here by hand, small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_experiment


def _adapt(root: Path, seed: int, mr: float, t1: float | None) -> None:
    targets = {"mr-site": {"failed": False, "metrics": {"dice": mr, "dice_liver": mr + 0.1, "n_volumes": 3.0,
                                                        "steps": 200.0}}}
    targets["mr-t1-site"] = ({"failed": True, "error": "too few labelled volumes"} if t1 is None else
                             {"failed": False, "metrics": {"dice": t1, "dice_liver": t1, "steps": 200.0}})
    path = root / f"seed{seed}" / "dice.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"targets": targets, "simulator_seconds": 500.0 + seed,
                                "source": {"metrics": {"dice": 0.3 + 0.1 * seed}}}))


def _baselines(root: Path, steps: int, values: dict) -> None:
    (root / "results").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"steps": steps, "finetune_steps": 200,
                                                  "structures": ["liver", "spleen"]}))
    for (baseline, seed), mr in values.items():
        cell = {"baseline": baseline, "label": baseline.replace("_", " "), "seed": seed, "seconds": 60.0,
                "targets": {"mr-site": {"mean_dice": mr, "dice": {"liver": mr, "spleen": None}},
                            "mr-t1-site": {"error": "too few labelled volumes"}}}
        (root / "results" / f"{baseline}__seed{seed}.json").write_text(json.dumps(cell))


def test_tables_and_spread_verdicts(tmp_path):
    s = load_experiment("summarize_factory_phase2")
    for seed, mr in enumerate((0.50, 0.52, 0.54)):
        _adapt(tmp_path / "adapt", seed, mr, None if seed == 2 else 0.3)
    # source_only far below the factory (beyond the spread), finetune overlapping it (within)
    _baselines(tmp_path / "b200", 200, {("source_only", k): v for k, v in enumerate((0.10, 0.12, 0.14))}
               | {("finetune", k): v for k, v in enumerate((0.49, 0.53, 0.57))})
    md, numbers = s.summarize(tmp_path / "adapt", [tmp_path / "b200"])

    mr = numbers["mr-site"]
    fac = mr["factory (200 steps per fit)"]
    assert fac["mean"]["mean"] == pytest.approx(0.52) and fac["mean"]["sd"] == pytest.approx(0.02)
    assert fac["liver"]["mean"] == pytest.approx(0.62) and fac["mean"]["n"] == 3
    assert mr["source_only (200 source steps)"]["mean"]["mean"] == pytest.approx(0.12)
    assert mr["finetune (200 source steps + 200 fine-tuning)"]["mean"]["sd"] == pytest.approx(0.04)
    assert mr["factory - source_only (200 source steps)"] == {"delta": pytest.approx(0.40), "exceeds_spread": True}
    assert mr["factory - finetune (200 source steps + 200 fine-tuning)"]["exceeds_spread"] is False
    # a failed target is left out of its seed; the baselines' n/a target has no row values
    t1 = numbers["mr-t1-site"]
    assert t1["factory (200 steps per fit)"]["mean"]["n"] == 2
    assert t1["source_only (200 source steps)"]["mean"]["n"] == 0
    assert "beyond the seed spread" in md and "within the seed spread" in md
    assert md.index("## mr-site") < md.index("## mr-t1-site")
    assert "validation split: 0.400 +- 0.100 (n=3) mean Dice" in md  # the source branch, over the seeds
    assert md.index("| source only |") < md.index("| finetune |")  # the baselines' own order, not the files
    assert "| 200 steps per fit | 501 | 0.520 +- 0.020 (n=3) |" in md  # wall time: mean of the seeds' runs
    assert "| 200 source steps | 60 | 0.120 +- 0.020 (n=3) |" in md


def test_missing_inputs_are_named(tmp_path):
    s = load_experiment("summarize_factory_phase2")
    with pytest.raises(SystemExit, match="no seed"):
        s.summarize(tmp_path / "nothing", [])
    _adapt(tmp_path / "adapt", 0, 0.5, 0.3)
    md, _ = s.summarize(tmp_path / "adapt", [])  # the factory alone: its structures, one seed, no verdict
    assert "| mean | liver |" in md and "0.500 (n=1)" in md and "spread" not in md
    with pytest.raises(SystemExit, match="config.json"):
        s.summarize(tmp_path / "adapt", [tmp_path / "not-baselines"])
