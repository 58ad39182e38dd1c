"""The supervised trainer: it learns, it is seeded, checkpoints round-trip, regimes run, and
``segment`` writes masks in the input's own geometry."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from fedxmodal.engine.base import SliceData
from fedxmodal.cli import main
from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.engine.base import seed_everything
from fedxmodal.engine.supervised import SupervisedTrainer, TrainConfig
from fedxmodal.methods import build_trainer, load_trainer
from fedxmodal.networks.unet import UNetConfig

from conftest import blob_case, write_site

SMALL = PreprocessConfig(size=64)
TINY_NET = UNetConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def _engine(method="none", seed=0, **kw):
    """Float32 unless a test asks otherwise: the learning thresholds below must not depend on
    whether the machine's CPU has bfloat16."""
    kw.setdefault("amp", False)
    seed_everything(seed)
    return build_trainer(("liver", "spleen"), network=TINY_NET,
                         train=TrainConfig(method=method, batch_size=8, lr=3e-3, seed=seed, **kw), preprocess=SMALL)


def test_engine_learns_and_dice_rises(good_site):
    site = SiteSlices(good_site, ("liver", "spleen"), SMALL, progress=False)
    images, labels = site.slices("training", foreground_only=False)
    engine = _engine()
    before = engine.evaluate(site, "test")["summary"]["mean_dice"]
    first = engine.fit(SliceData(images, labels), epochs=1)["loss"]
    for _ in range(29):
        last = engine.fit(SliceData(images, labels), epochs=1)["loss"]
    after = engine.evaluate(site, "test")["summary"]
    assert last < first
    assert after["mean_dice"] > 0.6 and after["mean_dice"] > before + 0.3, (before, after)


@pytest.mark.parametrize("method", ["gin", "gin_ipa"])
def test_methods_train_through_the_same_engine(good_site, method):
    site = SiteSlices(good_site, ("liver", "spleen"), SMALL, progress=False)
    images, labels = site.slices("training")
    engine = _engine(method)
    w0 = {k: v.clone() for k, v in engine.get_weights().items()}
    out = engine.fit(SliceData(images, labels), epochs=1)
    assert np.isfinite(out["loss"]) and out["steps"] >= 1
    assert any(not torch.equal(w0[k], v) for k, v in engine.get_weights().items())


def test_seed_fixes_a_run(good_site):
    site = SiteSlices(good_site, ("liver", "spleen"), SMALL, progress=False)
    images, labels = site.slices("training")
    runs = []
    for _ in range(2):
        e = _engine("gin", seed=3)
        e.fit(SliceData(images, labels), epochs=1)
        runs.append(e.get_weights())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    e = _engine("gin", seed=4)
    e.fit(SliceData(images, labels), epochs=1)
    assert any(not torch.equal(runs[0][k], v) for k, v in e.get_weights().items())


def test_checkpoint_round_trip_and_bad_checkpoint(tmp_path):
    e = _engine()
    path = e.save(tmp_path / "m.pt", note="x")
    e2 = load_trainer(path)
    assert e2.structures == ("liver", "spleen") and e2.meta == {"note": "x"}
    assert all(torch.equal(v, e2.get_weights()[k]) for k, v in e.get_weights().items())
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not a fedxmodal checkpoint"):
        load_trainer(tmp_path / "bad.pt")


def test_nan_training_input_is_refused():
    e = _engine()
    x = torch.zeros(4, 1, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        e.fit(SliceData(x, torch.zeros(4, 32, 32, dtype=torch.uint8)))


def test_centralized_regime_cli_writes_results(good_site, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--regime", "centralized", "--sites", str(good_site), "--structures", "liver,spleen",
               "--epochs", "2", "--method", "gin", "--out", str(out), "--batch-size", "8", "--size", "64"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["history"]) == 2 and res["n_train_slices"] > 0
    assert set(res["models"]) == {"final", "best"}
    assert (out / "evaluation_best.md").read_text().count("| site") >= 1
    assert any((out / "tb").iterdir())


def test_regime_without_validation_evaluates_the_final_model_once(good_site, tmp_path, monkeypatch):
    """validate_every=0 (the comparison grid): no validation, the final model is also "best",
    and the test split is evaluated once, not twice."""
    from fedxmodal.apps import regimes
    calls = []
    evaluate = SupervisedTrainer.evaluate
    monkeypatch.setattr(SupervisedTrainer, "evaluate", lambda self, *a, **k: calls.append(a) or evaluate(self, *a, **k))
    res = regimes.train_regime("local", [str(good_site)], ("liver", "spleen"), tmp_path / "run", epochs=1,
                               train=TrainConfig(batch_size=8), network=TINY_NET,
                               preprocess=SMALL, progress=False, validate_every=0)
    assert [h.get("val_dice") for h in res["history"]] == [None]
    assert res["models"]["best"] == res["models"]["final"]
    assert len(calls) == 1 and calls[0][1] == "test"
    assert (tmp_path / "run" / "evaluation_best.md").exists()


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S")])
def test_segment_writes_mask_aligned_with_reoriented_input(tmp_path, codes):
    """Train on RAS data, segment an input stored RAS or LPS: the mask must share the input's
    grid and affine and cover the same world-space organ."""
    site = write_site(tmp_path / "s", {s: [blob_case(i) for i in range(2)] for s in ("training", "validation", "test")})
    ss = SiteSlices(site, ("liver", "spleen"), SMALL, progress=False)
    images, labels = ss.slices("training", foreground_only=False)
    engine = _engine()
    for _ in range(30):
        engine.fit(SliceData(images, labels), epochs=1)
    ckpt = engine.save(tmp_path / "m.pt")
    img, lab = blob_case(9)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    if codes == ("L", "P", "S"):  # same anatomy, stored flipped in x and y with an LPS affine
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
        affine = affine @ flip
        img, lab = img[::-1, ::-1].copy(), lab[::-1, ::-1].copy()
    nib.save(nib.Nifti1Image(img, affine), str(tmp_path / "in.nii.gz"))
    assert nib.aff2axcodes(affine) == codes
    rc = main(["segment", str(tmp_path / "in.nii.gz"), "--model", str(ckpt), "--out", str(tmp_path / "mask.nii.gz"),
               "--modality", "CT", "--overlay", str(tmp_path / "ov.png")])
    assert rc == 0
    mask = nib.load(str(tmp_path / "mask.nii.gz"))
    assert mask.shape == img.shape and np.allclose(mask.affine, affine)
    pred = np.asarray(mask.dataobj)
    for c in (1, 2):
        inter = ((pred == c) & (lab == c)).sum()
        assert 2 * inter / ((pred == c).sum() + (lab == c).sum()) > 0.7
    assert (tmp_path / "ov.png").stat().st_size > 1000


def test_server_model_initial_weights_are_seeded_without_touching_global_rng():
    from fedxmodal.networks.unet import SegmentationUNet

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = SegmentationUNet(6, init_seed=0).state_dict()
    after = torch.rand(1)
    b = SegmentationUNet(6, init_seed=0).state_dict()
    c = SegmentationUNet(6, init_seed=1).state_dict()
    assert torch.equal(before, after)  # the caller's random stream is unchanged
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    engine = build_trainer(("liver",) * 1 + ("kidney_right", "kidney_left", "spleen", "pancreas", "gallbladder"))
    assert set(engine.get_weights()) == set(a)  # the server's model and the sites' engines share keys


@pytest.mark.parametrize("bf16_cpu,amp,expected", [(True, True, torch.bfloat16), (True, False, None),
                                                    (False, True, None)])
def test_precision_choice(monkeypatch, bf16_cpu, amp, expected):
    """bfloat16 autocast where the CPU has it, float32 when forced (amp=False) or unsupported; the
    network's convolutions run in that dtype, the weights stay float32, training stays finite, and
    the augmentations (GIN here) run in float32 inside the autocast region."""
    from fedxmodal.engine import base

    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: bf16_cpu)
    trainer = _engine("gin_ipa", amp=amp)
    trainer.device = torch.device("cpu")
    assert trainer.amp_dtype == expected and trainer.use_amp == (expected is not None)
    assert not trainer.scale_gradients  # gradient scaling only for CUDA float16
    conv_dtypes, aug_dtypes = set(), set()
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: conv_dtypes.add(o.dtype))
    gin = trainer.method.gin
    gin.register_forward_hook(lambda m, i, o: aug_dtypes.add(o.dtype))
    x = torch.randn(8, 1, 32, 32)
    y = (x[:, 0] > 0.5).to(torch.uint8)
    w0 = trainer.get_weights()
    out = trainer.fit(SliceData(x, y), epochs=1)
    assert np.isfinite(out["loss"])
    assert conv_dtypes == {expected or torch.float32}
    assert aug_dtypes == {torch.float32}
    w1 = trainer.get_weights()
    assert all(v.dtype == w0[k].dtype for k, v in w1.items())
    assert any(not torch.equal(w0[k], v) for k, v in w1.items())
    probs = trainer.predict_slices(x[:2])
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()


def test_train_cli_gives_a_method_the_network_it_needs(good_site, tmp_path):
    """`train --method dualnorm` (two BN branches) used to fail: the regime applies the method's
    network_overrides as compare does."""
    out = tmp_path / "dn"
    rc = main(["train", "--regime", "local", "--sites", str(good_site), "--structures", "liver,spleen",
               "--epochs", "1", "--method", "dualnorm", "--out", str(out), "--batch-size", "8", "--size", "64"])
    assert rc == 0
    ckpt = torch.load(out / "final_model.pt", weights_only=False)
    assert ckpt["network"]["norm_branches"] == 2 and ckpt["train"]["method"] == "dualnorm"


def test_cosine_lr_schedule_follows_the_planned_run():
    """``lr_schedule: cosine``: linear warm-up, then cosine to 0 over the planned epochs; the
    optimizer's lr follows the trainer's progress (federated: round x local epochs); constant
    leaves it alone; a bad setting is refused."""
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup=0.2)
    assert cfg.lr_at(0.0) == pytest.approx(1e-5) and cfg.lr_at(0.1) == pytest.approx(0.5e-3, rel=0.01)
    assert cfg.lr_at(0.2) == pytest.approx(1e-3) and cfg.lr_at(0.6) == pytest.approx(0.5e-3)
    assert cfg.lr_at(1.0) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(lr=1e-3).lr_at(0.9) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule 'step'"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(lr_schedule="cosine", warmup=1.0)
    structures = ("liver",)
    x, y = torch.randn(8, 1, 32, 32), (torch.rand(8, 32, 32) > 0.7).to(torch.uint8)
    net = UNetConfig(channels=(4, 8), strides=(2,), num_res_units=0)
    trainer = build_trainer(structures, net, TrainConfig(batch_size=4, lr=1e-3, lr_schedule="cosine", method="none",
                                                         spatial_augment=False, amp=False), device="cpu")
    trainer.plan(4, epochs_done=2)  # round 2 of 4 (one local epoch each): half-way
    trainer.fit(SliceData(x, y), epochs=1)  # last batch at progress 2.5 / 4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.625)))
    unplanned = build_trainer(structures, net, TrainConfig(batch_size=4, lr_schedule="cosine", method="none",
                                                           amp=False), device="cpu")
    with pytest.raises(ValueError, match="needs the run's length"):  # not a silent lr of 0
        unplanned.fit(SliceData(x, y), epochs=1)
    constant = build_trainer(structures, net, TrainConfig(batch_size=4, lr=1e-3, method="none", amp=False),
                             device="cpu")
    constant.plan(4, epochs_done=3)
    constant.fit(SliceData(x, y), epochs=1)
    assert constant.optimizer.param_groups[0]["lr"] == 1e-3


def test_settings_round_trip_and_unknown_keys():
    """Every trainer style's settings go through ``SettingsDict``: a round trip keeps them; a typo in
    the supervised settings is an error naming it; the step-based trainers' checkpoints of other
    versions load with unknown keys dropped."""
    from fedxmodal.engine.episodic import EpisodicConfig
    from fedxmodal.engine.gan import GanConfig

    cfg = TrainConfig(lr=3e-4, lr_schedule="cosine", warmup=0.1, method_args={"a": 1})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"TrainConfig: unknown setting\(s\) \['lrr'\]; known: .*'lr'"):
        TrainConfig.from_dict({"lrr": 1e-3})
    assert GanConfig.from_dict({"steps": 7, "retired_option": 1}).steps == 7
    assert EpisodicConfig.from_dict({**EpisodicConfig(steps=3).to_dict(), "old": 0}) == EpisodicConfig(steps=3)
