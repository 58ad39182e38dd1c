"""The federated GIN paper's baselines through the supervised trainer: every method trains through it; DSBN routes each
site to its own BatchNorm branch; Dual-Norm picks the right branch for source-like and
source-unlike slices; FedBN keeps BatchNorm out of the average and at the sites; FedDG's bank
draws only other domains' spectra in the centralized regime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedxmodal.engine.base import SliceData
from fedxmodal.engine.base import seed_everything
from fedxmodal.engine.supervised import TrainConfig
from fedxmodal.methods import METHODS, build_trainer
from fedxmodal.networks.domain_norm import MultiBranchBatchNorm2d, batchnorm_state_keys, set_branch
from fedxmodal.networks.unet import SegmentationUNet, UNetConfig

from conftest import blob_case

TINY = dict(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def _blob_slices(n_volumes=6, size=64):
    """(N, 1, size, size) z-scored CT-like slices with two boxes, (N, size, size) labels."""
    imgs, labs = [], []
    for s in range(n_volumes):
        img, lab = blob_case(seed=s, shape=(size, size, 4))
        imgs.append(torch.as_tensor(img).permute(2, 0, 1)[:, None].float())
        labs.append(torch.as_tensor(lab).permute(2, 0, 1))
    x = torch.cat(imgs)
    return (x - x.mean()) / x.std(), torch.cat(labs).long()


def _engine(method, regime="centralized", n_domains=2, domains=("a", "b"), **train):
    seed_everything(0)
    net = UNetConfig(**TINY, **METHODS[method].network_overrides(regime, n_domains))
    return build_trainer(("liver", "spleen"), network=net, domains=domains,
                         train=TrainConfig(method=method, batch_size=8, lr=3e-3, **{"amp": False, **train}))


# the supervised grid's methods (apps/compare.py): labelled and federated
@pytest.mark.parametrize("method", [m for m, c in METHODS.items() if c.needs_labels and "federated" in c.regimes])
def test_every_method_trains_through_the_engine(method):
    x, y = _blob_slices(2)
    domains = torch.tensor([0] * (len(x) // 2) + [1] * (len(x) - len(x) // 2))
    engine = _engine(method)
    engine.method.prepare([x[domains == 0], x[domains == 1]])
    before = {k: v.clone() for k, v in engine.get_weights().items()}
    out = engine.fit(SliceData(x, y, domains), epochs=1)
    assert np.isfinite(out["loss"]) and out["steps"] >= 1
    assert any(not torch.equal(before[k], v) for k, v in engine.get_weights().items())
    probs = engine.predict_slices(x[:3])
    assert probs.shape == (3, 3, 64, 64)
    assert torch.allclose(probs.sum(1), torch.ones(3, 64, 64), atol=1e-4)


def test_dsbn_gives_each_site_its_own_batchnorm_branch():
    x, y = _blob_slices(2)
    half = len(x) // 2
    x = torch.cat([x[:half], -3 * x[half:] + 1])  # domain 1: another "modality"
    domains = torch.tensor([0] * half + [1] * (len(x) - half))
    engine = _engine("dsbn")
    assert len([m for m in engine.model.modules() if isinstance(m, MultiBranchBatchNorm2d)]) > 0
    engine.fit(SliceData(x, y, domains), epochs=2)
    first = next(m for m in engine.model.modules() if isinstance(m, MultiBranchBatchNorm2d))
    # each branch saw only its own domain's slices
    assert not torch.allclose(first.branches[0].running_mean, first.branches[1].running_mean)
    # a known site is run through its own branch
    for d in (0, 1):
        set_branch(engine.model, d)
        engine.model.eval()
        with torch.no_grad():
            expected = torch.softmax(engine.model(x[:2]), 1)
        assert torch.allclose(engine.predict_slices(x[:2], domain=d), expected, atol=1e-5)
    assert not torch.allclose(engine.predict_slices(x[:2], domain=0), engine.predict_slices(x[:2], domain=1))


def test_dualnorm_picks_the_branch_by_batchnorm_statistics(monkeypatch):
    """Through the method's own inference path (its input scaling, then the rule): slices of the
    training distribution go to branch 0, their intensity inversions to branch 1."""
    from fedxmodal.methods import dualnorm as methods

    x, y = _blob_slices(6)
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    engine = _engine("dualnorm")
    for _ in range(5):
        engine.fit(SliceData(x, y), epochs=1)
    chosen = []
    select = methods.select_branches
    monkeypatch.setattr(methods, "select_branches", lambda m, imgs: chosen.append(select(m, imgs)) or chosen[-1])
    engine.predict_slices(x)
    engine.predict_slices(-x)
    source_like, inverted = (c.float().mean() for c in chosen)  # fraction routed to branch 1
    assert source_like < 0.2, source_like
    assert inverted > 0.8, inverted


def test_fedbn_aggregator_leaves_batchnorm_out_of_the_average():
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedxmodal.methods.dsbn.aggregator import FedBNAggregator

    net = SegmentationUNet(2, **TINY)
    bn = batchnorm_state_keys(net)
    sites = []
    for s, weight in ((1, 3), (2, 1)):
        torch.manual_seed(s)
        params = {k: torch.randn_like(v.float()) for k, v in net.state_dict().items()}
        sites.append((params, weight))
    agg = FedBNAggregator()
    for params, weight in sites:
        agg.accept_model(FLModel(params=params, params_type=ParamsType.FULL,
                                 meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: weight}))
    out = agg.aggregate_model().params
    assert bn and not (set(out) & bn), "BatchNorm tensors must stay out of the aggregate"
    assert set(out) == set(net.state_dict()) - bn
    key = next(k for k in out if k.endswith("conv.weight"))
    expected = (3 * sites[0][0][key] + sites[1][0][key]) / 4
    np.testing.assert_allclose(out[key], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_fedbn_sites_keep_their_own_batchnorm_after_a_round():
    """One FedAvg round with two sites of different modality, through the sites' FedBN weight
    access, FedBNAggregator and the server's partial-update merge: after the round both sites
    hold the same shared weights but their own, different BatchNorm statistics."""
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedxmodal.methods.dsbn.aggregator import FedBNAggregator
    from fedxmodal.methods.dsbn.site import FedBNSiteParts
    from fedxmodal.fl.server import merge_partial_update

    x, y = _blob_slices(2)
    data = {"ct": x, "mr": -2 * x + 0.5}
    global_model = {k: v.clone() for k, v in SegmentationUNet(2, **TINY).state_dict().items()}
    engines = {s: _engine("dsbn", regime="federated", n_domains=1, domains=()) for s in data}
    access = {s: FedBNSiteParts(e, data[s], s).weight_access() for s, e in engines.items()}
    bn = batchnorm_state_keys(engines["ct"].model)
    agg = FedBNAggregator()
    for s, (get_w, set_w) in access.items():
        set_w(global_model)
        engines[s].fit(SliceData(data[s], y), epochs=1)
        sent = get_w()
        assert not (set(sent) & bn), "a FedBN site never sends its BatchNorm tensors"
        agg.accept_model(FLModel(params=sent, params_type=ParamsType.FULL,
                                 meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: len(x)}))
    new_global = merge_partial_update(global_model, agg.aggregate_model().params)
    assert set(new_global) == set(global_model)
    for k in bn:
        assert torch.equal(torch.as_tensor(new_global[k]), global_model[k])  # BN left as it was
    local_bn = {s: {k: v.clone() for k, v in engines[s].get_weights().items() if k in bn} for s in data}
    for s, (_, set_w) in access.items():
        set_w({k: torch.as_tensor(v) for k, v in new_global.items()})
    w_ct, w_mr = engines["ct"].get_weights(), engines["mr"].get_weights()
    shared = [k for k in w_ct if k not in bn]
    assert all(torch.allclose(w_ct[k].float(), w_mr[k].float()) for k in shared)
    running = [k for k in bn if k.endswith("running_mean")]
    assert any(not torch.allclose(w_ct[k], w_mr[k]) for k in running), "sites' BN statistics must differ"
    for s, eng in engines.items():  # and each site still has exactly its own
        w = eng.get_weights()
        assert all(torch.equal(w[k], local_bn[s][k]) for k in bn)


def test_feddg_centralized_bank_draws_only_other_domains():
    method = METHODS["feddg_amp"](ratio=0.1)
    torch.manual_seed(0)
    ct = torch.randn(8, 1, 32, 32)
    mr = 5 * torch.randn(8, 1, 32, 32)
    method.prepare([ct, mr])
    assert method.bank.shape == (16, 1, 7, 7) and method.bank_domains.tolist() == [0] * 8 + [1] * 8
    # lam = 1: the low-frequency amplitude square becomes a bank entry; with domains, it must be
    # the OTHER domain's (MR amplitudes are ~5x the CT ones).
    method.lam_range = (1.0, 1.0)
    from fedxmodal.transforms.frequency import low_freq_amplitude

    out = method.augment(ct, domains=torch.zeros(8, dtype=torch.long))
    got = low_freq_amplitude(out, ratio=0.1)
    mr_bank = method.bank[8:]
    for a in got:
        assert any(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for b in mr_bank)
    one_site = METHODS["feddg_amp"]()
    one_site.prepare([ct])
    assert one_site.bank is None and torch.equal(one_site.augment(ct), ct)  # no other domain: plain
