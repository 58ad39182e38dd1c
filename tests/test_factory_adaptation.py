"""The federated multimodal data factory, phase 2 (Galati et al., MICCAI 2024): the inversion encoder and feature head
(networks/gan_inversion.py), the adaptation trainer (methods/factory/trainer.py) and the method side
(methods/factory/adaptation.py), on a tiny untrained generator (16 px, 32 channels) so that the
file runs in seconds on one core."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from fedxmodal.data.preprocess import PreprocessConfig
from fedxmodal.data.slices import SiteSlices
from fedxmodal.methods.factory.trainer import AdaptationConfig, AdaptationTrainer
from fedxmodal.methods import METHODS, load_trainer
from fedxmodal.methods.factory.adaptation import AdaptationMethod, adapt_locally, pick_three_slices
from fedxmodal.networks.gan import FactoryGAN
from fedxmodal.networks.gan_inversion import FeatureSegHead, InversionEncoder
from fedxmodal.networks.stylegan import StyleGANConfig

from conftest import blob_case, load_experiment, write_site

TINY = dict(image_size=16, z_dim=32, w_dim=32, mapping_layers=2, max_channels=32, min_channels=16,
            n_sites=2, key_dim=8, n_zbins=4, cond_dim=32)
STRUCTURES = ("liver", "spleen")
N = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generator():
    return FactoryGAN(StyleGANConfig(**TINY)).generator_ema


def _trainer(generator, structures=STRUCTURES, seed=0, **train) -> AdaptationTrainer:
    torch.manual_seed(seed)  # E and S's initial weights
    cfg = AdaptationConfig(method=AdaptationMethod.name, **{"amp": False, "lr": 3e-3, "condition_samples": 16,
                                                            **train})
    return AdaptationTrainer(structures, AdaptationMethod(), train=cfg, generator=generator, device="cpu")


def _disks(site: int, n: int = N) -> dict:
    """A fixed batch: dark slices with a bright disk (class 1) and a grey square (class 2)."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    images, labels = torch.full((n, 1, 16, 16), -0.8), torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        disk = (yy - 5 - i % 4) ** 2 + (xx - 6 - i // 4 * 3) ** 2 < 12
        square = (yy >= 10) & (yy < 14) & (xx >= 9 + i % 3) & (xx < 13 + i % 3)
        images[i, 0][disk], labels[i][disk] = 0.8, 1
        images[i, 0][square], labels[i][square] = 0.1, 2
    key = torch.linspace(-1, 1, 8) * (1 if site == 0 else -1)
    return {"images": images, "labels": labels, "site": torch.full((n,), site), "key": key.expand(n, -1).clone(),
            "zbin": torch.arange(n) % 4}


def _recon(tr: AdaptationTrainer, x: torch.Tensor) -> float:
    with torch.no_grad():
        mse, ssim = tr.reconstruction(tr.synthesize(tr.model.encoder(x))[0], x)
    return float(mse + ssim)


def _adapted(generator, steps=2):
    """A source trainer (fit on site 0) and a target trainer (site 1) with its source branch."""
    src = _trainer(generator, seed=1)
    src.fit_source(lambda: _disks(0), steps)
    tgt = _trainer(generator, seed=2)
    tgt.set_source_branch(src)
    target = {k: v for k, v in _disks(1).items() if k != "labels"}
    shots = {k: v[:3] for k, v in _disks(1).items()}
    tgt.fit_target(lambda: target, steps, source_site=0, labelled=shots)
    return src, tgt


def test_networks_shapes_and_encoder_starts_at_w_avg(generator):
    cfg = generator.cfg
    enc, head = InversionEncoder(cfg, width=8), FeatureSegHead(cfg, 3, width=8)
    enc.set_w_avg(torch.full((cfg.w_dim,), 0.5))
    ws = enc(_disks(0)["images"])
    assert ws.shape == (N, generator.num_ws, cfg.w_dim)
    assert (ws - 0.5).abs().max() < 0.05  # the last layer starts near zero: w+ ~ w_avg
    _, feats = generator.synthesis(ws, noise_mode="const", return_features=True)
    assert head(feats).shape == (N, 3, 16, 16)
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.zeros(2, 1, 8, 8))


def test_encoder_reconstruction_improves_and_not_without_training(generator):
    batch = _disks(0)
    trained, frozen = _trainer(generator), _trainer(generator, lr=0.0)
    start = _recon(trained, batch["images"])
    assert start == pytest.approx(_recon(frozen, batch["images"]))  # same initial weights
    out = trained.fit_source(lambda: batch, 30)
    frozen.fit_source(lambda: batch, 30)
    assert set(out["means"]) >= {"loss", "mse", "ssim", "seg"} and out["steps"] == 30
    assert _recon(trained, batch["images"]) < 0.6 * start
    assert _recon(frozen, batch["images"]) > 0.95 * start  # lr 0: the same test must fail


def test_cycle_swap_changes_the_domain_and_the_reverse_restores_it(generator):
    _, tgt = _adapted(generator, steps=1)
    assert tgt.conditions["source_site"] == 0 and tgt.conditions["target_site"] == 1
    ws = torch.randn(N, generator.num_ws, generator.cfg.w_dim)
    zb = torch.arange(N) % 4
    swapped = tgt.swap_to_source(ws, zb)
    assert (swapped - ws).abs().amax() > 1e-3
    assert torch.allclose(tgt.swap_to_target(swapped, zb), ws, atol=1e-6)
    # the shift is m(source, key dropped) - m(target, target key) per slice position, on every layer
    z = torch.randn(16, generator.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        def mean_w(site, keep):
            return generator.mapping(z, torch.full((16,), site), tgt.conditions["target_key"].expand(16, -1),
                                     torch.full((16,), 2), key_keep=torch.full((16,), keep)).mean(0)
        expected = mean_w(0, False) - mean_w(1, True)
    assert torch.allclose(swapped[zb == 2] - ws[zb == 2], expected.expand(2, generator.num_ws, -1), atol=1e-5)


def test_target_adaptation_leaves_generator_and_source_branch_unchanged(generator):
    src, tgt = _adapted(generator, steps=1)
    g_before = {k: v.clone() for k, v in tgt.generator.state_dict().items()}
    s_before = {k: v.clone() for k, v in tgt.source_branch.state_dict().items()}
    m_before = {k: v.clone() for k, v in tgt.model.state_dict().items()}
    target = {k: v for k, v in _disks(1).items() if k != "labels"}
    out = tgt.fit_target(lambda: target, 3, source_site=0, labelled={k: v[:3] for k, v in _disks(1).items()})
    m = out["means"]
    assert {"mse", "ssim", "cycle", "pseudo", "few_shot"} <= set(m) and all(np.isfinite(v) for v in m.values())
    assert all(torch.equal(g_before[k], v) for k, v in tgt.generator.state_dict().items())
    assert all(torch.equal(s_before[k], v) for k, v in tgt.source_branch.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in tgt.generator.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tgt.source_branch.parameters())
    assert any(not torch.equal(m_before[k], v) for k, v in tgt.model.state_dict().items())
    # the source trainer's own weights were copied, not shared
    assert tgt.source_branch is not src.model


def test_pick_three_slices_takes_mid_slices_with_foreground_from_three_volumes():
    def vol(fg_slices, z=9):
        if fg_slices is None:
            return types.SimpleNamespace(label=None)
        lab = torch.zeros(z, 4, 4, dtype=torch.uint8)
        for s in fg_slices:
            lab[s, 1, 1] = 1
        return types.SimpleNamespace(label=lab)

    vols = [vol(range(2, 7)), vol([]), vol(None), vol([1, 7]), vol(range(0, 3))]
    # mid of 2..6 is 4; 1..7 has a gap at 4: the nearest foreground slice (1); mid of 0..2 is 1
    assert pick_three_slices(vols, site="t") == [(0, 4), (3, 1), (4, 1)]
    picks = pick_three_slices(vols + [vol(range(5, 9))], seed=3)
    assert len({v for v, _ in picks}) == 3 and all(vols_fg.label[s].any() for vols_fg, s in
                                                   [((vols + [vol(range(5, 9))])[v], s) for v, s in picks])
    with pytest.raises(ValueError, match="site 'hospital-b'.*2 labelled volume"):
        pick_three_slices(vols[:4], site="hospital-b")
    assert pick_three_slices(vols[:4], site="hospital-b", allow_fewer=True) == [(0, 4), (3, 1)]


def test_predict_averages_source_and_target_branches(generator):
    src, tgt = _adapted(generator, steps=2)
    x, zb = _disks(1)["images"], torch.arange(N) % 4
    G = tgt.generator
    with torch.no_grad():
        ws = tgt.model.encoder(x)
        own = torch.softmax(tgt.model.seg_head(G.synthesis(ws, "const", True)[1]), 1)
        shift = tgt.domain_shift()[zb][:, None]
        x_src = G.synthesis(ws + shift, "const")
        branch = tgt.source_branch
        source = torch.softmax(branch.seg_head(G.synthesis(branch.encoder(x_src), "const", True)[1]), 1)
    p = tgt.predict(x, zb)
    assert torch.allclose(p, 0.5 * own + 0.5 * source, atol=1e-5)
    assert (own - source).abs().max() > 1e-3  # two different branches
    assert torch.allclose(p.sum(1), torch.ones(N, 16, 16), atol=1e-5)
    # one branch alone on request (experiments/factory_branches.py)
    assert torch.allclose(tgt.predict(x, zb, rule="own"), own, atol=1e-5)
    assert torch.allclose(tgt.predict(x, zb, rule="source"), source, atol=1e-5)
    with pytest.raises(ValueError, match="'source' only at an adapted target"):
        src.predict(x, rule="source")
    # a source trainer predicts with its own branch alone
    with torch.no_grad():
        own_src = torch.softmax(src.model.seg_head(G.synthesis(src.model.encoder(x), "const", True)[1]), 1)
    assert torch.allclose(src.predict(x), own_src, atol=1e-5)


def test_checkpoint_round_trip_reproduces_predictions(generator, tmp_path):
    _, tgt = _adapted(generator, steps=2)
    x, zb = _disks(1)["images"], torch.arange(N) % 4
    path = tgt.save(tmp_path / "target.pt", role="target")
    back = load_trainer(path, device="cpu")  # through the registry, by the recorded method name
    assert isinstance(back, AdaptationTrainer) and back.source_branch is not None
    assert back.conditions["source_site"] == 0 and torch.equal(back.conditions["target_key"],
                                                               tgt.conditions["target_key"])
    assert torch.allclose(back.predict(x, zb), tgt.predict(x, zb), atol=1e-6)
    assert back.meta == {"role": "target"}


def test_method_registered_local_only_and_out_of_the_comparison_grid():
    cls = METHODS[AdaptationMethod.name]
    assert cls is AdaptationMethod and cls.trainer is AdaptationTrainer and cls.needs_labels
    assert cls.regimes == ("local",)
    from fedxmodal.apps.compare import CompareGrid

    with pytest.raises(ValueError, match="without a federated regime"):
        CompareGrid(data=None, out=None, task="abdomen", quick=True, methods=[AdaptationMethod.name])


def test_adapt_locally_then_evaluate_in_the_supervised_report_format(generator, tmp_path):
    from fedxmodal.engine.supervised import SupervisedTrainer, TrainConfig
    from fedxmodal.networks.unet import UNetConfig

    pre = PreprocessConfig(spacing=5.0, size=16)
    src_dir = write_site(tmp_path / "src", {"training": [blob_case(i) for i in range(2)]})
    tgt_dir = write_site(tmp_path / "tgt", {"training": [blob_case(i + 5) for i in range(3)],
                                            "test": [blob_case(9), blob_case(10)]}, modality="MR")
    gan = FactoryGAN(StyleGANConfig(**TINY))
    out = adapt_locally(gan, src_dir, tgt_dir, STRUCTURES, tmp_path / "out", sites=("src", "tgt"), source_steps=2,
                        target_steps=2, batch_size=4, preprocess=pre, amp=False, device="cpu")
    assert out["target_checkpoint"].is_file() and len(out["labelled_slices"]) == 3
    assert {"cycle", "pseudo", "few_shot"} <= set(out["target_fit"]["means"])
    tgt = load_trainer(out["target_checkpoint"], device="cpu")
    site = SiteSlices(tgt_dir, STRUCTURES, pre, progress=False)
    report = tgt.evaluate(site, "test")
    sup = SupervisedTrainer(STRUCTURES, METHODS["none"](), network=UNetConfig(channels=(4, 8), strides=(2,)),
                            train=TrainConfig(amp=False), preprocess=pre, device="cpu").evaluate(site, "test")
    assert set(report) == set(sup) and report["site"] == "tgt" and report["split"] == "test"
    assert len(report["per_volume"]) == 2
    assert [set(v) for v in report["per_volume"]] == [set(v) for v in sup["per_volume"]]
    assert set(report["summary"]) == set(sup["summary"]) and set(report["summary"]["dice"]) == set(STRUCTURES)
    # experiments/factory_branches.py: its "average" rule is the trainer's own prediction; each branch alone is scored too
    rules = load_experiment("factory_branches").target_rules(out["target_checkpoint"], tgt_dir)
    assert rules["average"] == pytest.approx(report["summary"]["mean_dice"], abs=1e-6)
    assert all(0.0 <= rules[r] <= 1.0 for r in ("own", "source"))
    # `evaluate --overlays` draws an adapted target's prediction like any trainer's
    from fedxmodal.apps.overlay import write_case_overlays
    pngs = write_case_overlays(tgt, site, "test", tmp_path / "overlays")
    assert len(pngs) == 2 and all(p.stat().st_size > 0 for p in pngs)
    # a site with fewer than three labelled volumes cannot be a target
    with pytest.raises(ValueError, match="site 'src'"):
        adapt_locally(gan, tgt_dir, src_dir, STRUCTURES, tmp_path / "out2", sites=("src", "tgt"), source_steps=1,
                      target_steps=1, batch_size=4, preprocess=pre, amp=False, device="cpu")
