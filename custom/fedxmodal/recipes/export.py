"""Build and export job folders from specs: ``python -m fedxmodal.recipes.export``.

Committed job folders (``jobs/<name>/``) are generated from spec files (``jobs/specs/<name>.json``,
see :mod:`fedxmodal.recipes.spec`)::

    python -m fedxmodal.recipes.export jobs/specs/fedgin.json --export-dir jobs          # (re)generate
    python -m fedxmodal.recipes.export jobs/specs/fedgin.json --export-dir jobs --check  # in sync?

Every knob lives in the exported configuration: the server's in ``config_fed_server.json``
(component args), the sites' as ``--key=value`` script arguments in ``config_fed_client.json``
(``task_script_args``; read with :func:`fedxmodal.fl.client_args.parse_client_args`). The code
travels WITH the job: the runtime part of the ``fedxmodal`` package (from ``custom/``, the one
source; never its host-side tools) is copied into ``app/custom/``. NVFlare does not follow a
directory symlink when it packs a job (docs/nvflare-notes.md), hence the copy.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from .adaptation import build_adaptation_job
from .fedavg import build_fedavg_job
from .spec import JobSpec, load_spec

__all__ = ["RECIPES", "build_job", "compare_job_dirs", "export_job", "export_from_spec", "main"]

RECIPES = {"fedavg": build_fedavg_job, "adaptation": build_adaptation_job}  # protocol (spec "recipe") -> builder


def build_job(spec: Union[JobSpec, Mapping[str, Any]]):
    """The FedJob of a spec (a :class:`JobSpec` or its flat keys), built by its recipe."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec)
    if spec.recipe not in RECIPES:
        raise ValueError(f"job {spec.name}: unknown recipe {spec.recipe!r}; choose from {sorted(RECIPES)}")
    return RECIPES[spec.recipe](spec)


def _clean(tree: Path) -> None:
    for p in sorted(tree.rglob("*"), reverse=True):
        if p.name == "__pycache__" and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.suffix in (".pyc", ".pyo") or p.name == ".DS_Store":
            p.unlink(missing_ok=True)


def export_job(job_root, spec: Union[JobSpec, Mapping[str, Any]]) -> Path:
    """Build and write the job folder ``<job_root>/<name>``; returns its path. An existing folder
    of the same job is replaced. Byte-identical for identical inputs."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec)
    job = build_job(spec)
    job_root = Path(job_root)
    job_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=job_root, prefix=f".{spec.name}.export.") as tmp:
        job.export_job(tmp)
        out = Path(tmp) / spec.name
        _clean(out)
        dest = job_root / spec.name
        if dest.exists():
            if not (dest / "meta.json").is_file():
                raise RuntimeError(f"{dest} exists and is not a job folder; not replacing it")
            shutil.rmtree(dest)
        shutil.move(str(out), str(dest))
    return dest


def export_from_spec(spec_path, job_root) -> Path:
    """Export the job a spec file describes into ``<job_root>/<name>``."""
    return export_job(job_root, load_spec(spec_path))


def compare_job_dirs(expected: Path, actual: Path) -> List[str]:
    """Differences between two job folders (ignoring caches): [] when identical."""
    expected, actual = Path(expected), Path(actual)

    def files(root: Path):
        return {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        }

    if not actual.is_dir():
        return [f"{actual} does not exist"]
    a, b = files(expected), files(actual)
    diffs = [f"missing: {p}" for p in sorted(a - b)] + [f"unexpected: {p}" for p in sorted(b - a)]
    diffs += [f"differs: {p}" for p in sorted(a & b) if not filecmp.cmp(expected / p, actual / p, shallow=False)]
    return diffs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedxmodal.recipes.export", description="Export (or check) NVFlare job folders from job specs."
    )
    parser.add_argument("specs", nargs="+", help="job spec JSON files (see fedxmodal.recipes.spec)")
    parser.add_argument("--export-dir", default="jobs", help="folder receiving <name>/ (default: jobs)")
    parser.add_argument("--check", action="store_true", help="only check that the exported folders are up to date")
    ns = parser.parse_args(argv)
    status = 0
    for spec_path in ns.specs:
        name = load_spec(spec_path)["name"]
        if ns.check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = export_from_spec(spec_path, tmp)
                diffs = compare_job_dirs(fresh, Path(ns.export_dir) / name)
            if diffs:
                status = 1
                print(f"{Path(ns.export_dir) / name} is OUT OF DATE with {spec_path}:")
                print("  " + "\n  ".join(diffs[:50]))
                print(f"regenerate with: python -m fedxmodal.recipes.export {spec_path} --export-dir {ns.export_dir}")
            else:
                print(f"{Path(ns.export_dir) / name}: up to date")
        else:
            print(f"exported {export_from_spec(spec_path, ns.export_dir)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
