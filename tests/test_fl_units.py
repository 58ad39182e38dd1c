"""Fast tests of fedxmodal.fl: site data lookup, client-argument round trip, resume bookkeeping."""

import json
import os
from pathlib import Path

import pytest
import torch

from fedxmodal.fl.client_args import format_client_args, parse_client_args
from fedxmodal.utils import instantiate
from fedxmodal.fl.site_config import (
    SiteNotConfiguredError,
    env_var_for_site,
    normalise_site_name,
    resolve_site_config,
)


# ------------------------------------------------------------------ site_config
def _site(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "dataset.json").write_text(json.dumps({"name": name}))
    return d


def test_normalised_env_var_name():
    assert normalise_site_name("ct-site") == "CT_SITE"
    assert normalise_site_name("Site 3 (MR)") == "SITE_3_MR"
    assert env_var_for_site("mr-site") == "FEDXMODAL_SITE_DIR_MR_SITE"


def test_lookup_order_and_sources(tmp_path):
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    (ws / "startup").mkdir()
    a, b, c, d = (_site(tmp_path, n) for n in ("a", "b", "c", "root/ct-site"))
    cfg_file = tmp_path / "sites.json"
    cfg_file.write_text(json.dumps({"sites": {"ct-site": {"data_dir": "b", "num_threads": 3}}}))
    (ws / "local" / "fedxmodal_site.json").write_text(json.dumps({"data_dir": str(c)}))
    env = {
        "FEDXMODAL_SITE_DIR_CT_SITE": str(a),
        "FEDXMODAL_SITE_CONFIG": str(cfg_file),
        "FEDXMODAL_DATA_ROOT": str(tmp_path / "root"),
    }
    r = resolve_site_config("ct-site", workspace_dir=ws, environ=env)
    assert r.data_dir == a.resolve() and "FEDXMODAL_SITE_DIR_CT_SITE" in r.source
    del env["FEDXMODAL_SITE_DIR_CT_SITE"]
    r = resolve_site_config("ct-site", workspace_dir=ws, environ=env)
    assert r.data_dir == b.resolve() and r.extra == {"num_threads": 3}  # relative to the JSON file
    del env["FEDXMODAL_SITE_CONFIG"]
    r = resolve_site_config("ct-site", workspace_dir=ws, environ=env)
    assert r.data_dir == c.resolve() and r.source.endswith("fedxmodal_site.json")
    r = resolve_site_config("ct-site", workspace_dir=tmp_path / "nows", environ=env)
    assert r.data_dir == d.resolve() and "FEDXMODAL_DATA_ROOT" in r.source


def test_workspace_file_found_from_script_location(tmp_path, monkeypatch):
    """An NVFlare site runs <ws>/<job>/app_<site>/custom/<script>: the lookup walks up to <ws>."""
    ws = tmp_path / "ct-site"
    (ws / "local").mkdir(parents=True)
    (ws / "startup").mkdir()
    data = _site(tmp_path, "data")
    (ws / "local" / "fedxmodal_site.json").write_text(json.dumps({"sites": {"ct-site": str(data)}}))
    script = ws / "simulate_job" / "app_ct-site" / "custom" / "client.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(script)])
    assert resolve_site_config("ct-site", environ={}).data_dir == data.resolve()


def test_unconfigured_site_error_names_site_and_options(tmp_path):
    with pytest.raises(SiteNotConfiguredError) as e:
        resolve_site_config("mr-site", workspace_dir=tmp_path, environ={})
    msg = str(e.value)
    assert "'mr-site'" in msg and "FEDXMODAL_SITE_DIR_MR_SITE" in msg and "FEDXMODAL_DATA_ROOT" in msg
    assert "fedxmodal_site.json" in msg


def test_configured_but_missing_folder_or_dataset(tmp_path):
    with pytest.raises(SiteNotConfiguredError, match="does not exist"):
        resolve_site_config("ct-site", environ={"FEDXMODAL_DATA_ROOT": str(tmp_path)}, workspace_dir=tmp_path)
    (tmp_path / "ct-site").mkdir()
    with pytest.raises(SiteNotConfiguredError, match="no dataset.json"):
        resolve_site_config("ct-site", environ={"FEDXMODAL_DATA_ROOT": str(tmp_path)}, workspace_dir=tmp_path)
    cfg = resolve_site_config(
        "ct-site", environ={"FEDXMODAL_DATA_ROOT": str(tmp_path)}, workspace_dir=tmp_path, require_file=None
    )
    assert cfg.data_dir == (tmp_path / "ct-site").resolve()


# ------------------------------------------------------------------ client args
ARGS = {
    "model": {"path": "pkg.mod.Net", "args": {"channels": [16, 32], "norm": "batch", "dropout": 0.1}},
    "structures": ["liver", "kidney_right"],
    "local_epochs": 3,
    "lr": 3e-4,
    "amp": False,
    "modality": "CT",
    "cache": None,
}


@pytest.mark.parametrize("posix", [False, True])  # in-process / external-process splitting
def test_client_args_round_trip(posix):
    from nvflare.fuel.utils.secret_utils import split_command_preserving_secret_refs

    text = format_client_args(ARGS)
    argv = split_command_preserving_secret_refs(text, posix=posix)
    assert parse_client_args(argv) == ARGS


def test_client_args_reject_whitespace_and_defaults():
    with pytest.raises(ValueError):
        format_client_args({"name": "two words"})
    assert parse_client_args(["--a=1", "--b", "x", "--flag"], defaults={"c": 2}) == {
        "a": 1,
        "b": "x",
        "flag": True,
        "c": 2,
    }


def test_instantiate():
    lin = instantiate({"path": "torch.nn.Linear", "args": {"in_features": 2, "out_features": 3}})
    assert isinstance(lin, torch.nn.Linear) and lin.out_features == 3


# ------------------------------------------------------------------ resume bookkeeping
def test_persistor_resumes_unfinished_and_sets_finished_runs_aside(tmp_path):
    from nvflare.apis.fl_context import FLContext

    from fedxmodal.fl.server import STATE_KEY, ResumablePTFileModelPersistor

    p = ResumablePTFileModelPersistor(model={"path": "torch.nn.Linear", "args": {"in_features": 2, "out_features": 1}})
    ckpt_dir = tmp_path / "ckpt" / "job"
    ckpt_dir.mkdir(parents=True)
    state = {"last_round": 1, "num_rounds": 2, "best": {"metric": 0.5, "raw": 0.5, "round": 1}}
    torch.save({"model": {"w": torch.zeros(1)}, STATE_KEY: state}, ckpt_dir / "FL_global_model.pt")
    p._ckpt_dir = str(ckpt_dir)
    ctx = FLContext()

    p._num_rounds = 5  # more rounds configured than done: resume
    assert p._find_resumable_state(ctx) == state
    p.resume = False  # resume switched off: set aside, start fresh
    assert p._find_resumable_state(ctx) is None
    assert not (ckpt_dir / "FL_global_model.pt").exists()
    assert len(list((tmp_path / "ckpt").glob("job.old-*"))) == 1

    p.resume = True
    torch.save({"model": {"w": torch.zeros(1)}, STATE_KEY: state}, ckpt_dir / "FL_global_model.pt")
    p._num_rounds = 2  # the checkpoint's run had finished: set aside, start fresh
    assert p._find_resumable_state(ctx) is None
    assert len(list((tmp_path / "ckpt").glob("job.done-*"))) == 1
    assert os.listdir(ckpt_dir) == []


# ------------------------------------------------------------------ run_client protocol (fake Client API)
class _FakeFlare:
    """Just enough of nvflare.client for run_client: a scripted queue of tasks."""

    def __init__(self, tasks):
        self.queue = list(tasks)  # (task_name, FLModel) or ("ABORT", None)
        self.current = None
        self.sent = []

    def is_running(self):
        if self.current is not None:
            return True
        if not self.queue:
            return False
        if self.queue[0][0] == "ABORT":
            raise RuntimeError("request to abort the job")
        return True

    def receive(self):
        if self.current is None:
            self.current = self.queue.pop(0)
        return self.current[1]

    def send(self, model, clear_cache=True):
        self.sent.append((self.current[0], model))
        self.current = None

    def get_task_name(self):
        return self.current[0]

    def is_train(self):
        return self.current[0] == "train"

    def is_evaluate(self):
        return self.current[0] == "validate"

    def is_submit_model(self):
        return self.current[0] == "submit_model"


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))


def test_run_client_protocol(monkeypatch):
    import numpy as np
    import nvflare.client as flare_module
    from nvflare.client import FLModel

    from fedxmodal.fl.client_loop import NUM_STEPS_KEY, SiteContext, run_client

    model = torch.nn.Linear(2, 1)
    w_global = {k: v.detach().clone() + 1 for k, v in model.state_dict().items()}
    w_other = {k: v.detach().clone() + 5 for k, v in model.state_dict().items()}
    fake = _FakeFlare([
        ("submit_model", FLModel(params=None)),  # before any training: sends the current weights
        ("train", FLModel(params=w_global, current_round=3, total_rounds=10)),
        ("validate", FLModel(params=w_other)),
        ("submit_model", FLModel(params=None)),
        ("ABORT", None),
    ])
    for name in ("is_running", "receive", "send", "get_task_name", "is_train", "is_evaluate", "is_submit_model"):
        monkeypatch.setattr(flare_module, name, getattr(fake, name))
    calls = []

    def train(info):
        calls.append(("train", info.current_round, info.total_rounds, info.global_metrics["dice"]))
        with torch.no_grad():
            model.weight.add_(0.5)
        return {"loss": np.float32(0.25)}

    writer = _Writer()
    run_client(
        train_fn=train,
        validate_fn=lambda: {"dice": float(model.weight.detach().sum())},
        evaluate_fn=lambda: {"dice": torch.tensor(0.5)},
        get_weights=model.state_dict,
        set_weights=model.load_state_dict,
        n_train_items=lambda: 42,
        site=SiteContext("ct-site", 0, 1, writer=writer),
    )  # returns cleanly on the abort

    tasks = [t for t, _ in fake.sent]
    assert tasks == ["submit_model", "train", "validate", "submit_model"]
    _, trained = fake.sent[1]
    assert trained.meta[NUM_STEPS_KEY] == 42 and trained.current_round == 3
    assert trained.metrics["dice"] == pytest.approx(float(w_global["weight"].sum()))  # validated BEFORE training
    assert torch.allclose(trained.params["weight"], w_global["weight"] + 0.5)
    assert calls == [("train", 3, 10, pytest.approx(float(w_global["weight"].sum())))]
    assert fake.sent[2][1].metrics == {"dice": 0.5} and fake.sent[2][1].params is None
    # submit_model after training sends the LOCAL model, not the last evaluated one
    assert torch.allclose(fake.sent[3][1].params["weight"], w_global["weight"] + 0.5)
    assert ("val/dice", pytest.approx(float(w_global["weight"].sum())), 3) in writer.scalars
    assert ("train/loss", 0.25, 3) in writer.scalars


def test_run_client_stops_during_training(monkeypatch):
    import nvflare.client as flare_module
    from nvflare.client import FLModel

    from fedxmodal.fl.client_loop import SiteContext, run_client

    model = torch.nn.Linear(2, 1)
    fake = _FakeFlare([("train", FLModel(params=model.state_dict(), current_round=0))])
    for name in ("is_running", "receive", "send", "get_task_name", "is_train", "is_evaluate", "is_submit_model"):
        monkeypatch.setattr(flare_module, name, getattr(fake, name))

    def train(info):
        fake.current = None  # the job was stopped: the Client API drops the task
        fake.queue.clear()
        assert info.should_stop()
        return None

    run_client(train, lambda: {"dice": 0.0}, lambda: {}, model.state_dict, model.load_state_dict, 1,
               site=SiteContext("s", 0, 1, writer=None))
    assert fake.sent == []
