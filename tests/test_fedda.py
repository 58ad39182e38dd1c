"""FedDA (arXiv 2509.23907) and FedProx: the adversarial trainer's two steps each change only what they
should, the reference encoder gets no gradient, the ring schedule, the shared discriminator
averaged apart from the model, a site's payload handling, the output guard of a cyclic job, and
(slow) the cyclic workflow in the simulator with 3 sites plus the joint and cyclic jobs on a tiny
phantom (global model, best model, cross-site results)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedxmodal.engine.base import SliceData
from fedxmodal.engine.adversarial import AdversarialConfig, AdversarialTrainer
from fedxmodal.engine.base import seed_everything
from fedxmodal.engine.supervised import TrainConfig
from fedxmodal.methods import build_trainer, load_trainer
from fedxmodal.methods.fedda import DISC_PREFIX, PEER_PREFIX, FedDACyclicMethod, FedDAMethod, ring_peers
from fedxmodal.networks.unet import UNetConfig, build_unet, encoder_features, encoder_parameter_names, encoder_taps

REPO = Path(__file__).resolve().parents[1]
TINY = UNetConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
STRUCTURES = ("liver", "spleen")


def _batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, 3, (n, size, size), generator=g)


def _trainer(method="fedda", **method_args):
    seed_everything(0)
    return build_trainer(STRUCTURES, network=TINY, train=TrainConfig(
        method=method, batch_size=8, weight_decay=0.0, spatial_augment=False, method_args=method_args))


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# ------------------------------------------------------------------ the network's taps
def test_the_bottleneck_is_monais_innermost_block_and_the_encoder_its_path():
    net = build_unet(2, TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    seen = []
    encoder_taps(net)[0].register_forward_hook(lambda m, i, o: seen.append(o))
    net(x)
    assert torch.allclose(encoder_features(net, x)[0], seen[0])  # the encoder-only pass = the hooked tap
    assert seen[0].shape == (2, 32, 8, 8)  # channels[-1] on the coarsest grid
    enc = encoder_parameter_names(net)
    assert enc and all(not k.startswith("model.2.") for k in enc)  # the top up-block is decoder
    assert "model.0.conv.unit0.conv.weight" in enc  # the first down-block is encoder


# ------------------------------------------------------------------ the two steps
class _AdversarialOnly(FedDAMethod):
    """A zero segmentation loss: whatever moves in the segmentation step is moved by the adversarial term."""

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        return (model(images) * 0.0).sum(), {}


def test_each_step_changes_only_what_it_should_and_the_reference_gets_no_gradient():
    seed_everything(0)
    tc = TrainConfig(method="fedda", batch_size=8, weight_decay=0.0, spatial_augment=False)
    trainer = AdversarialTrainer(STRUCTURES, _AdversarialOnly(adv_weight=1.0, ramp="constant"), network=TINY, train=tc)
    other = build_unet(2, TINY)  # a different reference network
    trainer.set_reference(other.state_dict())
    ref0, model0, disc0 = _params(trainer.reference), _params(trainer.model), _params(trainer.discriminator)
    after = {}
    step = trainer.optimizer_step

    def record(loss, name):
        step(loss, name)
        after[name] = (_params(trainer.model), _params(trainer.discriminator),
                       [p.grad for p in trainer.discriminator.parameters()])

    trainer.optimizer_step = record
    x, y = _batch()
    logs = trainer.train_step(x, y, None, lam=1.0)
    assert logs["loss_adv"] > 0 and "disc_acc" in logs

    model1, disc1, disc_grads = after["model"]
    enc = encoder_parameter_names(trainer.model)
    moved = {k for k in model0 if not torch.equal(model0[k], model1[k])}
    assert moved and moved <= enc, sorted(moved - enc)  # the adversarial term reaches the encoder only
    assert all(torch.equal(disc0[k], disc1[k]) for k in disc0)  # the discriminator frozen
    assert all(g is None for g in disc_grads)

    model2, disc2, _ = after["discriminator"]
    assert all(torch.equal(model1[k], model2[k]) for k in model1)  # the encoder frozen in the D step
    assert any(not torch.equal(disc1[k], disc2[k]) for k in disc1)  # the discriminator learns
    assert all(p.grad is None and not p.requires_grad for p in trainer.reference.parameters())
    assert all(torch.equal(ref0[k], v) for k, v in _params(trainer.reference).items())
    assert trainer.reference.training  # batch statistics


def test_ramp_plan_and_domain_mode():
    cfg = AdversarialConfig(weight=0.01)
    assert cfg.weight_at(0.0) == 0.0 and cfg.weight_at(1.0) == pytest.approx(0.01, rel=1e-3)
    assert 0 < cfg.weight_at(0.1) < cfg.weight_at(0.5) < 0.01
    assert AdversarialConfig(weight=0.01, ramp="constant").weight_at(0.0) == 0.01
    trainer = _trainer(adv_weight=0.01)
    trainer.plan(10, epochs_done=5)
    assert trainer.progress(0, 4) == 0.5 and trainer.progress(2, 4) == 0.55
    x, y = _batch(16)
    # no reference, two pooled domains: the domains are aligned with each other (centralized)
    out = trainer.fit(SliceData(x, y, torch.tensor([0] * 8 + [1] * 8)), epochs=1)
    assert {"loss_seg", "loss_adv", "loss_disc", "disc_acc"} <= set(out["means"])
    out = trainer.fit(SliceData(x, y), epochs=1)  # one domain, no reference: no adversarial step
    assert "loss_disc" not in out["means"]


def test_checkpoint_keeps_the_discriminator(tmp_path):
    trainer = _trainer("fedda_gin", aux_tap=True)
    assert len(trainer.discriminator) == 2  # bottleneck + the shallower tap
    trainer.set_reference(trainer.get_weights())
    x, y = _batch(16)
    trainer.fit(SliceData(x, y), epochs=1)
    loaded = load_trainer(trainer.save(tmp_path / "m.pt"))
    assert isinstance(loaded, AdversarialTrainer) and loaded.method.name == "fedda_gin"
    for k, v in trainer.discriminator_weights().items():
        assert torch.equal(loaded.discriminator_weights()[k], v)


# ------------------------------------------------------------------ server side
def test_ring_schedule():
    assert ring_peers(["a", "b", "c"], 0) == {"a": None, "b": None, "c": None}  # round 0: joint
    for n in (2, 3, 5):
        sites = [f"s{i}" for i in range(n)]
        met = {s: set() for s in sites}
        for rnd in range(1, n):
            peers = ring_peers(sites, rnd)
            assert all(p != s for s, p in peers.items())
            for s, p in peers.items():
                met[s].add(p)
        assert all(met[s] == set(sites) - {s} for s in sites)  # everyone met everyone in N - 1 rounds
    assert ring_peers(["a", "b"], 1, available={"a": {}}) == {"a": None, "b": "a"}  # no model of b yet


def _fl_model(params, site, n):
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    return FLModel(params=params, params_type=ParamsType.FULL, meta={"client_name": site, "NUM_STEPS_CURRENT_ROUND": n})


def test_shared_discriminator_is_averaged_apart_from_the_model():
    from nvflare.app_common.abstract.fl_model import FLModel

    from fedxmodal.methods.fedda.workflow import FedDAPayloads

    payloads = FedDAPayloads(cyclic=True, share_discriminator=True)
    glob = {"w": np.zeros(3, np.float32)}
    out = payloads.payloads(0, ["a", "b"], FLModel(params=glob, current_round=0))
    assert set(out["a"].params) == {"w"} and "peer_site" not in out["a"].meta  # round 0: joint, no D yet
    ra = _fl_model({"w": np.ones(3, np.float32), DISC_PREFIX + "0.x": np.full(2, 4.0, np.float32)}, "a", 3)
    rb = _fl_model({"w": np.full(3, 2.0, np.float32), DISC_PREFIX + "0.x": np.zeros(2, np.float32)}, "b", 1)
    for r in (ra, rb):
        assert not any(k.startswith(DISC_PREFIX) for k in payloads.accept(r).params)  # FedAvg sees the model only
    payloads.round_done(0, FLModel(params=glob))
    assert np.allclose(payloads.discriminator[DISC_PREFIX + "0.x"], 3.0)  # (3 * 4 + 1 * 0) / 4
    out = payloads.payloads(1, ["a", "b"], FLModel(params=glob, current_round=1))
    assert out["a"].meta["peer_site"] == "b" and np.allclose(out["a"].params[PEER_PREFIX + "w"], 2.0)
    assert np.allclose(out["b"].params[PEER_PREFIX + "w"], 1.0)
    assert np.allclose(out["a"].params[DISC_PREFIX + "0.x"], 3.0)
    stray = _fl_model({"w": np.ones(3, np.float32), PEER_PREFIX + "w": np.ones(3, np.float32)}, "a", 1)
    assert set(payloads.accept(stray).params) == {"w"}  # peer weights never go on


def test_server_parts_and_guard_declarations():
    assert FedDAMethod.server_parts(2).site_payloads is None  # joint, local D: plain FedAvg
    shared = FedDAMethod.server_parts(2, {"share_discriminator": True}).site_payloads
    assert shared["args"] == {"cyclic": False, "share_discriminator": True}
    assert FedDACyclicMethod.server_parts(2).site_payloads["args"]["cyclic"] is True
    model = {"args": {"channels": [16, 32, 64, 128]}}
    assert FedDACyclicMethod.guard_declarations(128, {}, model) == {}
    shapes = FedDAMethod.guard_declarations(128, {"share_discriminator": True}, model)["expected_shapes"]
    assert shapes[DISC_PREFIX + "0.net.0.weight"] == [32, 128, 3, 3]


# ------------------------------------------------------------------ site side
class _Info:
    def __init__(self, rnd):
        self.current_round, self.total_rounds = rnd, 4


def test_site_takes_the_peer_as_reference_and_keeps_its_discriminator(tmp_path):
    from nvflare.app_common.abstract.fl_model import FLModel

    from fedxmodal.methods.fedda.site import FedDASiteParts

    trainer = _trainer("fedda_cyclic")
    x, y = _batch(8)
    parts = FedDASiteParts(trainer, x, "ct-site", state_dir=tmp_path)
    get_w, set_w = parts.weight_access()
    glob = trainer.get_weights()
    peer = {k: v + 1.0 if v.is_floating_point() else v for k, v in glob.items()}
    model = FLModel(params={**glob, **{PEER_PREFIX + k: v for k, v in peer.items()}}, meta={"peer_site": "mr-site"})
    parts.on_task("train", model)
    assert set(model.params) == set(glob)  # the peer's weights are taken out before loading
    set_w(model.params)
    parts.before_training(_Info(1))
    assert torch.equal(trainer.reference.state_dict()["model.0.conv.unit0.conv.weight"],
                       peer["model.0.conv.unit0.conv.weight"])
    res = trainer.fit(SliceData(x, y), epochs=1)
    extra = parts.after_training(_Info(1), res)
    assert {"loss_adv", "loss_disc", "disc_acc"} <= set(extra) and trainer.reference is None
    assert set(get_w()) == set(glob)  # a local discriminator never leaves
    saved = trainer.discriminator_weights()
    # a resumed job: a new site process at round 2 takes the discriminator saved after round 1
    fresh = _trainer("fedda_cyclic")
    fresh_parts = FedDASiteParts(fresh, x, "ct-site", state_dir=tmp_path)
    fresh_parts.on_task("train", FLModel(params=dict(glob)))
    fresh_parts.weight_access()[1](glob)
    fresh_parts.before_training(_Info(2))
    assert all(torch.equal(fresh.discriminator_weights()[k], v) for k, v in saved.items())
    assert torch.equal(fresh.reference.state_dict()["model.0.conv.unit0.conv.weight"],
                       glob["model.0.conv.unit0.conv.weight"])  # no peer this time: the global model


def test_fedprox_uses_nvflares_contract_and_loss():
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.utils.fedprox_utils import set_fedprox_metadata
    from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

    from fedxmodal.methods import METHODS
    from fedxmodal.methods.fedprox.site import FedProxSiteParts

    assert METHODS["fedprox"].server_parts(2, {"mu": 0.1}).fedavg_args == {"fedprox_mu": 0.1}
    trainer = _trainer("fedprox")
    x, y = _batch(8)
    parts = FedProxSiteParts(trainer, x, "ct-site")
    model = FLModel(params=trainer.get_weights())
    set_fedprox_metadata(model, 0.1)
    parts.on_task("train", model)
    parts.before_training(_Info(0))
    assert isinstance(trainer.method.proximal, PTFedProxLoss) and trainer.method.proximal.mu == 0.1
    _, logs = trainer.method.training_loss(trainer.model, x, y, trainer.seg_loss)
    assert logs["loss_prox"] == 0.0  # at the received weights
    trainer.fit(SliceData(x, y), epochs=1)
    _, logs = trainer.method.training_loss(trainer.model, x, y, trainer.seg_loss)
    assert logs["loss_prox"] > 0.0
    parts.after_training(_Info(0), {})
    with pytest.raises(ValueError, match="fedprox_mu"):  # a job whose server sends no coefficient
        parts.on_task("train", FLModel(params={}))


# ------------------------------------------------------------------ the output guard of the jobs
def _job_guard(spec_name, tmp_path, **method_args):
    from fedxmodal.recipes.export import export_job, load_spec
    from fedxmodal.utils import instantiate

    spec = load_spec(REPO / "jobs" / "specs" / f"{spec_name}.json")
    spec["client_args"]["train"]["method_args"].update(method_args)
    job = export_job(tmp_path, spec)
    cfg = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    chain = next(f for f in cfg["task_result_filters"] if f["tasks"] == ["train"])["filters"]
    return instantiate(chain[-1]), spec["model"]


def _train_result(params):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    return DXO(DataKind.WEIGHTS, data=params, meta={MetaKey.INITIAL_METRICS: {"dice": 0.5},
                                                    MetaKey.NUM_STEPS_CURRENT_ROUND: 10}).to_shareable()


def test_guard_refuses_a_cyclic_payload_with_an_undeclared_tensor(tmp_path):
    from fedxmodal.fl.guard import OutputGuard, OutputRefused
    from fedxmodal.utils import instantiate

    guard, model_spec = _job_guard("fedda_cyclic", tmp_path / "c")
    assert isinstance(guard, OutputGuard)
    weights = {k: v.numpy().copy() for k, v in instantiate(model_spec).state_dict().items()}
    guard.check("train", _train_result(weights))  # the model's weights leave
    key = "model.0.conv.unit0.conv.weight"
    for extra in ({PEER_PREFIX + key: weights[key]},  # the peer's model sent back on
                  {"leaked_slice": np.zeros((1, 128, 128), np.float32)},
                  {DISC_PREFIX + "0.net.0.weight": np.zeros((32, 128, 3, 3), np.float32)}):  # D is local here
        with pytest.raises(OutputRefused, match="undeclared entry"):
            guard.check("train", _train_result({**weights, **extra}))
    shared, _ = _job_guard("fedda", tmp_path / "s", share_discriminator=True)
    shared.check("train", _train_result({**weights, DISC_PREFIX + "0.net.0.weight": np.zeros((32, 128, 3, 3), np.float32)}))
    with pytest.raises(OutputRefused, match="shape"):
        shared.check("train", _train_result({**weights, DISC_PREFIX + "0.net.0.weight": np.zeros((1, 128, 3, 3), np.float32)}))


# ------------------------------------------------------------------ jobs and compare
@pytest.mark.parametrize("name", ["fedda", "fedda_cyclic"])
def test_committed_fedda_jobs_are_in_sync(tmp_path, name):
    """jobs/<name>/ is generated from jobs/specs/<name>.json; if this fails:
    python -m fedxmodal.recipes.export jobs/specs/<name>.json --export-dir jobs"""
    from fedxmodal.recipes.export import compare_job_dirs, export_job, load_spec

    fresh = export_job(tmp_path, load_spec(REPO / "jobs" / "specs" / f"{name}.json"))
    diffs = [d for d in compare_job_dirs(fresh, REPO / "jobs" / name) if "app/custom/" not in d]
    assert diffs == [], diffs[:20]
    meta = json.loads((REPO / "jobs" / name / "meta.json").read_text())
    assert meta["resource_spec"] == {"@default": {"num_of_gpus": 1}}
    server = json.loads((REPO / "jobs" / name / "app" / "config" / "config_fed_server.json").read_text())
    payloads = next(w for w in server["workflows"] if w["id"] == "fedavg")["args"].get("site_payloads")
    assert (payloads is not None) == (name == "fedda_cyclic")


def test_compare_cells_of_the_new_methods():
    from fedxmodal.apps.grid import applicable, grid_cells

    assert [applicable("fedda", r) for r in ("local", "centralized", "federated")] == [False, True, True]
    assert [applicable("fedda_cyclic", r) for r in ("local", "centralized", "federated")] == [False, False, True]
    assert [applicable("fedprox", r) for r in ("local", "centralized", "federated")] == [False, False, True]
    assert grid_cells(["fedda", "none"], ["ct-site", "mr-site"], ("federated",)) == [("fedda", "federated"),
                                                                                  ("none", "federated")]
    assert len(grid_cells(["none"], ["ct-site", "mr-site"])) == 4  # local x 2, centralized, federated


# ------------------------------------------------------------------ NVFlare simulator (slow)
@pytest.mark.slow
def test_cyclic_workflow_in_the_simulator_with_three_sites(tmp_path):
    """3 toy sites, 3 rounds: every cyclic payload holds a peer that is not the site, each site meets
    a different peer in rounds 1 and 2, the peer's weights are what that peer returned the round
    before, and each new global model is the FedAvg (weighted by slices) of the returned weights."""
    from fedxmodal.deploy.simulator import run_simulator
    from fedxmodal.recipes.export import export_job, load_spec

    sites = {"site-a": 40, "site-b": 24, "site-c": 32}
    for s, n in sites.items():
        (tmp_path / "data" / s).mkdir(parents=True)
        (tmp_path / "data" / s / "dataset.json").write_text(json.dumps(
            {"name": s, "modality": "CT", "toy": {"n_training": n, "n_validation": 8, "n_test": 8}}))
    spec = load_spec(REPO / "tests" / "fl_toy" / "toy_job.json")
    spec.update(name="cyclic_toy", client_script=str(REPO / "tests" / "fl_toy" / "cyclic_client.py"), num_rounds=3,
                min_clients=3, cross_site_eval=False)
    spec["client_args"] = {**spec["client_args"], "method": "fedda_cyclic"}
    job = export_job(tmp_path / "jobs", spec)
    events = tmp_path / "events"
    events.mkdir()
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(tmp_path / "data"), "FEDXMODAL_TOY_EVENTS": str(events),
           "FEDXMODAL_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    run_simulator(job, tmp_path / "ws", env, tmp_path / "sim.log", 3, list(sites), timeout=600, echo=False)
    load = lambda s, r, what: torch.load(events / f"{s}_r{r}_{what}.pt", weights_only=False)  # noqa: E731
    peers = {r: {s: load(s, r, "received")["peer_site"] for s in sites} for r in range(3)}
    assert peers[0] == {s: None for s in sites}  # round 0: joint
    for r in (1, 2):
        assert all(p is not None and p != s for s, p in peers[r].items()), peers
        for s, p in peers[r].items():  # the peer's weights = what it sent the round before
            got = load(s, r, "received")["peer"]
            assert all(torch.allclose(got[k].float(), v.float()) for k, v in load(p, r - 1, "sent").items())
    assert all(peers[1][s] != peers[2][s] for s in sites)
    total = sum(sites.values())
    for r in (1, 2):  # the global model a site receives = FedAvg of the previous round's returned weights
        sent = {s: load(s, r - 1, "sent") for s in sites}
        glob = load("site-a", r, "received")["glob"]
        for k, v in glob.items():
            avg = sum(sites[s] * sent[s][k].double() for s in sites) / total
            assert torch.allclose(v.double(), avg, atol=1e-5), k
    final = torch.load(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt",
                       weights_only=False)["model"]
    sent = {s: load(s, 2, "sent") for s in sites}
    assert set(final) == set(sent["site-a"])  # no peer or discriminator key in the global model
    for k, v in final.items():
        avg = sum(sites[s] * sent[s][k].double() for s in sites) / total
        assert torch.allclose(torch.as_tensor(v).double(), avg, atol=1e-5), k


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from fedxmodal.data.phantom import write_phantom_federation

    root = tmp_path_factory.mktemp("fedda_phantom")
    write_phantom_federation(root / "data", seed=0, task="abdomen", n_train=2, n_val=1, n_test=1, progress=False)
    return root


def _run_phantom_job(phantom, spec_name, **method_args):
    from fedxmodal.deploy.simulator import run_simulator
    from fedxmodal.recipes.export import export_job, load_spec

    spec = load_spec(REPO / "jobs" / "specs" / f"{spec_name}.json")
    spec["num_rounds"] = 2
    spec["client_args"].update(local_epochs=1)
    spec["client_args"]["preprocess"]["size"] = 64
    spec["client_args"]["train"].update(batch_size=8)
    spec["client_args"]["train"]["method_args"].update(method_args)
    out = phantom / spec_name
    job = export_job(out / "jobs", spec)
    env = {**os.environ, "FEDXMODAL_DATA_ROOT": str(phantom / "data"), "FEDXMODAL_CHECKPOINT_DIR": str(out / "ckpt"),
           "FEDXMODAL_SITE_STATE_DIR": str(out / "site_state"), "PYTHONUNBUFFERED": "1"}
    run_simulator(job, out / "ws", env, out / "sim.log", 2, ["ct-site", "mr-site"], timeout=900, echo=False)
    return out / "ws" / "server" / "simulate_job", (out / "sim.log").read_text(), out


@pytest.mark.slow
@pytest.mark.parametrize("spec_name,method_args", [("fedda", {"share_discriminator": True}), ("fedda_cyclic", {})])
def test_joint_and_cyclic_jobs_on_a_tiny_phantom(phantom, spec_name, method_args):
    from fedxmodal.networks.unet import SegmentationUNet

    run, log, out = _run_phantom_job(phantom, spec_name, **method_args)
    for f in ("FL_global_model.pt", "best_FL_global_model.pt"):
        weights = torch.load(run / "app_server" / f, weights_only=False)["model"]
        assert set(weights) == set(SegmentationUNet(n_structures=6).state_dict())  # the model only
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    for site in ("ct-site", "mr-site"):
        assert set(cse[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "ct-site", "mr-site"}
        assert all(0.0 <= m["dice"] <= 1.0 for m in cse[site].values())
    assert "OUTPUT GUARD REFUSED" not in log
    if spec_name == "fedda_cyclic":
        assert "reference encoder = peer mr-site's local model" in log and "ct-site <- global model + mr-site" in log
        assert "reference encoder = the received global model" in log  # round 0
    else:
        assert "discriminator averaged over 2 sites" in log and "took the averaged discriminator" in log
    assert any((out / "site_state" / s).glob("fedda-*.pt") for s in ("ct-site", "mr-site"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb_events" / "ct-site"))
    acc.Reload()
    assert {"train/loss_seg", "train/loss_adv", "train/loss_disc", "train/disc_acc"} <= set(acc.Tags()["scalars"])
