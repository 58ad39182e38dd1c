"""Every job as an NVFlare 2.9 Recipe (fedxmodal.recipes.nvflare_recipes) and the `run` command:
each recipe exports exactly its committed folder; knobs and overrides reach the job's
configuration; each recipe runs 2 rounds in SimEnv on a tiny phantom (the data factory's phase 2:
its one adaptation pass); `run` drives SimEnv, PocEnv and ProdEnv (a provisioned federation) on
this machine; usage errors are one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedxmodal.cli import main
from fedxmodal.fl.client_args import parse_client_args
from fedxmodal.recipes.export import compare_job_dirs
from fedxmodal.recipes.nvflare_recipes import (RECIPE_CLASSES, FactoryAdaptRecipe, FactoryRecipe, FedCoWProRecipe,
                                               FedDARecipe, FedGINRecipe, recipe_for)

REPO = Path(__file__).resolve().parents[1]
TOY_SPEC = REPO / "tests" / "fl_toy" / "toy_job.json"
SITES = ("ct-site", "mr-site")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def committed_files_differ(name: str, exported: Path):
    """The committed files of jobs/<name>/ (app/custom/ is generated, not committed) vs an export."""
    return [d for d in compare_job_dirs(REPO / "jobs" / name, exported) if "app/custom/" not in d]


def test_each_recipe_exports_its_committed_job_folder(tmp_path):
    for name, cls in RECIPE_CLASSES.items():
        recipe = recipe_for(name)
        assert type(recipe) is cls and recipe.name == name
        recipe.export(tmp_path)
        assert committed_files_differ(name, tmp_path / name) == [], name
        assert not list((tmp_path / name).rglob("__pycache__"))


def test_knobs_and_overrides_reach_the_job_configuration(tmp_path):
    recipe = FedGINRecipe(num_rounds=3, local_epochs=1, seed=4, min_clients=1,
                          overrides={"client_args.train.lr": 0.01, "cross_site_eval": False})
    recipe.export(tmp_path)
    server = json.loads((tmp_path / "fedgin/app/config/config_fed_server.json").read_text())
    client = json.loads((tmp_path / "fedgin/app/config/config_fed_client.json").read_text())
    args = parse_client_args(client["executors"][0]["executor"]["args"]["task_script_args"].split())
    fedavg = {w["id"]: w for w in server["workflows"]}
    assert fedavg["fedavg"]["args"]["num_rounds"] == 3 and "cross_site_model_eval" not in fedavg
    assert args["local_epochs"] == 1 and args["seed"] == 4 and args["train"]["lr"] == 0.01
    assert args["model"]["args"]["init_seed"] == 4
    assert json.loads((tmp_path / "fedgin/meta.json").read_text())["min_clients"] == 1
    assert FedDARecipe(cyclic=True, adv_weight=0.01).spec.site.client_args["train"]["method_args"]["adv_weight"] == 0.01
    assert FedCoWProRecipe(method="cowpro", local_steps=3).spec.site.client_args["method"] == "cowpro"
    assert FactoryRecipe(clients_per_round=3).spec.server.clients_per_round == 3
    with pytest.raises(TypeError, match="no knob 'num_rounds'"):
        FactoryAdaptRecipe(num_rounds=2)  # phase 2 has no FedAvg rounds
    with pytest.raises(TypeError, match="no knob 'local_epochs'"):
        FedCoWProRecipe(local_epochs=2)  # episodes are counted in steps


def test_run_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [(["run", "nosuch"], "no such spec file and no job of that name"),
             (["run", "fedgin", "--set", "num_rounds"], "--set must be KEY=VALUE"),
             (["run", "fedgin", "--set", "no_such_key=1"], "unknown job spec key(s) ['no_such_key']"),
             (["run", "fedgin", "--env", "prod"], "--env prod needs --startup-kit"),
             (["run", "fedgin", "--env", "prod", "--startup-kit", str(tmp_path)], "not a startup kit"),
             (["run", "fedgin", "--data", str(tmp_path / "nowhere")], "no such folder")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def _toy_sites(root: Path) -> Path:
    for site, (modality, n) in {"ct-site": ("CT", 32), "mr-site": ("MR", 24)}.items():
        (root / site).mkdir(parents=True, exist_ok=True)
        (root / site / "dataset.json").write_text(json.dumps(
            {"name": site, "modality": modality, "toy": {"n_training": n, "n_validation": 8, "n_test": 8}}))
    return root


def _run_cli(tmp_path: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXMODAL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "custom"), str(REPO / "tests" / "fl_toy")])
    proc = subprocess.run([sys.executable, "-m", "fedxmodal", "run", *map(str, args)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    (tmp_path / "run.log").write_text(proc.stdout + proc.stderr)
    return proc


def _printed_paths(stdout: str) -> dict:
    return {line.split(":", 1)[0].strip(): Path(line.split(":", 1)[1].strip())
            for line in stdout.splitlines() if line.startswith("  ") and ": /" in line}


def test_run_command_in_sim_env_without_the_deprecated_cli(tmp_path):
    """The toy job, 2 rounds, through `run --env sim`: NVFlare's SimEnv, not `nvflare simulator`."""
    proc = _run_cli(tmp_path, TOY_SPEC, "--env", "sim", "--data", _toy_sites(tmp_path / "data"),
                    "--workspace", tmp_path / "ws", "--set", "num_rounds=2", "client_args.local_epochs=1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "deprecated" not in out
    paths = _printed_paths(proc.stdout)
    assert paths["global model"] == tmp_path / "ws/toyjob/server/simulate_job/app_server/FL_global_model.pt"
    assert paths["global model"].is_file()
    rounds = [json.loads(line)["round"] for line in paths["round metrics"].read_text().splitlines()]
    assert rounds == [0, 1]
    assert set(json.loads(paths["cross-site results"].read_text())) == set(SITES)


# ------------------------------------------------------------------ each recipe, 2 rounds in SimEnv
def _phantom(root: Path, sites=SITES, n_train=2) -> Path:
    from fedxmodal.data.phantom import write_phantom_federation

    write_phantom_federation(root, seed=0, task="abdomen", n_train=n_train, n_val=1, n_test=1, progress=False,
                             sites=sites)
    return root


TINY_UNET = {"client_args.preprocess.size": 64, "client_args.train.batch_size": 8}
TINY_COWPRO = {"client_args.structures": ["liver", "spleen"], "client_args.train.batch_size": 2,
               "client_args.train.val_episodes": 2}
TINY_GAN = {"model.args.image_size": 32, "model.args.max_channels": 32, "model.args.min_channels": 16,
            "client_args.preprocess": {"spacing": 2.5, "size": 32}, "client_args.train.batch_size": 4,
            "client_args.train.method_args.quality_samples": 8}
TWO_ROUNDS = {
    "fedgin": lambda: FedGINRecipe(num_rounds=2, local_epochs=1, overrides=TINY_UNET),
    "fedda": lambda: FedDARecipe(num_rounds=2, local_epochs=1, overrides=TINY_UNET),
    "fedda_cyclic": lambda: FedDARecipe(cyclic=True, num_rounds=2, local_epochs=1, overrides=TINY_UNET),
    "fedcowpro": lambda: FedCoWProRecipe(num_rounds=2, local_steps=2, overrides=TINY_COWPRO),
    "factory": lambda: FactoryRecipe(num_rounds=2, local_steps=3, overrides=TINY_GAN),
}


def _sim_run(recipe, data: Path, workspace: Path, sites=SITES) -> Path:
    from nvflare.recipe import SimEnv

    run = recipe.execute(SimEnv(clients=list(sites), workspace_root=str(workspace), extra={"data_root": str(data)}))
    return Path(run.get_result()) / "server" / "simulate_job"


@pytest.fixture(scope="module")
def phantom_sites(tmp_path_factory):
    return _phantom(tmp_path_factory.mktemp("recipes") / "data", sites=("ct-site", "mr-site", "mr-t1-site"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TWO_ROUNDS))
def test_each_recipe_runs_two_rounds_in_sim_env(name, phantom_sites, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDXMODAL_SITE_STATE_DIR", str(tmp_path / "state"))
    recipe = TWO_ROUNDS[name]()
    sites = recipe.sites or SITES
    run = _sim_run(recipe, phantom_sites, tmp_path / "ws", sites)
    assert (run / "app_server" / "FL_global_model.pt").is_file()
    rounds = re.findall(r"Round (\d+) started", (run.parent / "log.txt").read_text())
    assert rounds == ["0", "1"], name


@pytest.mark.slow
def test_factory_adaptation_recipe_runs_in_sim_env(phantom_sites, tmp_path, monkeypatch):
    """Phase 2 around a tiny untrained phase-1 generator: the source's branch and each target's model."""
    from test_factory_adapt_job import _factory, _tiny_spec

    factory = _factory()
    factory.preprocess = type(factory.preprocess).from_dict({"spacing": 2.5, "size": 32})
    ckpt = factory.save(tmp_path / "factory_model.pt")
    monkeypatch.setenv("FEDXMODAL_SITE_STATE_DIR", str(tmp_path / "state"))
    spec = _tiny_spec(factory_model=str(ckpt))
    recipe = FactoryAdaptRecipe(spec, local_steps=2, overrides={
        "client_args.train.method_args.source_site": "ct-site", "client_args.train.method_args.n_labelled": 2})
    run = _sim_run(recipe, phantom_sites, tmp_path / "ws")
    assert list((tmp_path / "state").rglob("target.pt")), sorted(p.name for p in (tmp_path / "state").rglob("*"))
    assert run.is_dir()


# ------------------------------------------------------------------ PocEnv and ProdEnv on this machine
@pytest.mark.slow
def test_run_command_in_poc_env_end_to_end(tmp_path):
    """NVFlare's PocEnv: a POC of the named sites on a free loopback port, the job, its results
    downloaded, the POC stopped."""
    proc = _run_cli(tmp_path, TOY_SPEC, "--env", "poc", "--data", _toy_sites(tmp_path / "data"),
                    "--workspace", tmp_path / "poc", "--set", "num_rounds=2", "client_args.local_epochs=1",
                    "--timeout", 500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    paths = _printed_paths(proc.stdout)
    assert paths["global model"].is_file() and str(paths["global model"]).startswith(str(tmp_path / "poc"))
    assert set(json.loads(paths["cross-site results"].read_text())) == set(SITES)
    from deploy_helpers import processes_mentioning, wait_for

    wait_for(lambda: not processes_mentioning(tmp_path / "poc"), 60, "the POC's processes to end")


from deploy_helpers import site_python  # noqa: E402,F401  (the fixtures of the provisioned federation)
from test_provision import PROJECT_ADMIN, provisioned  # noqa: E402,F401


@pytest.mark.slow
def test_run_command_in_prod_env_on_provisioned_kits(provisioned, tmp_path):
    fed = provisioned["fed"]
    proc = _run_cli(tmp_path, TOY_SPEC, "--env", "prod", "--startup-kit", fed.admin_kit, "--username", PROJECT_ADMIN,
                    "--set", "num_rounds=2", "client_args.local_epochs=1", "--timeout", 500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    paths = _printed_paths(proc.stdout)
    assert paths["global model"].is_file()
    rounds = [json.loads(line)["round"] for line in paths["round metrics"].read_text().splitlines()]
    assert rounds == [0, 1]
