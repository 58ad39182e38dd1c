"""The data factory's phase 2 through NVFlare (jobs/factory_adapt): the server's factory model,
the late site's condition, the output guard of the two tasks, the committed job, and (slow) the
job in the simulator from a tiny phase-1 model, then ``segment`` with an adapted target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedxmodal.methods.factory.adaptation import (FACTORY_MODEL_ENV, condition_keys, load_factory_model,
                                                  nearest_condition)
from fedxmodal.methods.factory.domain_key import DomainKeyEncoder, domain_key

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "specs" / "factory_adapt.json"
TINY = dict(image_size=32, z_dim=32, w_dim=32, mapping_layers=2, max_channels=32, min_channels=16, n_sites=2,
            key_dim=8, n_zbins=4, cond_dim=32)


def _factory(sites=("ct-site", "mr-site"), structures=("liver", "spleen")):
    """A tiny untrained phase-1 trainer (GanTrainer + FactoryGAN, 32 px): phase 2 needs no trained G."""
    from fedxmodal.engine.gan import GanConfig
    from fedxmodal.methods import build_trainer

    cfg = GanConfig(method="data_factory", method_args={"sites": list(sites), "quality_samples": 8}, batch_size=4,
                    steps=1, amp=False)
    return build_trainer(structures, {**TINY, "n_sites": len(sites)}, cfg, device="cpu")


# ------------------------------------------------------------------ the server's factory model
def test_factory_model_from_a_checkpoint_or_a_global_model_and_the_errors(tmp_path, monkeypatch):
    trainer = _factory()
    ckpt = trainer.save(tmp_path / "factory_model.pt")
    monkeypatch.delenv(FACTORY_MODEL_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"\(not set\).*factory_model.*FEDXMODAL_FACTORY_MODEL"):
        load_factory_model("", TINY)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_factory_model(str(tmp_path / "nowhere.pt"), TINY)
    gen, sites = load_factory_model(str(ckpt), TINY)  # the checkpoint knows its sites
    assert sites == ("ct-site", "mr-site")
    assert torch.equal(gen.state_dict()["w_avg"], trainer.model.generator_ema.state_dict()["w_avg"])
    monkeypatch.setenv(FACTORY_MODEL_ENV, str(ckpt))
    assert load_factory_model("", TINY)[1] == sites
    with pytest.raises(ValueError, match="differ from the job's model args"):
        load_factory_model(str(ckpt), {**TINY, "w_dim": 16})
    # phase 1's server file: {"model": state dict}; the job's settings and sites describe it
    fl = tmp_path / "FL_global_model.pt"
    torch.save({"model": {k: v.numpy() for k, v in trainer.model.state_dict().items()}}, fl)
    gen2, sites2 = load_factory_model(str(fl), {**TINY, "n_classes": 3, "encoder_width": 8}, ["ct-site", "mr-site"])
    assert sites2 == sites and all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(),
                                                                      gen2.state_dict().values()))
    with pytest.raises(ValueError, match="phase-1 sites"):
        load_factory_model(str(fl), TINY, ["ct-site"])


# ------------------------------------------------------------------ the late site's condition
class _StyledGenerator:
    """A stand-in generator whose row r draws slices of one style: 0 bright disks, 1 stripes, 2 noise."""

    def __init__(self):
        from fedxmodal.networks.stylegan import StyleGANConfig

        self.cfg, self.num_ws = StyleGANConfig(**{**TINY, "n_sites": 3, "key_dim": 16}), 2

    def mapping(self, z, site, key, zbin, key_keep=None):
        return torch.cat([site[:, None].float(), z[:, :31]], 1)

    def synthesis(self, ws, noise_mode="const"):
        row, n = ws[:, 0, 0].long(), len(ws)
        return torch.stack([_style(int(r), seed=i) for i, r in enumerate(row)])[:n]


def _style(row: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if row == 0:
        img = torch.full((size, size), -0.8)
        c = torch.randint(10, 22, (2,), generator=g)
        img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 30] = 0.8
    elif row == 1:
        img = 0.7 * torch.sin(xx / 1.5 + float(torch.rand(1, generator=g)) * 6)
    else:
        img = 0.6 * torch.randn(size, size, generator=g)
    return img.clamp(-1, 1)[None]


def test_a_late_site_conditions_on_the_phase1_site_that_looks_like_it():
    gen = _StyledGenerator()
    keys = condition_keys(gen, n=8)
    assert keys.shape == (3, 16)
    enc = DomainKeyEncoder(16)
    for row in range(3):  # the site's own slices (other draws of the same style) -> that row
        own = domain_key(enc, torch.stack([_style(row, seed=100 + i) for i in range(12)]))
        best, dist = nearest_condition(gen, own, n=8)
        assert best == row and dist[row] == min(dist) and len(set(dist)) == 3, (row, dist)


def test_site_condition_keeps_a_phase1_sites_own_row(tmp_path):
    from conftest import blob_case, write_site

    from fedxmodal.data.slices import SiteSlices
    from fedxmodal.data.preprocess import PreprocessConfig
    from fedxmodal.methods import method_class

    site = write_site(tmp_path / "cect-site", {"training": [blob_case(1)]})
    data = SiteSlices(site, ("liver", "spleen"), PreprocessConfig(size=32, spacing=2.5), progress=False)
    method = method_class("data_factory_adapt")(sites=["ct-site", "mr-site", "cect-site"], key_samples=4)
    gen = _StyledGenerator()
    assert method.site_condition(data, gen)[0] == 2  # in phase 1: its own row, nothing computed
    method.sites = ("ct-site", "mr-site", "t1-site")
    row, how = method.site_condition(data, gen, name="cect-site")
    assert how["late"] and how["site"] == method.sites[row] and set(how["distances"]) == set(method.sites)


# ------------------------------------------------------------------ the job and its guard
def _tiny_spec(sites=("ct-site", "mr-site"), factory_model=""):
    from fedxmodal.recipes.export import load_spec

    spec = load_spec(SPEC)
    spec["model"]["args"] = {**TINY, "n_sites": len(sites), "n_classes": 3, "encoder_width": 8, "head_width": 8}
    ca = spec["client_args"]
    ca["structures"], ca["preprocess"], ca["local_steps"] = ["liver", "spleen"], {"spacing": 2.5, "size": 32}, 2
    ca["train"].update(batch_size=4, condition_samples=4)
    ca["train"]["method_args"].update(sites=list(sites), factory_model=factory_model, key_samples=4)
    return spec


def test_guard_lets_out_the_source_branch_and_the_targets_metrics_only(tmp_path):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    from fedxmodal.fl.guard import OutputRefused
    from fedxmodal.recipes.export import export_job
    from fedxmodal.utils import instantiate

    spec = _tiny_spec()
    job = export_job(tmp_path, spec)
    cfg = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    chains = {tuple(f["tasks"]): f["filters"] for f in cfg["task_result_filters"]}
    assert set(chains) == {("train_source",), ("adapt_target",)}
    guard = instantiate(chains[("train_source",)][-1])
    branch = {k: v.numpy().copy() for k, v in instantiate(spec["model"]).state_dict().items()}
    dice = {"dice": 0.5, "dice_liver": 0.6, "dice_spleen": 0.4, "n_volumes": 1.0, "steps": 2.0}

    def weights(params, metrics=dice):
        return DXO(DataKind.WEIGHTS, data=params, meta={MetaKey.INITIAL_METRICS: metrics}).to_shareable()

    def metrics(values, meta=None):
        return DXO(DataKind.METRICS, data=values, meta=meta or {}).to_shareable()

    guard.check("train_source", weights(branch))
    guard.check("train_source", metrics({"failed": 1.0}, {"error": "site 'ct-site': no label"}))
    for extra in ({"slice": np.zeros((1, 1, 32, 32), np.float32)}, {"domain_key": np.zeros(8, np.float32)},
                  {"source_branch.images": np.zeros((4, 1, 32, 32), np.float32)}):
        with pytest.raises(OutputRefused, match="undeclared entry"):
            guard.check("train_source", weights({**branch, **extra}))
    with pytest.raises(OutputRefused, match="has shape"):
        guard.check("train_source", weights({**branch, "encoder.w_avg": np.zeros((32, 32), np.float32)}))
    guard.check("adapt_target", metrics(dice))
    for payload in ({"encoder.w_avg": branch["encoder.w_avg"]}, {"mask": np.zeros((32, 32), np.uint8)}):
        with pytest.raises(OutputRefused, match="may not send tensors"):
            guard.check("adapt_target", weights(payload))
    with pytest.raises(OutputRefused):
        guard.check("adapt_target", metrics({**dice, "key_0": 0.1}))
    with pytest.raises(OutputRefused, match="undeclared meta"):
        guard.check("adapt_target", metrics(dice, {"domain_key": [0.1] * 8}))
    with pytest.raises(OutputRefused, match="not declared"):
        guard.check("share_amplitudes", weights(branch))
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert [w["path"].rsplit(".", 1)[1] for w in server["workflows"]] == ["FactoryAdaptation"]


def test_committed_factory_adapt_job_is_in_sync(tmp_path):
    """jobs/factory_adapt/ is generated from jobs/specs/factory_adapt.json; if this fails:
    python -m fedxmodal.recipes.export jobs/specs/factory_adapt.json --export-dir jobs"""
    from fedxmodal.recipes.export import compare_job_dirs, export_job, load_spec

    fresh = export_job(tmp_path, load_spec(SPEC))
    diffs = [d for d in compare_job_dirs(fresh, REPO / "jobs" / "factory_adapt") if "app/custom/" not in d]
    assert diffs == [], diffs[:20]


# ------------------------------------------------------------------ the job in the simulator
def _write_sites(root: Path) -> None:
    from conftest import blob_case, write_site

    for i, (name, modality, scale) in enumerate((("ct-site", "CT", None), ("mr-site", "MR", 0.5),
                                                 ("cect-site", "CT", None))):
        cases = [blob_case(seed=10 * i + k, shape=(40, 40, 6)) for k in range(5)]
        if scale:
            cases = [(np.abs(img + 1000).astype(np.float32) * scale, lab) for img, lab in cases]
        elif name == "cect-site":  # contrast CT: brighter organs
            cases = [(np.where(lab > 0, img + 120, img).astype(np.float32), lab) for img, lab in cases]
        write_site(root / name, {"training": cases[:3], "validation": cases[3:4], "test": cases[4:]}, modality=modality)
    few = [blob_case(seed=40 + k, shape=(40, 40, 6)) for k in range(3)]  # two training volumes: too few labels
    write_site(root / "few-site", {"training": few[:2], "test": few[2:]}, modality="CT")


@pytest.mark.slow
def test_phase2_job_in_the_simulator_then_segment_with_an_adapted_target(tmp_path):
    """A tiny phase-1 model (ct-site, mr-site; untrained), the source ct-site, the targets mr-site,
    cect-site (not in phase 1) and few-site (two labelled volumes: fails, reported, the others go
    on), through ``factory adapt``; then ``segment`` with each target's model: a mask in the
    input's geometry."""
    from fedxmodal.cli import main

    _write_sites(tmp_path / "data")
    factory = _factory()
    factory.preprocess = type(factory.preprocess).from_dict({"spacing": 2.5, "size": 32})
    ckpt = factory.save(tmp_path / "factory_model.pt")
    out = tmp_path / "out"
    rc = main(["factory", "adapt", "--factory-model", str(ckpt), "--data", str(tmp_path / "data"), "--source",
               "ct-site", "--targets", "mr-site", "cect-site", "few-site", "--out", str(out), "--steps", "2"])
    log = (out / "simulator.log").read_text()
    assert rc == 1, log[-3000:]  # one target failed
    assert "target site few-site failed adapt_target: site 'few-site': 2 labelled volume(s)" in log, log[-3000:]
    assert "OUTPUT GUARD REFUSED" not in log
    assert "not a phase-1 site: conditioning on" in log
    results = json.loads((out / "dice.json").read_text())
    assert set(results["targets"]) == {"mr-site", "cect-site", "few-site"}
    assert results["targets"].pop("few-site")["failed"]
    for name, r in results["targets"].items():
        assert not r["failed"] and r["metrics"]["n_volumes"] == 1.0, (name, r)
        assert set(r["metrics"]) <= {"dice", "dice_liver", "dice_spleen", "n_volumes", "steps"}
    assert "| cect-site |" in (out / "dice.md").read_text()
    image = tmp_path / "data" / "cect-site" / "images" / "test_0.nii.gz"
    for name in ("mr-site", "cect-site"):
        model = out / "site_state" / name / "factory_adapt" / "target.pt"
        mask_path = tmp_path / f"{name}_mask.nii.gz"
        assert main(["segment", str(image), "--model", str(model), "--out", str(mask_path), "--device", "cpu"]) == 0
        src, mask = nib.load(str(image)), nib.load(str(mask_path))
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    ckpt = torch.load(out / "site_state" / "cect-site" / "factory_adapt" / "target.pt", weights_only=False)
    assert ckpt["meta"]["condition_site"] in ("ct-site", "mr-site") and ckpt["meta"]["source"] == "ct-site"
    # the source fails cleanly when its training cases have no labels: the job stops, naming the site
    spec = json.loads((tmp_path / "data" / "ct-site" / "dataset.json").read_text())
    spec["training"] = [{"image": c["image"]} for c in spec["training"]]
    (tmp_path / "data" / "ct-site" / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(SystemExit, match="source site ct-site failed train_source: .*ct-site.*no label"):
        main(["factory", "adapt", "--factory-model", str(tmp_path / "factory_model.pt"), "--data",
              str(tmp_path / "data"), "--source", "ct-site", "--targets", "mr-site", "--out", str(tmp_path / "o2"),
              "--steps", "1"])
    assert "train_source result of ct-site accepted: DataKind.METRICS" in (tmp_path / "o2" / "simulator.log").read_text()


def test_adapt_allow_fewer_reaches_the_sites_method_args(tmp_path):
    """``factory adapt --allow-fewer`` (the real pair: two slabs per site) sets the method's
    ``allow_fewer``; without it the spec keeps refusing a target with fewer than three volumes."""
    from fedxmodal.apps.factory import adapt_spec

    factory = _factory()
    args = (factory, tmp_path / "factory_model.pt", "ct-site", ["mr-site"])
    assert adapt_spec(*args, allow_fewer=True)["client_args"]["train"]["method_args"]["allow_fewer"] is True
    assert not adapt_spec(*args)["client_args"]["train"]["method_args"].get("allow_fewer", False)
