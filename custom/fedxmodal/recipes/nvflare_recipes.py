"""Every job of the project as an NVFlare 2.9 Recipe, run in ``SimEnv``, ``PocEnv`` or ``ProdEnv``::

    from nvflare.recipe import SimEnv
    from fedxmodal.recipes.nvflare_recipes import FedGINRecipe

    recipe = FedGINRecipe(num_rounds=2, local_epochs=1)
    run = recipe.execute(SimEnv(clients=["ct-site", "mr-site"], extra={"data_root": "demo/data"}))
    print(run.get_result())

A recipe wraps the ``FedJob`` that :func:`fedxmodal.recipes.export.build_job` makes from its spec
(``jobs/specs/<name>.json``): its knobs (constructor arguments; ``None`` keeps the spec's value)
and ``overrides`` (dotted spec keys, as ``--set``) are applied to the spec before the job is built,
so a recipe without arguments exports exactly the committed folder ``jobs/<name>/``.

Sites find their data by name (``fedxmodal.fl.site_config``); on this machine (``SimEnv``,
``PocEnv``) an env's ``extra={"data_root": DIR}`` sets ``FEDXMODAL_DATA_ROOT`` for the processes the
env starts. A provisioned site (``ProdEnv``) reads its own kit's configuration.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from nvflare.recipe.spec import ExecEnv, Recipe

from .export import build_job
from .spec import JobSpec, load_spec

__all__ = ["FactoryAdaptRecipe", "FactoryRecipe", "FedCoWProRecipe", "FedDARecipe", "FedGINRecipe",
           "FedXModalRecipe", "RECIPE_CLASSES", "apply_overrides", "parse_overrides", "recipe_for", "spec_file"]

SPEC_DIR = Path(__file__).resolve().parents[3] / "jobs" / "specs"
ENV_DATA_ROOT = "FEDXMODAL_DATA_ROOT"


def spec_file(spec_or_name) -> Path:
    """A spec file, given as a path or as a job name (``jobs/specs/<name>.json``)."""
    path = Path(spec_or_name)
    if path.is_file():
        return path
    named = SPEC_DIR / f"{spec_or_name}.json"
    if named.is_file():
        return named
    known = sorted(p.stem for p in SPEC_DIR.glob("*.json"))
    raise ValueError(f"no such spec file and no job of that name (known: {', '.join(known)})")


def parse_overrides(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["num_rounds=2", "client_args.train.lr=0.01"]`` -> dotted keys and JSON values (else strings)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def apply_overrides(spec: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Set dotted keys (``client_args.train.lr``) in a flat spec; returns the spec."""
    for key, value in overrides.items():
        node = spec
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {p!r} is not a group of keys")
            node = child
        node[parts[-1]] = value
    return spec


class FedXModalRecipe(Recipe):
    """The job a spec describes, as an NVFlare Recipe (the FedJob of :func:`build_job`, wrapped).

    spec: a spec file or job name (default: the class's own job), or flat spec keys. num_rounds, min_clients,
    seed (the sites' seed and the initial model's), method, method_args (replace the spec's):
    the knobs users change; overrides: any other spec key, dotted (``client_args.train.lr``).
    """

    spec_name = ""  # jobs/specs/<spec_name>: the job it builds by default
    _KNOBS = {"num_rounds": "num_rounds", "min_clients": "min_clients", "method": "client_args.method",
              "method_args": "client_args.train.method_args"}

    def __init__(self, spec=None, *, num_rounds: Optional[int] = None, min_clients: Optional[int] = None,
                 seed: Optional[int] = None, method: Optional[str] = None, method_args: Optional[dict] = None,
                 overrides: Optional[Mapping[str, Any]] = None, **knobs):
        if isinstance(spec, Mapping):  # flat spec keys, as load_spec gives them
            path, flat = None, copy.deepcopy(dict(spec))
        else:
            path = spec_file(spec or SPEC_DIR / self.spec_name)
            flat = load_spec(path)
        given = dict(num_rounds=num_rounds, min_clients=min_clients, method=method, method_args=method_args, **knobs)
        for name, value in given.items():
            if value is not None and name not in self._KNOBS:
                raise TypeError(f"{type(self).__name__} has no knob {name!r}; knobs: {sorted(self._KNOBS)} and seed")
            if value is not None:
                apply_overrides(flat, {self._KNOBS[name]: value})
        if seed is not None:
            apply_overrides(flat, {"client_args.seed": seed, "model.args.init_seed": seed})
        apply_overrides(flat, dict(overrides or {}))
        self.spec_path = path
        self.spec = JobSpec.from_dict(flat)
        super().__init__(build_job(self.spec))

    @property
    def sites(self):
        """The site names the job's method expects, where it names them (else None)."""
        sites = self.spec.site.client_args.get("train", {}).get("method_args", {}).get("sites")
        return list(sites) if sites else None

    def process_env(self, env: ExecEnv):
        data_root = env.get_extra_prop("data_root")
        if data_root:  # SimEnv / PocEnv start their processes from this one: they inherit it
            os.environ[ENV_DATA_ROOT] = str(Path(data_root).resolve())

    def export(self, job_dir, server_exec_params=None, client_exec_params=None, env=None):
        """``<job_dir>/<name>/``, without Python caches (what ``jobs/<name>/`` holds)."""
        super().export(str(job_dir), server_exec_params, client_exec_params, env)
        for p in sorted((Path(job_dir) / self.name).rglob("*"), reverse=True):
            if p.name == "__pycache__" and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.suffix in (".pyc", ".pyo"):
                p.unlink(missing_ok=True)


class FedGINRecipe(FedXModalRecipe):
    """FedGIN (``jobs/specs/fedgin.json``): FedAvg of a U-Net trained with GIN augmentation;
    ``method`` any supervised method of the registry (the comparison's baselines)."""

    spec_name = "fedgin.json"
    _KNOBS = {**FedXModalRecipe._KNOBS, "local_epochs": "client_args.local_epochs"}


class FedDARecipe(FedGINRecipe):
    """FedDA (``jobs/specs/fedda.json``; ``cyclic=True``: ``fedda_cyclic.json``): the U-Net plus a
    feature discriminator per site; ``adv_weight`` the adversarial weight."""

    spec_name = "fedda.json"
    cyclic_spec_name = "fedda_cyclic.json"
    _KNOBS = {**FedGINRecipe._KNOBS, "adv_weight": "client_args.train.method_args.adv_weight"}

    def __init__(self, spec=None, *, cyclic: bool = False, **knobs):
        super().__init__(spec or SPEC_DIR / (self.cyclic_spec_name if cyclic else self.spec_name), **knobs)


class FedCoWProRecipe(FedXModalRecipe):
    """FedCoWPro (``jobs/specs/fedcowpro.json``): self-supervised one-shot segmentation, no labels
    at the sites; ``method`` fedcowpro | cowpro | ssl_alpnet; ``local_steps`` episodes per round."""

    spec_name = "fedcowpro.json"
    _KNOBS = {**FedXModalRecipe._KNOBS, "local_steps": "client_args.local_steps"}


class FactoryRecipe(FedCoWProRecipe):
    """The data factory, phase 1 (``jobs/specs/factory.json``): a conditional GAN by FedAvg over
    sampled sites; ``local_steps`` G+D steps per round, ``clients_per_round`` sites sampled."""

    spec_name = "factory.json"
    _KNOBS = {**FedCoWProRecipe._KNOBS, "clients_per_round": "clients_per_round"}


class FactoryAdaptRecipe(FedCoWProRecipe):
    """The data factory, phase 2 (``jobs/specs/factory_adapt.json``): adaptation around phase 1's
    frozen generator (``factory_model``); no FedAvg rounds."""

    spec_name = "factory_adapt.json"
    _KNOBS = {"min_clients": "min_clients", "local_steps": "client_args.local_steps",
              "method_args": "client_args.train.method_args",
              "factory_model": "client_args.train.method_args.factory_model"}


# job name (its spec file's stem) -> recipe class
RECIPE_CLASSES = {Path(c.spec_name).stem: c
                  for c in (FedGINRecipe, FedDARecipe, FedCoWProRecipe, FactoryRecipe, FactoryAdaptRecipe)}
RECIPE_CLASSES[Path(FedDARecipe.cyclic_spec_name).stem] = FedDARecipe


def recipe_for(spec_or_name, overrides: Optional[Mapping[str, Any]] = None) -> FedXModalRecipe:
    """The recipe of a spec file or job name; a spec of no class of its own gets the generic one."""
    path = spec_file(spec_or_name)
    name = json.loads(path.read_text()).get("name")
    return RECIPE_CLASSES.get(name, FedXModalRecipe)(path, overrides=overrides)
