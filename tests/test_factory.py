"""The federated multimodal data factory, phase 1 (Galati et al., MICCAI 2024): domain key, quality figure, conditioned slices, uniform
aggregation, seeded k-of-N sampling, the output guard of jobs/factory, and the job itself in the
simulator (2 rounds on tiny data, then resumed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedxmodal.methods.factory.domain_key import DomainKeyEncoder, domain_key
from fedxmodal.methods.factory.quality import swd
from fedxmodal.methods.factory.site_data import ConditionedSlices, slice_zbins, to_unit_range

REPO = Path(__file__).resolve().parents[1]


def _disks(n, seed, bright=0.8, noise=0.05, size=32):
    """(n, 1, size, size) dark slices with one bright disk each (a 'domain')."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.full((n, 1, size, size), -0.8)
    for i in range(n):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g)
        r = 4 + int(torch.randint(0, 4, (1,), generator=g))
        out[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = bright
    return out + noise * torch.randn(out.shape, generator=g)


def _stripes(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    xx = torch.arange(size).float()
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.28
    return 0.6 * torch.sin(xx / 2.0 + phase).expand(n, 1, size, size) + 0.1 * torch.randn(n, 1, size, size, generator=g)


def test_domain_key_is_the_same_encoder_everywhere_and_separates_domains():
    a, b = DomainKeyEncoder(64), DomainKeyEncoder(64)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(p.requires_grad for p in a.parameters())
    site_a = _disks(40, seed=1)
    key_a1, key_a2 = domain_key(a, site_a[:20]), domain_key(a, site_a[20:])
    key_b = domain_key(a, _stripes(20, seed=2))
    assert key_a1.shape == (64,) and torch.isclose(key_a1.norm(), torch.tensor(8.0))
    assert (key_a1 - key_b).norm() > 3 * (key_a1 - key_a2).norm()
    with pytest.raises(ValueError, match="at least one slice"):
        domain_key(a, site_a[:0])


def test_swd_ranks_the_same_distribution_below_another_and_is_seeded():
    real, same, other = _disks(32, 1), _disks(32, 2), _stripes(32, 3)
    assert swd(real, same, seed=0) == swd(real, same, seed=0)
    assert swd(real, same) < 0.5 * swd(real, other)
    assert swd(real, real) < swd(real, same)
    with pytest.raises(ValueError, match="differ in shape"):
        swd(real, real[:, :, :16])


def test_conditioned_slices_positions_range_and_batches():
    assert slice_zbins(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert slice_zbins(3, 16).tolist() == [0, 5, 10]
    vol = torch.randn(10, 1, 8, 8) * 3 + 2
    unit = to_unit_range(vol)
    assert unit.min() == -1 and unit.max() == 1
    data = ConditionedSlices([vol, torch.randn(4, 1, 8, 8)], site_index=2, key=torch.ones(6), n_zbins=4, seed=0)
    assert len(data) == 14 and data.zbins[:10].tolist() == slice_zbins(10, 4).tolist()
    b = data.batch(5)
    assert b["images"].shape == (5, 1, 8, 8) and b["key"].shape == (5, 6)
    assert b["site"].tolist() == [2] * 5 and b["images"].abs().max() <= 1
    again = ConditionedSlices([vol, torch.randn(4, 1, 8, 8)], 2, torch.ones(6), 4, seed=0).batch(5)
    assert torch.equal(again["zbin"], b["zbin"])


def test_uniform_aggregator_ignores_the_slice_counts():
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedxmodal.methods.factory.aggregator import UniformAggregator

    agg = UniformAggregator()
    for site, value, n in (("a", 1.0, 1000), ("b", 3.0, 10)):
        agg.accept_model(FLModel(params={"generator.w": np.full(3, value, np.float32),
                                         "generator_ema.w": np.full(3, 2 * value, np.float32)},
                                 params_type=ParamsType.FULL,
                                 meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: n, "client_name": site}))
    out = agg.aggregate_model()
    assert np.allclose(out.params["generator.w"], 2.0) and np.allclose(out.params["generator_ema.w"], 4.0)
    agg.reset_stats()
    with pytest.raises(RuntimeError, match="no site result"):
        agg.aggregate_model()


def test_seeded_sampling_draws_k_of_n_per_round_reproducibly():
    from types import SimpleNamespace

    from fedxmodal.fl.server import ResumableFedAvg

    def draws(seed):
        ctl = ResumableFedAvg(num_clients=2, num_rounds=6, sample_seed=seed)
        ctl.engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=n) for n in ("c", "a", "b")])
        ctl.info = lambda msg: None
        out = []
        for r in range(6):
            ctl.current_round = r
            out.append(tuple(ctl.sample_clients(2)))
        return out

    first = draws(0)
    assert first == draws(0) and all(len(set(s)) == 2 and set(s) <= {"a", "b", "c"} for s in first)
    assert len(set(first)) > 1  # not the same pair every round
    assert {x for s in first for x in s} == {"a", "b", "c"}


# ------------------------------------------------------------------ the method and the GAN trainer
def _tiny_network():
    return {"image_size": 32, "n_sites": 3, "n_zbins": 4, "key_dim": 16, "max_channels": 32, "min_channels": 16,
            "z_dim": 32, "w_dim": 32, "cond_dim": 32, "mapping_layers": 2}


def _factory_trainer(**train):
    from fedxmodal.engine.gan import GanConfig
    from fedxmodal.methods import build_trainer

    cfg = GanConfig(method="data_factory", method_args={"sites": ["s0", "s1", "s2"], "quality_samples": 8},
                    batch_size=4, steps=3, amp=False, **train)
    return build_trainer((), _tiny_network(), cfg, device="cpu")


def test_the_job_model_is_the_three_networks_and_nothing_image_shaped():
    from fedxmodal.utils import instantiate

    spec = json.loads((REPO / "jobs" / "specs" / "factory.json").read_text())
    state = instantiate(spec["model"]).state_dict()
    prefixes = {k.split(".", 1)[0] for k in state}
    assert prefixes == {"generator", "discriminator", "generator_ema"}
    size = spec["client_args"]["preprocess"]["size"]
    assert not [k for k, v in state.items() if v.dim() >= 2 and tuple(v.shape[-2:]) == (size, size)]


def test_quality_metrics_and_pictures_at_a_site(tmp_path):
    trainer = _factory_trainer()
    vols = [torch.randn(6, 1, 32, 32), torch.randn(5, 1, 32, 32)]
    key = torch.randn(16)
    train = ConditionedSlices(vols, 1, key, 4, seed=0)
    val = ConditionedSlices([torch.randn(6, 1, 32, 32)], 1, key, 4, seed=1)
    splits = {"training": train, "validation": val}
    trainer.fit(lambda: train.batch(4), steps=2)
    m = trainer.method.quality_metrics(trainer, splits, "validation")
    assert set(m) == {"swd", "swd_nokey", "swd_other", "swd_floor"} and all(np.isfinite(v) for v in m.values())
    assert m == trainer.method.quality_metrics(trainer, splits, "validation")  # fixed seeds: same figures
    files = trainer.method.site_pictures(trainer, splits, tmp_path, current_round=0, total_rounds=3)
    assert [f.name for f in files] == ["s1_round000.png"] and files[0].stat().st_size > 0
    assert trainer.method.site_pictures(trainer, splits, tmp_path, current_round=1, total_rounds=9) == []
    assert trainer.method.site_pictures(trainer, splits, tmp_path, current_round=8, total_rounds=9)  # the last round
    trainer.method.picture_every = 2
    assert trainer.method.site_pictures(trainer, splits, tmp_path, current_round=9, total_rounds=20) == []
    assert trainer.method.site_pictures(trainer, splits, tmp_path, current_round=11, total_rounds=20)
    with pytest.raises(ValueError, match="not one of the factory's phase-1 sites"):
        trainer.method.site_index("late-site")


def test_factory_site_parts_recreate_the_optimizers_each_round():
    from fedxmodal.methods import method_class

    trainer = _factory_trainer()
    data = ConditionedSlices([torch.randn(8, 1, 32, 32)], 0, torch.randn(16), 4)
    trainer.fit(lambda: data.batch(4), steps=2)
    assert any(trainer.optimizers["generator"].state.values())
    parts = method_class("data_factory").build_site_parts(trainer, None, "s0")
    parts.before_training(None)
    assert not any(trainer.optimizers["generator"].state.values())
    assert not any(trainer.optimizers["discriminator"].state.values())
    sp = method_class("data_factory").server_parts(3)
    assert sp.aggregator["path"].endswith("UniformAggregator")


# ------------------------------------------------------------------ the job
def _job_guard(tmp_path):
    from fedxmodal.recipes.export import export_job, load_spec
    from fedxmodal.utils import instantiate

    spec = load_spec(REPO / "jobs" / "specs" / "factory.json")
    job = export_job(tmp_path, spec)
    cfg = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    chain = next(f for f in cfg["task_result_filters"] if f["tasks"] == ["train"])["filters"]
    return instantiate(chain[-1]), spec


def test_guard_lets_only_the_declared_weights_leave(tmp_path):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    from fedxmodal.fl.guard import OutputRefused
    from fedxmodal.utils import instantiate

    guard, spec = _job_guard(tmp_path)
    weights = {k: v.numpy().copy() for k, v in instantiate(spec["model"]).state_dict().items()}

    def result(params, metrics=None):
        return DXO(DataKind.WEIGHTS, data=params, meta={MetaKey.INITIAL_METRICS: metrics or {"swd": 3.0, "swd_floor": 1.0},
                                                        MetaKey.NUM_STEPS_CURRENT_ROUND: 10}).to_shareable()

    guard.check("train", result(weights))
    size = spec["client_args"]["preprocess"]["size"]
    for extra in ({"domain_key": np.zeros(64, np.float32)},
                  {"sample": np.zeros((1, 1, size, size), np.float32)},
                  {"generator.real_slices": np.zeros((8, 1, size, size), np.float32)}):
        with pytest.raises(OutputRefused, match="undeclared entry"):
            guard.check("train", result({**weights, **extra}))
    with pytest.raises(OutputRefused):
        guard.check("train", result(weights, {"swd": 3.0, "key_0": 0.1}))


def test_committed_factory_job_is_in_sync(tmp_path):
    """jobs/factory/ is generated from jobs/specs/factory.json; if this fails:
    python -m fedxmodal.recipes.export jobs/specs/factory.json --export-dir jobs"""
    from fedxmodal.recipes.export import compare_job_dirs, export_job, load_spec

    fresh = export_job(tmp_path, load_spec(REPO / "jobs" / "specs" / "factory.json"))
    diffs = [d for d in compare_job_dirs(fresh, REPO / "jobs" / "factory") if "app/custom/" not in d]
    assert diffs == [], diffs[:20]


@pytest.mark.slow
def test_phase1_job_in_the_simulator_samples_two_of_three_and_resumes(tmp_path):
    """3 tiny sites (CT, MR, MR), 2 of 3 per round: 2 rounds, then the same job with 3 rounds
    continues from its checkpoint; the global model holds G, D and EMA-G only, the sites report
    the quality figures and keep their sample grids."""
    from conftest import blob_case, write_site

    from fedxmodal.apps.factory import factory_spec
    from fedxmodal.deploy.simulator import run_simulator
    from fedxmodal.recipes.export import export_job

    sites = ["site-ct", "site-mr", "site-t1"]
    for i, (name, modality) in enumerate(zip(sites, ("CT", "MR", "MR"))):
        cases = [blob_case(seed=10 * i + k, shape=(40, 40, 6)) for k in range(4)]
        if modality == "MR":
            cases = [(np.abs(img + 1000).astype(np.float32) * (1.5 if name == "site-t1" else 0.5), lab)
                     for img, lab in cases]
        write_site(tmp_path / "data" / name, {"training": cases[:2], "validation": cases[2:3], "test": cases[3:]},
                   modality=modality)

    def run(rounds):
        spec = factory_spec(sites, rounds=rounds, local_steps=3, seed=0)
        spec["model"]["args"].update(image_size=32, max_channels=32, min_channels=16)
        spec["client_args"]["preprocess"] = {"spacing": 2.5, "size": 32}
        spec["client_args"]["train"]["method_args"]["quality_samples"] = 8
        spec["client_args"]["train"]["batch_size"] = 4
        job = export_job(tmp_path / "jobs", spec)
        env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(tmp_path / "data"), "FEDXMODAL_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
               "FEDXMODAL_SITE_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
        run_simulator(job, tmp_path / "ws", env, tmp_path / f"sim{rounds}.log", rounds, sites, timeout=900, echo=False)
        return (tmp_path / f"sim{rounds}.log").read_text(), tmp_path / "ws" / "server" / "simulate_job"

    log, run_dir = run(2)
    sampled = [line for line in log.splitlines() if "sampled sites" in line]
    assert len(sampled) == 2 and all(line.count("'site-") == 2 for line in sampled), sampled
    assert "uniform average of 2 sites" in log and "OUTPUT GUARD REFUSED" not in log
    model = torch.load(run_dir / "app_server" / "FL_global_model.pt", weights_only=False)["model"]
    assert {k.split(".", 1)[0] for k in model} == {"generator", "discriminator", "generator_ema"}
    assert list((tmp_path / "state").rglob("*_round000.png"))
    from fedxmodal.apps.curves import read_tb_scalars

    curves = read_tb_scalars(run_dir / "tb_events")
    assert any("val/swd" in tags for tags in curves.values())
    log3, _ = run(3)
    assert "Resuming at round 2 of 3" in log3 and log3.count("sampled sites") == 1


def test_factory_sample_and_morph_commands(tmp_path):
    from fedxmodal.cli import main

    trainer = _factory_trainer()
    ckpt = trainer.save(tmp_path / "factory.pt")
    assert main(["factory", "sample", "--model", str(ckpt), "--site", "s2", "--n", "4", "--out",
                 str(tmp_path / "grid.png")]) == 0
    assert main(["factory", "morph", "--model", str(ckpt), "--sites", "s0", "s1", "--steps", "3", "--out",
                 str(tmp_path / "morph.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "morph.png").stat().st_size > 0
    from fedxmodal.apps.factory import morph_images

    frames = morph_images(trainer, "s0", "s1", steps=3)
    ends = [trainer.sample(i, torch.zeros(16), 2, n=1, seed=0, key_keep=False) for i in (0, 1)]
    assert frames.shape == (3, 1, 32, 32)
    assert torch.allclose(frames[0], ends[0][0], atol=1e-4) and torch.allclose(frames[-1], ends[1][0], atol=1e-4)
    with pytest.raises(SystemExit):
        main(["factory", "sample", "--model", str(ckpt), "--n", "4", "--out", str(tmp_path / "x.png")])  # no --site
    assert main(["factory", "sample", "--model", str(ckpt), "--site", "nowhere", "--out", str(tmp_path / "x.png")]) == 2
