"""Build and export fedxmodal NVFlare jobs (NVFlare 2.9 FedJob API).

A job = FedAvg weighted by training slices (:class:`~fedxmodal.fl.server.ResumableFedAvg`), the
global model persisted every round and resumable
(:class:`~fedxmodal.fl.server.ResumablePTFileModelPersistor`), the best global model kept by the
sites' pre-training validation ``dice``
(:class:`~fedxmodal.fl.server.ResumableIntimeModelSelector`), cross-site evaluation
(``CrossSiteModelEval`` + ``PTFileModelLocator``), TensorBoard streaming (``TBAnalyticsReceiver``)
and, at the sites, a Client API script run in-process by ``ClientAPIExecutor``.

Every knob lives in the exported configuration: the server's in ``config_fed_server.json``
(component args), the sites' as ``--key=value`` script arguments in ``config_fed_client.json``
(``task_script_args``; read with :func:`fedxmodal.fl.client_loop.parse_client_args`). The model is
given once as ``{"path": "pkg.Class", "args": {...}}``; the server instantiates it for the initial
weights and the sites receive the same dict as ``--model``.

The code travels WITH the job: the whole ``fedxmodal`` package (from ``custom/``, the one source)
plus the client script and any extra files are copied into ``app/custom/``. NVFlare does not
follow a directory symlink when it packs a job (see docs/nvflare-notes.md), hence the copy.

Committed job folders (``jobs/<name>/``) are generated from spec files (``jobs/specs/<name>.json``)::

    python -m fedxmodal.fl.job jobs/specs/fedgin.json --export-dir jobs      # (re)generate
    python -m fedxmodal.fl.job jobs/specs/fedgin.json --export-dir jobs --check  # in sync?

A spec is a JSON object with the keyword arguments of :func:`build_job`; its relative paths
(``client_script``, ``extra_files``, ``package_dir``) are relative to the spec file.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import fedxmodal
from fedxmodal.fl.client_loop import format_client_args, instantiate

PACKAGE_DIR = Path(fedxmodal.__file__).resolve().parent

__all__ = ["build_job", "compare_job_dirs", "export_job", "export_from_spec", "load_spec", "main"]


def build_job(
    name: str,
    client_script: str,
    model: Mapping[str, Any],
    *,
    client_args: Optional[Mapping[str, Any]] = None,
    num_rounds: int = 2,
    min_clients: int = 2,
    clients_per_round: Optional[int] = None,
    key_metric: str = "dice",
    selection_weigh_by_train_items: bool = True,
    params_transfer_type: str = "FULL",
    checkpoint_dir: str = "fedxmodal_checkpoints",
    resume: bool = True,
    cross_site_eval: bool = True,
    task_request_interval: float = 0.2,
    task_check_period: float = 0.1,
    client_poll_interval: Optional[float] = 0.05,
    extra_files: Sequence[str] = (),
    package_dir: Optional[str] = None,
    launch_external_process: bool = False,
    resource_spec: Optional[Mapping[str, Mapping[str, Any]]] = None,
    pre_workflows: Sequence[Mapping[str, Any]] = (),
    aggregator: Optional[Mapping[str, Any]] = None,
    external_command: str = "python3 -u",
    site_output_filters: Sequence[Mapping[str, Any]] = (),
    server_input_filters: Sequence[Mapping[str, Any]] = (),
    output_guard: Any = None,
    ignore_result_error: Optional[bool] = None,
):
    """Build the FedJob (not yet written anywhere; see :func:`export_job`).

    Args:
        name: job name (meta.json ``name``; also the checkpoint sub-folder used for resume).
        client_script: path of the site's Client API script. A script inside the shipped package
            runs from there (``app/custom/fedxmodal/.../script.py``); any other is copied to
            ``app/custom/<basename>``.
        model: ``{"path": "pkg.module.Class", "args": {...}}`` -- built by the server for the
            initial weights (its class must be importable from the job's custom code) and passed
            to the sites as ``--model``.
        client_args: the site-side knobs (local epochs, seed, structures, ...), passed to the
            script as ``--key=value``; ``model`` and ``key_metric`` are added.
        num_rounds: total FL rounds. min_clients: sites required to start the job.
        clients_per_round: sites sampled (at random) each round; None: all connected sites.
        key_metric: validation metric that selects the best global model (higher is better).
        selection_weigh_by_train_items: average the sites' validation metric weighted by their
            number of training items (like FedAvg's weights) instead of one vote per site.
        params_transfer_type: ``"FULL"`` (sites return weights) or ``"DIFF"`` (the Client API
            turns them into differences to the received model).
        checkpoint_dir, resume: the resumable checkpoint folder (server-local, relative to the
            server workspace; ``$FEDXMODAL_CHECKPOINT_DIR`` overrides), see fedxmodal.fl.server.
        cross_site_eval: add cross-site evaluation (every site x every site's local model and the
            server's global/best models) after training.
        task_request_interval: how long (s) the server tells an idle site to wait before asking
            for a task again (NVFlare's default 2 s costs ~2 s per round).
        task_check_period: how often (s) the server controllers check their tasks (default 0.5).
        client_poll_interval: passed to the sites as ``--poll_interval`` for
            :func:`fedxmodal.fl.client_loop.init_site` (NVFlare's in-process Client API polls every
            0.5 s otherwise); None to leave NVFlare's default.
        extra_files: more files/folders copied into ``app/custom/`` (e.g. modules the client
            script imports that are not in the package).
        pre_workflows: server workflows run before FedAvg, each ``{"path": ..., "args": {...}}``
            (e.g. FedDG's ``fedxmodal.fl.feddg.AmplitudeExchange``).
        aggregator: ``{"path": ..., "args": {...}}`` of a ModelAggregator replacing FedAvg's
            weighted average (e.g. ``fedxmodal.fl.aggregators.FedBNAggregator``).
        package_dir: the ``fedxmodal`` package folder to ship (default: the imported one).
        launch_external_process: run the script in its own process (``<external_command>
            custom/<script>``, the site's ``python3`` by default) instead of inside the NVFlare
            client process (the default: faster, no extra process).
        resource_spec: what each site must give the job (meta.json ``resource_spec``), keyed by
            site name or ``"@default"`` (every site), e.g. ``{"@default": {"num_of_gpus": 1}}``;
            NVFlare schedules the job only where the site's resource manager grants it and sets
            the job process's ``CUDA_VISIBLE_DEVICES`` to the GPU(s) granted (docs/deployment.md).
        site_output_filters: task-result filters at every site, in order, each
            ``{"path": "pkg.Class", "args": {...}}`` (e.g. ``fedxmodal.fl.privacy.GaussianDPFilter``,
            NVFlare's ``PercentilePrivacy`` / ``SVTPrivacy`` / ``ExcludeVars``,
            ``fedxmodal.fl.privacy.ModelQuantizer``); update filters need ``params_transfer_type="DIFF"``.
        server_input_filters: task-result filters at the server (e.g. ``fedxmodal.fl.privacy.ModelDequantizer``).
        output_guard: ``True`` or the arguments of :class:`fedxmodal.fl.guard.OutputGuard` (e.g.
            ``{"metrics": ["dice", "dice_.*"]}``): the sites' LAST result filter, refusing anything but
            the job's tensors (names/shapes from ``model``) and scalar metrics; TensorBoard records
            are limited to scalars. See docs/privacy.md.
        ignore_result_error: FedAvg's policy for a failed or refused site result: None (NVFlare's
            default: go on without the site while enough sites remain, else stop the job), True
            (always go on), False (always stop).
    """
    from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
    from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
    from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
    from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
    from nvflare.client.config import ExchangeFormat, TransferType
    from nvflare.job_config.base_fed_job import BaseFedJob
    from nvflare.job_config.file_source import FileSource

    from fedxmodal.fl.server import ResumableFedAvg, ResumableIntimeModelSelector, ResumablePTFileModelPersistor
    from fedxmodal.fl.faults import SiteLossMonitor

    if not isinstance(model, Mapping) or "path" not in model:
        raise ValueError('model must be {"path": "pkg.module.Class", "args": {...}}')
    model = {"path": model["path"], "args": dict(model.get("args") or {})}
    script = Path(client_script)
    if not script.is_file():
        raise FileNotFoundError(f"client script {script} not found")
    package = Path(package_dir).resolve() if package_dir else PACKAGE_DIR
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package} is not a python package")
    if script.resolve().is_relative_to(package):  # shipped with the package: run it in place
        script_in_job = (Path(package.name) / script.resolve().relative_to(package)).as_posix()
        copies = list(extra_files)
    else:
        script_in_job = script.name
        copies = [str(script), *extra_files]

    job = BaseFedJob(
        name=name,
        min_clients=min_clients,
        model_selector=ResumableIntimeModelSelector(
            key_metric=key_metric, weigh_by_local_iter=selection_weigh_by_train_items
        ),
        analytics_receiver=TBAnalyticsReceiver(),
        convert_to_fed_event=_guarded_analytics() if output_guard else None,
    )
    if resource_spec:
        from nvflare.utils.job_launcher_utils import validate_portable_resource_spec

        validate_portable_resource_spec({k: dict(v) for k, v in resource_spec.items()})
        for site, spec in resource_spec.items():
            job.job.add_resource_spec(site, dict(spec))

    # ---- server
    job.to_server(
        ResumablePTFileModelPersistor(model=model, checkpoint_dir=checkpoint_dir, resume=resume), id="persistor"
    )
    for i, workflow in enumerate(pre_workflows):
        job.to_server(instantiate(workflow), id=f"pre_workflow_{i}")
    job.to_server(
        ResumableFedAvg(
            aggregator=instantiate(aggregator) if aggregator else None,
            num_clients=clients_per_round,
            num_rounds=num_rounds,
            persistor_id="persistor",
            task_check_period=float(task_check_period),
            ignore_result_error=ignore_result_error,
        ),
        id="fedavg",
    )
    job.to_server(SiteLossMonitor(persistor_id="persistor"), id="site_loss_monitor")  # fl/faults.py
    if cross_site_eval:
        job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
        job.to_server(
            CrossSiteModelEval(model_locator_id="model_locator", task_check_period=float(task_check_period)),
            id="cross_site_model_eval",
        )
    job.to_server({"server": {"task_request_interval": float(task_request_interval)}})

    # ---- sites
    args = {"model": model, "key_metric": key_metric, "poll_interval": client_poll_interval}
    args.update(client_args or {})
    script_args = format_client_args(args)
    common = dict(
        params_exchange_format=ExchangeFormat.PYTORCH,
        server_expected_format=ExchangeFormat.NUMPY,
        params_transfer_type=TransferType(params_transfer_type.upper()),
    )
    if launch_external_process:
        command = f"{external_command} custom/{script_in_job} {script_args}"
        executor = ClientAPIExecutor(execution_mode="external_process", command=command, **common)
    else:
        executor = ClientAPIExecutor(
            execution_mode="in_process", task_script_path=script_in_job, task_script_args=script_args, **common
        )
    job.to_clients(executor, tasks=["*"])

    # ---- what leaves a site: privacy / communication filters, then the output guard (last)
    from fedxmodal.fl.privacy import add_result_filters

    add_result_filters(job, model=model, site_output_filters=site_output_filters,
                       server_input_filters=server_input_filters, output_guard=output_guard,
                       params_transfer_type=params_transfer_type)

    # ---- code shipped with the job (one app folder for server and sites)
    job.to_server(FileSource(str(package), dest_dir=package.name))
    job.to_clients(FileSource(str(package), dest_dir=package.name))
    for f in copies:
        job.to_clients(FileSource(f))
        job.to_server(FileSource(f))
    return job


def _guarded_analytics():
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE

    from fedxmodal.fl.guard import GuardedConvertToFedEvent

    return GuardedConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE])


def _clean(tree: Path) -> None:
    for p in sorted(tree.rglob("*"), reverse=True):
        if p.name == "__pycache__" and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.suffix in (".pyc", ".pyo") or p.name == ".DS_Store":
            p.unlink(missing_ok=True)


def export_job(job_root: str, name: str, client_script: str, model: Mapping[str, Any], **kwargs) -> Path:
    """Build (see :func:`build_job`) and write the job folder ``<job_root>/<name>``; returns its path.

    An existing folder of the same job is replaced. Byte-identical for identical inputs.
    """
    job = build_job(name, client_script, model, **kwargs)
    job_root = Path(job_root)
    job_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=job_root, prefix=f".{name}.export.") as tmp:
        job.export_job(tmp)
        out = Path(tmp) / name
        _clean(out)
        dest = job_root / name
        if dest.exists():
            if not (dest / "meta.json").is_file():
                raise RuntimeError(f"{dest} exists and is not a job folder; not replacing it")
            shutil.rmtree(dest)
        shutil.move(str(out), str(dest))
    return dest


def load_spec(path: str) -> Dict[str, Any]:
    """Read a job spec (build_job kwargs as JSON); relative paths become relative to the spec file."""
    path = Path(path)
    spec = json.loads(path.read_text())
    spec.pop("_comment", None)
    base = path.resolve().parent

    def rel(p):
        p = Path(p)
        return str(p if p.is_absolute() else (base / p).resolve())

    spec["client_script"] = rel(spec["client_script"])
    spec["extra_files"] = [rel(p) for p in spec.get("extra_files", [])]
    if spec.get("package_dir"):
        spec["package_dir"] = rel(spec["package_dir"])
    return spec


def export_from_spec(spec_path: str, job_root: str) -> Path:
    """Export the job a spec file describes into ``<job_root>/<name>``."""
    spec = load_spec(spec_path)
    return export_job(job_root, **spec)


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
        prog="python -m fedxmodal.fl.job", description="Export (or check) NVFlare job folders from job specs."
    )
    parser.add_argument("specs", nargs="+", help="job spec JSON files (build_job keyword arguments)")
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
                print(f"regenerate with: python -m fedxmodal.fl.job {spec_path} --export-dir {ns.export_dir}")
            else:
                print(f"{Path(ns.export_dir) / name}: up to date")
        else:
            print(f"exported {export_from_spec(spec_path, ns.export_dir)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
