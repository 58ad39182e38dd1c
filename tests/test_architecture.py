"""The package's layering (docs/architecture.md), checked on the source: no import cycle, what each
layer may import, no module over ~400 lines, a method mentioned only by its own module(s) and the
registry, and a job that ships only the runtime (no host-side tools)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedxmodal
from fedxmodal.methods import DEFAULT_METHOD, METHODS
from fedxmodal.methods.base import PlainMethod

PKG = Path(fedxmodal.__file__).resolve().parent
REPO = PKG.parents[1]
HOST_SIDE = ("apps", "recipes", "deploy", "cli", "__main__")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every module imported anywhere in the file (absolute names; fedxmodal ones resolved to a module)."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:
                prefix = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "fedxmodal":
                while name and name not in MODULES:
                    name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_internal_import_exists():
    """An import of a fedxmodal module or name that does not exist fails here, not at a site."""
    import importlib

    missing = []
    for m, path in MODULES.items():
        base = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                if mod.split(".")[0] != "fedxmodal":
                    continue
                if mod not in MODULES:
                    missing.append((m, mod))
                    continue
                target = importlib.import_module(mod)
                missing += [(m, f"{mod}.{a.name}") for a in node.names
                            if not hasattr(target, a.name) and f"{mod}.{a.name}" not in MODULES]
            elif isinstance(node, ast.Import):
                missing += [(m, a.name) for a in node.names
                            if a.name.split(".")[0] == "fedxmodal" and a.name not in MODULES]
    assert not missing, missing


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle():
    internal = {m: {t for t in targets if t in MODULES and t != m} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in internal[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles[:5]


@pytest.mark.parametrize("layer,forbidden", [
    # the bottom layers and the engine: no NVFlare, no methods, no runtime, no host side
    *[(lay, ("nvflare", "fedxmodal.methods", "fedxmodal.fl", *[f"fedxmodal.{h}" for h in HOST_SIDE]))
      for lay in ("data", "transforms", "networks", "losses", "metrics", "engine", "utils", "visualize")],
    # methods: their NVFlare parts import nvflare, never fedxmodal's runtime or the host side
    ("methods", ("fedxmodal.fl", *[f"fedxmodal.{h}" for h in HOST_SIDE])),
    # the runtime that ships with a job: nothing host-side
    ("fl", tuple(f"fedxmodal.{h}" for h in HOST_SIDE)),
])
def test_layers_import_only_what_they_may(layer, forbidden):
    bad = {m: sorted(t for t in targets if any(t == f or t.startswith(f + ".") for f in forbidden))
           for m, targets in GRAPH.items() if _layer(m) == layer}
    assert not {m: b for m, b in bad.items() if b}


def test_only_a_methods_site_and_server_modules_import_nvflare():
    """A method's NVFlare parts are the modules its registry entry points to (site parts, server
    workflows, aggregators); everything else in methods/ runs without NVFlare."""
    declared = set()
    for cls in METHODS.values():
        parts = cls.server_parts(2)
        paths = [cls.site_parts] + [w["path"] for w in parts.pre_workflows] + \
                [p["path"] for p in (parts.aggregator, parts.site_payloads) if p]
        declared |= {p.rpartition(".")[0] for p in paths if p}
    importing = {m for m, t in GRAPH.items() if _layer(m) == "methods" and any(x.split(".")[0] == "nvflare" for x in t)}
    assert importing and importing <= declared, importing - declared


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def _names_in(path: Path) -> set[str]:
    """String constants and identifiers of a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.name.rpartition(".")[2])
    return out


# "none" is the base every method extends, "gin" the package's default (FedGIN's job)
@pytest.mark.parametrize("name", sorted(set(METHODS) - {DEFAULT_METHOD, PlainMethod.name}))
def test_a_method_is_named_only_by_its_module_and_the_registry(name):
    cls = METHODS[name]
    own = Path(__import__(cls.__module__, fromlist=["_"]).__file__)
    own_files = set(own.parent.glob("*.py")) if own.name == "__init__.py" else {own}
    registry = PKG / "methods" / "__init__.py"
    mentions = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
                if {name, cls.__name__} & _names_in(p)}
    allowed = {p.relative_to(PKG).as_posix() for p in own_files | {registry}}
    assert mentions <= allowed, sorted(mentions - allowed)


def test_engine_names_no_method():
    names = set(METHODS)
    for p in (PKG / "engine").glob("*.py"):
        assert not (names & _names_in(p)), (p, names & _names_in(p))


def test_a_job_ships_only_the_runtime(tmp_path):
    from fedxmodal.recipes.export import export_job
    from fedxmodal.recipes.spec import load_spec

    job = export_job(tmp_path, load_spec(REPO / "jobs" / "specs" / "fedgin.json"))
    shipped = job / "app" / "custom" / "fedxmodal"
    assert (shipped / "fl" / "site.py").is_file() and (shipped / "methods" / "feddg" / "site.py").is_file()
    present = {p.name for p in shipped.iterdir()}
    assert not {"apps", "recipes", "deploy", "cli.py", "__main__.py"} & present, present
    # and nothing shipped imports them (it would fail at a site)
    for p in shipped.rglob("*.py"):
        module = ".".join(p.relative_to(shipped.parent).with_suffix("").parts).removesuffix(".__init__")
        host = {t for t in _imports(module, p) if t.split(".")[:2] in ([["fedxmodal", h] for h in HOST_SIDE])}
        assert not host, (p, host)


def _classes():
    """(module, ClassDef) of every class in the package."""
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                yield m, node


def test_one_training_loop():
    """Only the base trainer has a loop (``fit``); every trainer writes its step (``iteration``)."""
    from fedxmodal.engine.base import BaseTrainer

    fits = {f"{m}.{c.name}" for m, c in _classes()
            if any(isinstance(f, ast.FunctionDef) and f.name == "fit" for f in c.body)}
    assert fits == {"fedxmodal.engine.base.BaseTrainer"}, fits
    styles = {cls.trainer for cls in METHODS.values()}
    assert len(styles) >= 5
    assert all(issubclass(t, BaseTrainer) and t.iteration is not BaseTrainer.iteration for t in styles), styles


def test_one_site_script():
    """Every job runs fl/site.py; what runs at a site comes from the method's base (its runner)."""
    import json

    from fedxmodal.methods.site_runners import SiteRunner

    scripts = {m for m, p in MODULES.items() if m.startswith("fedxmodal.fl.") and "__main__" in _names_in(p)}
    assert scripts == {"fedxmodal.fl.site"}, scripts
    assert all(issubclass(cls.site_runner, SiteRunner) for cls in METHODS.values())
    for spec in (REPO / "jobs" / "specs").glob("*.json"):
        assert json.loads(spec.read_text())["client_script"].endswith("fedxmodal/fl/site.py"), spec
