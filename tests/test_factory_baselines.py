"""The baselines of the data factory's phase 2 (experiments/factory_baselines.py): a
source-only U-Net, the same fine-tuned on the target's labelled slices as phase 2 picks them, and
the source U-Net with GIN, on tiny sites (64 px slices of 40 x 40 x 6 volumes, ``--quick``):
the cells' Dice, the fine-tuning slices, a target with too few labels, the summary, the resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.methods.factory.adaptation import pick_three_slices
from fedxmodal.recipes.spec import load_spec

from conftest import blob_case, load_experiment, write_site

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = ("liver", "spleen")
TARGETS = ("mr-site", "cect-site")
SEEDS = (0, 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    return load_experiment("factory_baselines")


def _write_sites(root: Path) -> None:
    """ct-site (the source), mr-site (four training volumes), cect-site (three) and few-site (two:
    too few labelled volumes for three slices); one test volume each."""
    for i, (name, n_train) in enumerate((("ct-site", 2), ("mr-site", 4), ("cect-site", 3), ("few-site", 2))):
        cases = [blob_case(seed=10 * i + k) for k in range(n_train + 1)]
        if name == "mr-site":
            cases = [(np.abs(img + 1000).astype(np.float32) * 0.5, lab) for img, lab in cases]
        elif name == "cect-site":  # contrast CT: brighter organs
            cases = [(np.where(lab > 0, img + 120, img).astype(np.float32), lab) for img, lab in cases]
        write_site(root / name, {"training": cases[:-1], "test": cases[-1:]},
                   modality="MR" if name == "mr-site" else "CT")


def test_baselines_on_tiny_sites_use_phase2s_slices_and_resume(tmp_path, monkeypatch, capsys):
    fb = _script()
    _write_sites(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "data"), "--source", "ct-site", "--targets", *TARGETS, "few-site",
            "--out", str(out), "--seeds", *map(str, SEEDS), "--structures", *STRUCTURES, "--quick", "--device", "cpu"]
    trained, real_fit = [], fb.fit_steps

    def spy(trainer, images, labels, steps, seed, desc=""):
        trained.append({"desc": desc, "images": images.clone(), "labels": labels.clone(), "steps": steps})
        return real_fit(trainer, images, labels, steps, seed, desc)

    monkeypatch.setattr(fb, "fit_steps", spy)
    assert fb.main(argv) == 0

    # every (baseline, seed): finite Dice in [0, 1] for every target and structure
    preprocess = PreprocessConfig.from_dict(load_spec(REPO / "jobs" / "specs" / "factory_adapt.json")
                                            ["client_args"]["preprocess"])
    assert preprocess.size == 64
    for baseline in fb.BASELINES:
        for seed in SEEDS:
            r = json.loads((out / "results" / f"{baseline}__seed{seed}.json").read_text())
            assert r["baseline"] == baseline and r["seed"] == seed and r["source"] == "ct-site"
            assert r["source_fit"]["steps"] == fb.QUICK["steps"] and r["source_fit"]["n_slices"] > 0
            for target in TARGETS:
                t = r["targets"][target]
                assert t["n_volumes"] == 1 and len(t["per_volume"]) == 1, (baseline, seed, target)
                values = [t["mean_dice"], *t["dice"].values(), *t["per_volume"][0]["dice"].values()]
                assert set(t["dice"]) == set(STRUCTURES)
                assert all(v is not None and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (baseline, t)
            few = r["targets"]["few-site"]
            if baseline == "finetune":  # two labelled volumes: no three slices, reported, the others go on
                assert "site 'few-site': 2 labelled volume(s)" in few["error"] and "mean_dice" not in few
            else:  # the source models are tested on it all the same
                assert few["n_volumes"] == 1 and 0.0 <= few["mean_dice"] <= 1.0
    # the fine-tuned models start from the source-only model of the same seed
    for seed in SEEDS:
        cells = {b: json.loads((out / "results" / f"{b}__seed{seed}.json").read_text()) for b in fb.BASELINES}
        assert cells["finetune"]["source_model"] == cells["source_only"]["source_model"]
        assert cells["gin_source"]["source_model"] != cells["source_only"]["source_model"]

    # the fine-tuning trained on exactly the slices phase 2 picks for that seed, and on nothing else
    for seed in SEEDS:
        r = json.loads((out / "results" / f"finetune__seed{seed}.json").read_text())
        for target in TARGETS:
            site = SiteSlices(tmp_path / "data" / target, STRUCTURES, preprocess, progress=False)
            volumes = [v for v in site.volumes("training") if len(v.image)]
            picks = pick_three_slices(volumes, 3, seed, site=target)
            shots = r["targets"][target]["labelled_slices"]
            assert [(s["volume"], s["slice"]) for s in shots] == picks
            assert [s["case"] for s in shots] == [volumes[v].case.case_id for v, _ in picks]
            fit, = [f for f in trained if f["desc"] == f"fine-tune {target} seed {seed}"]
            assert fit["steps"] == fb.QUICK["finetune_steps"] and len(fit["images"]) == 3
            assert torch.equal(fit["images"], torch.stack([volumes[v].image[z] for v, z in picks]))
            assert torch.equal(fit["labels"], torch.stack([volumes[v].label[z] for v, z in picks]).long())
    # two source models per seed (none, gin), one fine-tuning per seed and target
    assert sorted(f["desc"] for f in trained) == sorted(
        [f"source {m} seed {s}" for m in ("none", "gin") for s in SEEDS]
        + [f"fine-tune {t} seed {s}" for t in TARGETS for s in SEEDS])

    # the summary: mean +- sd over the two seeds per target site
    summary = json.loads((out / "summary.json").read_text())
    for target in TARGETS:
        for baseline in fb.BASELINES:
            cell = summary["stats"][target][baseline]["mean"]
            assert cell["n"] == 2 and 0.0 <= cell["mean"] <= 1.0 and cell["sd"] >= 0.0
    assert summary["stats"]["few-site"]["finetune"]["mean"]["n"] == 0
    md = (out / "summary.md").read_text()
    assert "## mr-site" in md and "## few-site" in md and "(n=2)" in md

    # a rerun skips every finished cell (no training, files untouched) ...
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert len(stamps) == len(fb.BASELINES) * len(SEEDS)
    monkeypatch.setattr(fb, "fit_steps", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    capsys.readouterr()
    assert fb.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == stamps
    assert capsys.readouterr().out.count("skip ") == len(stamps)
    # ... and refuses to mix cells of other settings into the same folder
    with pytest.raises(SystemExit, match="other settings"):
        fb.main([*argv, "--finetune-steps", "3"])
