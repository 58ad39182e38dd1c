"""What leaves a site: the Gaussian DP filter, the output guard, quantization, their wiring into
the job, and (slow) a site that tries to send an image-shaped tensor in the real simulator."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedxmodal.fl.analytics import GuardedConvertToFedEvent
from fedxmodal.fl.dp import GaussianDPFilter, gaussian_dp_epsilon
from fedxmodal.fl.guard import OutputGuard
from fedxmodal.fl.quantization import ModelDequantizer, ModelQuantizer
from fedxmodal.fl.refusal import REFUSED_HEADER, RefusedResultLogger
from fedxmodal.recipes.export import build_job, export_job, load_spec
from fedxmodal.recipes.filters import add_result_filters

REPO = Path(__file__).resolve().parents[1]
FEDGIN_SPEC = REPO / "jobs" / "specs" / "fedgin.json"
TOY_SPEC = REPO / "tests" / "fl_toy" / "toy_job.json"
SITES = {"ct-site": ("CT", 64), "mr-site": ("MR", 40)}


@pytest.fixture(scope="module")
def model_spec():
    return load_spec(FEDGIN_SPEC)["model"]


@pytest.fixture(scope="module")
def state(model_spec):
    from fedxmodal.utils import instantiate

    return {k: v.numpy().copy() for k, v in instantiate(model_spec).state_dict().items()}


@pytest.fixture(scope="module")
def guard(model_spec):
    return OutputGuard(model=model_spec, metrics=["dice", "dice_[a-z_]+", "n_volumes"])


def ctx(task="train", site="ct-site"):
    c = FLContext()
    c.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    c.set_prop(FLContextKey.CLIENT_NAME, site, private=False, sticky=False)
    return c


def result(data, kind=DataKind.WEIGHT_DIFF, meta=None, current_round=0):
    s = DXO(kind, data=data, meta=dict(meta or {})).to_shareable()
    if current_round is not None:
        s.set_header("current_round", current_round)
    return s


def train_result(params, kind=DataKind.WEIGHT_DIFF):
    return result(params, kind, meta={MetaKey.INITIAL_METRICS: {"dice": 0.5, "dice_liver": 0.7, "n_volumes": 2.0},
                                      MetaKey.NUM_STEPS_CURRENT_ROUND: 181})


def refused(reply: Shareable) -> str:
    assert reply.get_return_code() == ReturnCode.EXECUTION_RESULT_ERROR
    assert "DXO" not in reply, "a refused result must carry nothing of the payload"
    return reply.get_header(REFUSED_HEADER)


# ------------------------------------------------------------------ Gaussian DP
def test_dp_clips_the_update_norm_to_clip_norm():
    rng = np.random.default_rng(0)
    big = {"a.weight": rng.normal(size=(64, 32)).astype(np.float32), "b.bias": rng.normal(size=(300,)).astype(np.float32)}
    f = GaussianDPFilter(clip_norm=2.0, noise_multiplier=0.0, seed=0)
    out = f.privatize(big, f.rng("s", 0))
    norm_in = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in big.values()))
    norm_out = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in out.values()))
    assert norm_in > 10 and norm_out == pytest.approx(2.0, rel=1e-5)
    assert np.allclose(out["a.weight"] * norm_in / 2.0, big["a.weight"], rtol=1e-4)  # scaled, not reshaped
    small = {"a.weight": np.full((4,), 0.1, np.float32)}  # norm 0.2 < C: untouched
    assert np.array_equal(f.privatize(small, f.rng("s", 0))["a.weight"], small["a.weight"])


def test_dp_noise_std_is_sigma_times_clip():
    f = GaussianDPFilter(clip_norm=2.0, noise_multiplier=0.5, seed=1)
    out = f.privatize({"w": np.zeros(400_000, np.float32)}, f.rng("ct-site", 3))["w"]
    assert out.dtype == np.float32
    assert float(np.std(out)) == pytest.approx(1.0, rel=0.01)
    assert abs(float(np.mean(out))) < 0.01


def test_dp_is_reproducible_with_a_seed_and_fresh_without():
    upd = {"w": np.ones(1000, np.float32) * 1e-3}
    f = GaussianDPFilter(clip_norm=1.0, noise_multiplier=0.1, seed=7)
    a = f.privatize(upd, f.rng("ct-site", 2))["w"]
    assert np.array_equal(a, f.privatize(upd, f.rng("ct-site", 2))["w"])
    assert not np.array_equal(a, f.privatize(upd, f.rng("ct-site", 3))["w"])  # another round
    assert not np.array_equal(a, f.privatize(upd, f.rng("mr-site", 2))["w"])  # another site
    g = GaussianDPFilter(clip_norm=1.0, noise_multiplier=0.1, seed=None)
    assert not np.array_equal(g.privatize(upd, g.rng("s", 2))["w"], g.privatize(upd, g.rng("s", 2))["w"])


def test_dp_leaves_excluded_tensors_untouched_and_out_of_the_norm(state):
    upd = {k: (v * 0 + 0.01 if v.dtype.kind == "f" else v) for k, v in state.items()}
    bn = "model.0.conv.unit0.adn.N.running_var"
    upd[bn] = np.full_like(state[bn], 1e4)  # huge, but excluded: must not cause clipping
    f = GaussianDPFilter(clip_norm=100.0, noise_multiplier=0.01, seed=0)
    s = f.privatize(upd, f.rng("s", 0))
    assert f.last_stats["factor"] == 1.0
    for k in upd:
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert np.array_equal(s[k], upd[k]) and s[k].dtype == upd[k].dtype, k
    assert not np.array_equal(s["model.0.conv.unit0.conv.weight"], upd["model.0.conv.unit0.conv.weight"])
    assert any(k.endswith("num_batches_tracked") for k in f.last_stats["excluded"])


def test_dp_filter_in_the_result_chain(state):
    f = GaussianDPFilter(clip_norm=1.0, noise_multiplier=0.01, seed=0)
    out = from_shareable(f.process(train_result({k: v * 0.01 for k, v in state.items()}), ctx()))
    assert out.data_kind == DataKind.WEIGHT_DIFF and set(out.data) == set(state)
    assert out.get_meta_prop(MetaKey.INITIAL_METRICS)["dice"] == 0.5
    # full local weights (cross-site evaluation's submit_model) would bypass the mechanism: refused
    reason = refused(f.process(result(dict(state), DataKind.WEIGHTS, current_round=None), ctx("submit_model")))
    assert "full local weights" in reason


def test_dp_epsilon_uses_zcdp_composition():
    rho = 10 * 2.0**2 / (2 * 1.0**2)
    assert gaussian_dp_epsilon(1.0, 10, 1e-5) == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e5)))
    assert gaussian_dp_epsilon(10.0, 10) < gaussian_dp_epsilon(1.0, 10) < gaussian_dp_epsilon(1.0, 30)
    assert gaussian_dp_epsilon(0.0, 1) == math.inf


# ------------------------------------------------------------------ output guard
def test_guard_accepts_the_declared_weights_diffs_and_metrics(guard, state):
    for kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
        s = train_result(dict(state), kind)
        assert guard.process(s, ctx()) is s
    partial = {k: v for k, v in state.items() if not k.startswith("model.0.")}  # ExcludeVars-style
    assert guard.process(train_result(partial), ctx()).get_return_code() == ReturnCode.OK
    val = result({"dice": 0.8, "dice_kidney_left": np.float32(0.7), "n_volumes": 3}, DataKind.METRICS)
    assert guard.process(val, ctx("validate")) is val
    assert guard.check("validate", val)["metrics"] == 3


@pytest.mark.parametrize("leak, expected", [
    ({"imagesTr_0": np.zeros((1, 128, 128), np.float32)}, "undeclared entry 'imagesTr_0' (float32 array of shape (1, 128, 128))"),
    ({"volume": np.zeros((128, 128, 40), np.int16)}, "undeclared entry 'volume' (int16 array of shape (128, 128, 40))"),
    ({"model.0.conv.unit0.conv.weight": np.zeros((16, 1, 128, 128), np.float32)}, "has shape (16, 1, 128, 128), declared (16, 1, 3, 3)"),
    ({"extra_bias": np.float32(0.0)}, "undeclared entry 'extra_bias'"),
    ({"model.0.conv.unit0.conv.bias": np.array(["x"] * 16)}, "is not numeric"),
])
def test_guard_refuses_what_the_job_does_not_declare(guard, state, caplog, leak, expected):
    with caplog.at_level(logging.ERROR):
        reply = guard.process(train_result({**state, **leak}), ctx(site="mr-site"))
    assert expected in refused(reply)
    assert "OUTPUT GUARD REFUSED the train result" in caplog.text and expected in caplog.text


@pytest.mark.parametrize("metrics, expected", [
    ({"dice": 0.5, "dice_per_volume": [0.1, 0.9]}, "'dice_per_volume' is not a scalar (list of length 2)"),
    ({"dice": np.zeros((128, 128, 40), np.float32)}, "'dice' is not a scalar (float32 array of shape (128, 128, 40))"),
    ({"dice": 0.5, "patient_id": 3.0}, "metric name 'patient_id' is not declared"),
    ({"dice": "0.5"}, "is not a scalar (str"),
])
def test_guard_refuses_non_scalar_or_undeclared_metrics(guard, state, metrics, expected):
    assert expected in refused(guard.process(result(metrics, DataKind.METRICS), ctx("validate")))
    with_train = result(dict(state), meta={MetaKey.INITIAL_METRICS: metrics})
    assert expected in refused(guard.process(with_train, ctx("train")))


def test_guard_refuses_extra_payloads_outside_the_params(guard, state):
    s = train_result(dict(state))
    dxo = from_shareable(s)
    dxo.set_meta_prop("thumbnail", np.zeros((1, 128, 128), np.float32))
    assert "undeclared meta entry 'thumbnail'" in refused(guard.process(dxo.update_shareable(s), ctx()))
    s = train_result(dict(state))
    s["side_channel"] = np.zeros((1, 128, 128), np.float32)
    assert "undeclared top-level entry 'side_channel'" in refused(guard.process(s, ctx()))
    s = train_result(dict(state))
    s.set_header("case_ids", "ct_000,ct_001")
    assert "undeclared header 'case_ids'" in refused(guard.process(s, ctx()))
    # metrics-only train result / tensors in a validate result / an undeclared task
    assert "may not send metrics only" in refused(guard.process(result({"dice": 0.5}, DataKind.METRICS), ctx()))
    assert "may not send tensors" in refused(guard.process(result(dict(state)), ctx("validate")))
    assert "task 'share_amplitudes' is not declared" in refused(guard.process(result({"amplitudes": np.zeros((4, 1, 25, 25))}),
                                                                                ctx("share_amplitudes")))


def test_guard_extra_tasks_are_declared_with_shapes(model_spec):
    g = OutputGuard(model=model_spec, extra_tasks={"share_amplitudes": {"params": {"amplitudes": [None, 1, 25, 25]}},
                                                   "receive_amplitudes": {"metrics": True}})
    ok = result({"amplitudes": np.zeros((8, 1, 25, 25), np.float32)}, DataKind.WEIGHTS)
    assert g.process(ok, ctx("share_amplitudes")) is ok
    bad = result({"amplitudes": np.zeros((8, 1, 128, 128), np.float32)}, DataKind.WEIGHTS)
    assert "declared (None, 1, 25, 25)" in refused(g.process(bad, ctx("share_amplitudes")))
    assert g.process(result({"n": 8}, DataKind.METRICS), ctx("receive_amplitudes")).get_return_code() == ReturnCode.OK


def test_guard_checks_quantized_payloads_after_decoding_a_copy(guard, state):
    for qtype in ("float16", "adaquant"):
        q = ModelQuantizer(qtype).process(train_result({k: v * 0.01 for k, v in state.items()}), ctx())
        assert guard.process(q, ctx()).get_return_code() == ReturnCode.OK, qtype
    leaky = {**{k: v * 0.01 for k, v in state.items()}, "image": np.ones((1, 128, 128), np.float32)}
    assert "undeclared entry 'image'" in refused(guard.process(ModelQuantizer("adaquant").process(train_result(leaky), ctx()), ctx()))
    # an image hidden in the encoded form of a declared tensor (adaquant: the decoded value comes
    # from the compressed state; the placeholder must stay a placeholder)
    q = ModelQuantizer("adaquant").process(train_result({k: v * 0.01 for k, v in state.items()}), ctx())
    dxo = from_shareable(q)
    placeholder = next(k for k, v in dxo.data.items() if v.dtype == np.bool_ and v.size == 1)  # compressed entry
    dxo.data[placeholder] = np.ones((1, 128, 128), np.float32)
    assert f"quantized {placeholder!r} takes 65" in refused(guard.process(dxo.update_shareable(q), ctx()))
    # quantization state hiding an extra entry
    q = ModelQuantizer("float16").process(train_result({k: v * 0.01 for k, v in state.items()}), ctx())
    dxo = from_shareable(q)
    dxo.meta["quant_state"]["model.0.conv.unit0.conv.weight"]["pixels"] = np.zeros((128, 128), np.float32)
    assert "unexpected quantization state" in refused(guard.process(dxo.update_shareable(q), ctx()))


def test_guard_catches_a_task_no_chain_covers(guard):
    """NVFlare applies a chain only to the task names it lists; the guard also checks, in place,
    the result of any other task after the filters ran (AFTER_TASK_RESULT_FILTER)."""
    from nvflare.apis.utils.task_utils import get_filters

    assert get_filters("task_result_filters", FLContext(), {"*@out": [guard]}, "train", "out") == []  # no wildcard
    leak = result({"pixels": np.zeros((1, 128, 128), np.float32)}, DataKind.WEIGHTS)
    c = ctx("my_own_task")
    c.set_prop(FLContextKey.TASK_RESULT, leak, private=True, sticky=False)
    guard.handle_event(EventType.AFTER_TASK_RESULT_FILTER, c)
    assert "task 'my_own_task' is not declared" in refused(leak)  # the very object the runner sends
    ok = guard.process(result({"dice": 0.5}, DataKind.METRICS), ctx("validate"))
    c.set_prop(FLContextKey.TASK_RESULT, ok, private=True, sticky=False)
    c.set_prop(FLContextKey.TASK_NAME, "validate", private=True, sticky=False)
    guard.handle_event(EventType.AFTER_TASK_RESULT_FILTER, c)
    assert ok.get_return_code() == ReturnCode.OK and "DXO" in ok


def test_refused_result_is_logged_on_the_server(caplog):
    reply = Shareable()
    reply.set_return_code(ReturnCode.EXECUTION_RESULT_ERROR)
    reply.set_header(REFUSED_HEADER, "train result: undeclared entry 'x'")
    with caplog.at_level(logging.ERROR):
        assert RefusedResultLogger().process(reply, ctx()) is reply
    assert "REFUSED by the site's output guard" in caplog.text and "undeclared entry 'x'" in caplog.text


def test_guarded_analytics_forward_only_scalars():
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsData, AnalyticsDataType

    conv = GuardedConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE])
    sent = []
    conv.fire_fed_event = lambda name, data, fl_ctx: sent.append(name)
    for value, dtype in ((0.5, AnalyticsDataType.SCALAR), (np.zeros((128, 128, 3), np.uint8), AnalyticsDataType.IMAGE),
                         ("patient ct_000", AnalyticsDataType.TEXT)):
        c = FLContext()
        c.set_prop(FLContextKey.EVENT_DATA, AnalyticsData(key="val/dice", value=value, data_type=dtype).to_dxo().to_shareable(),
                   private=True, sticky=False)
        conv.handle_event(ANALYTIC_EVENT_TYPE, c)
    assert sent == ["fed." + ANALYTIC_EVENT_TYPE]  # only the scalar


# ------------------------------------------------------------------ quantization
@pytest.mark.parametrize("qtype, tol", [("float16", 1e-5), ("adaquant", 2e-3)])
def test_quantization_round_trip_keeps_integer_tensors(state, qtype, tol):
    upd = {k: (v * 0.01 if v.dtype.kind == "f" else v) for k, v in state.items()}
    q = ModelQuantizer(qtype).process(train_result({k: v.copy() for k, v in upd.items()}), ctx())
    qd = from_shareable(q)
    back = from_shareable(ModelDequantizer().process(q, ctx())).data
    assert set(back) == set(upd)
    for k, v in upd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert float(np.max(np.abs(back[k].astype(np.float64) - v))) <= tol, k
    from fedxmodal.fl.guard import payload_bytes

    assert payload_bytes(qd.data) + payload_bytes(qd.meta) < 0.55 * payload_bytes(upd)
    # a result that is not quantized passes the dequantizer unchanged
    plain = train_result({k: v.copy() for k, v in upd.items()})
    assert from_shareable(ModelDequantizer().process(plain, ctx())).data.keys() == upd.keys()


# ------------------------------------------------------------------ job wiring
def test_job_wires_filters_per_task_with_the_guard_last(tmp_path):
    spec = load_spec(TOY_SPEC)
    spec.update(name="privjob", params_transfer_type="DIFF", output_guard={"metrics": ["dice.*"]},
                site_output_filters=[{"path": "fedxmodal.fl.dp.GaussianDPFilter", "args": {"clip_norm": 0.5, "noise_multiplier": 0.1}},
                                     {"path": "fedxmodal.fl.quantization.ModelQuantizer", "args": {"quantization_type": "float16"}}],
                server_input_filters=[{"path": "fedxmodal.fl.quantization.ModelDequantizer", "args": {}}])
    job = export_job(tmp_path, spec)
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    chains = {tuple(c["tasks"]): [f["path"].rsplit(".", 1)[1] for f in c["filters"]] for c in client["task_result_filters"]}
    assert chains == {("train",): ["GaussianDPFilter", "ModelQuantizer", "OutputGuard"],  # DP: the update only
                      ("validate",): ["ModelQuantizer", "OutputGuard"],
                      ("submit_model",): ["LocalModelRefuser", "ModelQuantizer", "OutputGuard"]}
    dp = client["task_result_filters"][0]["filters"][0]["args"]
    assert dp["clip_norm"] == 0.5 and dp["noise_multiplier"] == 0.1 and dp["seed"] is None
    guard = client["task_result_filters"][0]["filters"][-1]["args"]
    assert guard["model"]["path"] == "toy_task.ToyNet" and guard["metrics"] == ["dice.*"]
    assert {tuple(c["tasks"]): [f["path"].rsplit(".", 1)[1] for f in c["filters"]] for c in server["task_result_filters"]} == \
        {(t,): ["ModelDequantizer", "RefusedResultLogger"] for t in ("train", "validate", "submit_model")}
    assert client["components"][0]["path"] == "fedxmodal.fl.analytics.GuardedConvertToFedEvent"
    assert export_job(tmp_path / "again", spec).joinpath("app/config/config_fed_client.json").read_text() == \
        (job / "app/config/config_fed_client.json").read_text()  # per-task chains: deterministic


def test_job_refuses_update_filters_on_full_weights_and_lossy_exports():
    spec = load_spec(TOY_SPEC)
    for path in ("fedxmodal.fl.dp.GaussianDPFilter", "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"):
        with pytest.raises(ValueError, match="params_transfer_type='DIFF'"):
            build_job({**spec, "site_output_filters": [{"path": path, "args": {}}]})
    with pytest.raises(ValueError, match="give a list of names"):
        build_job({**spec, "params_transfer_type": "DIFF",
                   "site_output_filters": [{"path": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
                                            "args": {"exclude_vars": "conv.*"}}]})


def test_local_model_refuser_refuses_only_full_weights(state):
    from fedxmodal.fl.refusal import LocalModelRefuser

    r = LocalModelRefuser()
    assert "bypass" in refused(r.process(result(dict(state), DataKind.WEIGHTS), ctx("submit_model")))
    ok = result({"dice": 0.5}, DataKind.METRICS)
    assert r.process(ok, ctx("validate")) is ok


def test_committed_fedgin_job_has_the_guard():
    client = json.loads((REPO / "jobs/fedgin/app/config/config_fed_client.json").read_text())
    for chain in client["task_result_filters"]:
        assert chain["filters"][-1]["path"] == "fedxmodal.fl.guard.OutputGuard"
    assert {c["tasks"][0] for c in client["task_result_filters"]} == {"train", "validate", "submit_model"}


def test_add_result_filters_without_anything_adds_nothing():
    class Job:
        calls = []

        def to_clients(self, *a, **k):
            self.calls.append(a)

        def to_server(self, *a, **k):
            self.calls.append(a)

    job = Job()
    add_result_filters(job, model={"path": "x.Y", "args": {}})
    assert job.calls == []


# ------------------------------------------------------------------ the real simulator
LEAKY_CLIENT = '''
"""The toy site script, except that the site named in $FEDXMODAL_LEAK_SITE adds an image-shaped
tensor to the weights it sends (what a buggy or malicious method might do)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import toy_client

_run_client = toy_client.run_client


def leaky_run_client(**kw):
    if kw["site"].site_name == os.environ.get("FEDXMODAL_LEAK_SITE"):
        get_weights = kw["get_weights"]
        kw["get_weights"] = lambda: {**get_weights(), "leaked_slice": torch.rand(1, 128, 128)}
    return _run_client(**kw)


toy_client.run_client = leaky_run_client
toy_client.main()
'''


@pytest.mark.slow
def test_simulator_guard_refuses_a_site_sending_an_image(tmp_path):
    """mr-site's script adds a (1, 128, 128) tensor to its weights: its output guard refuses every
    such result (reason logged at the site and, through the reply header, at the server), the
    server never receives it, FedAvg goes on with ct-site alone (ignore_result_error=True) and the
    job finishes, cross-site evaluation included."""
    script = tmp_path / "leaky_client.py"
    script.write_text(LEAKY_CLIENT)
    spec = load_spec(TOY_SPEC)
    spec.update(client_script=str(script), extra_files=spec["extra_files"] + [str(REPO / "tests/fl_toy/toy_client.py")],
                num_rounds=2, output_guard={"metrics": ["dice", "dice_[0-9]+"]}, ignore_result_error=True)
    job = export_job(tmp_path / "jobs", spec)
    for site, (modality, n) in SITES.items():
        (tmp_path / "data" / site).mkdir(parents=True)
        (tmp_path / "data" / site / "dataset.json").write_text(
            json.dumps({"name": site, "modality": modality, "toy": {"n_training": n, "n_validation": 16, "n_test": 16}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_")}
    env.update(FEDXMODAL_DATA_ROOT=str(tmp_path / "data"), FEDXMODAL_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
               FEDXMODAL_LEAK_SITE="mr-site")
    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(ws), "-n", "2", "-t", "2",
                           "-c", ",".join(SITES)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    (tmp_path / "sim.log").write_text(out)
    assert proc.returncode == 0, out[-3000:]

    reason = "undeclared entry 'leaked_slice' (float32 array of shape (1, 128, 128))"
    mr_log = (ws / "mr-site" / "log.txt").read_text()
    assert mr_log.count("OUTPUT GUARD REFUSED the train result of mr-site") == 2 and reason in mr_log
    assert "OUTPUT GUARD REFUSED the submit_model result of mr-site" in mr_log
    assert "OUTPUT GUARD REFUSED" not in (ws / "ct-site" / "log.txt").read_text()
    server_log = (ws / "server" / "log.txt").read_text()
    assert "from mr-site REFUSED by the site's output guard" in server_log and reason in server_log
    assert "leaked_slice" not in server_log.replace(reason, "")  # only the reason names it

    run = ws / "server" / "simulate_job"
    import torch

    model = torch.load(run / "app_server" / "FL_global_model.pt", weights_only=False)["model"]
    assert "leaked_slice" not in model and len(model) == 6
    rounds = [json.loads(line) for line in (run / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all([s["name"] for s in r["sites"]] == ["ct-site"] for r in rounds)  # mr-site never aggregated
    cse = json.loads((run / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(cse["ct-site"]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "ct-site"}  # no mr-site model
