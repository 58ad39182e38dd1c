"""Building blocks every recipe (protocol) assembles a job from: the job with its model selector
and analytics, the resumable persistor, the site executor, the closing workflows (site-loss
monitor, cross-site evaluation), what a method declares to the output guard, and the code that
ships with the job -- only what runs at a site or on the server, never the host-side tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import fedxmodal
from fedxmodal.fl.client_args import format_client_args
from fedxmodal.fl.guard import DEFAULT_METRIC_PATTERNS
from fedxmodal.methods import method_class

from .filters import guarded_analytics
from .spec import JobSpec

SITE_SCRIPT = "fl/site.py"  # the one site script of every job, relative to the package

PACKAGE_DIR = Path(fedxmodal.__file__).resolve().parent
# Host-side parts of the package: CLI commands, job building, POC / provisioning / process control.
# A job ships the package without them (a hospital site receives only what it runs).
HOST_SIDE = ("apps", "recipes", "deploy", "cli.py", "__main__.py")
PERSISTOR_ID = "persistor"


def new_job(spec: JobSpec):
    """A BaseFedJob with the best-model selector (by the sites' validation ``key_metric``),
    TensorBoard streaming (scalars only when the output guard is on) and the resource spec."""
    from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
    from nvflare.job_config.base_fed_job import BaseFedJob

    from fedxmodal.fl.server import ResumableIntimeModelSelector

    job = BaseFedJob(
        name=spec.name,
        min_clients=spec.server.min_clients,
        model_selector=ResumableIntimeModelSelector(
            key_metric=spec.server.key_metric, weigh_by_local_iter=spec.server.selection_weigh_by_train_items,
            negate_key_metric=spec.server.key_metric_lower_is_better,
        ),
        analytics_receiver=TBAnalyticsReceiver(),
        convert_to_fed_event=guarded_analytics() if spec.privacy.output_guard else None,
    )
    resources = spec.packaging.resource_spec
    if resources:
        from nvflare.utils.job_launcher_utils import validate_portable_resource_spec

        validate_portable_resource_spec({k: dict(v) for k, v in resources.items()})
        for site, res in resources.items():
            job.job.add_resource_spec(site, dict(res))
    return job


def add_persistor(job, spec: JobSpec) -> str:
    """The resumable global-model persistor (``fedxmodal.fl.server``); returns its id."""
    from fedxmodal.fl.server import ResumablePTFileModelPersistor

    job.to_server(ResumablePTFileModelPersistor(model=spec.model, checkpoint_dir=spec.server.checkpoint_dir,
                                                resume=spec.server.resume), id=PERSISTOR_ID)
    return PERSISTOR_ID


def add_closing(job, spec: JobSpec) -> None:
    """After the protocol's workflows: the site-loss monitor, cross-site evaluation (optional) and
    the server's task polling interval."""
    from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
    from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator

    from fedxmodal.fl.faults import SiteLossMonitor

    job.to_server(SiteLossMonitor(persistor_id=PERSISTOR_ID), id="site_loss_monitor")
    if spec.server.cross_site_eval:
        job.to_server(PTFileModelLocator(pt_persistor_id=PERSISTOR_ID), id="model_locator")
        job.to_server(
            CrossSiteModelEval(model_locator_id="model_locator", task_check_period=float(spec.server.task_check_period)),
            id="cross_site_model_eval",
        )
    job.to_server({"server": {"task_request_interval": float(spec.server.task_request_interval)}})


def script_in_job(spec: JobSpec) -> str:
    """Where the site script runs from, relative to ``app/custom``."""
    script = Path(spec.site.client_script)
    if not script.is_file():
        raise FileNotFoundError(f"client script {script} not found")
    package = package_dir(spec)
    if script.resolve().is_relative_to(package):  # shipped with the package: run it in place
        return (Path(package.name) / script.resolve().relative_to(package)).as_posix()
    return script.name


def add_site_executor(job, spec: JobSpec) -> None:
    """The Client API executor running the site script on every task, in-process by default."""
    from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
    from nvflare.client.config import ExchangeFormat, TransferType

    site = spec.site
    args = {"model": spec.model, "key_metric": spec.server.key_metric, "poll_interval": site.client_poll_interval}
    args.update(site.client_args or {})
    script_args = format_client_args(args)
    script = script_in_job(spec)
    common = dict(
        params_exchange_format=ExchangeFormat.PYTORCH,
        server_expected_format=ExchangeFormat.NUMPY,
        params_transfer_type=TransferType(site.params_transfer_type.upper()),
    )
    if site.launch_external_process:
        command = f"{site.external_command} custom/{script} {script_args}"
        executor = ClientAPIExecutor(execution_mode="external_process", command=command, **common)
    else:
        executor = ClientAPIExecutor(
            execution_mode="in_process", task_script_path=script, task_script_args=script_args, **common
        )
    job.to_clients(executor, tasks=["*"])


def package_dir(spec: JobSpec) -> Path:
    package = Path(spec.packaging.package_dir).resolve() if spec.packaging.package_dir else PACKAGE_DIR
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package} is not a python package")
    return package


def runtime_sources(package: Path) -> List[Path]:
    """The package's files and sub-packages that run inside NVFlare (all but :data:`HOST_SIDE`)."""
    return sorted(p for p in package.iterdir()
                  if p.name not in HOST_SIDE and p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py"))


def ship_code(job, spec: JobSpec) -> None:
    """Copy the runtime part of the package (and a site script outside it, and ``extra_files``)
    into ``app/custom`` of the server and the sites (one app folder for both)."""
    from nvflare.job_config.file_source import FileSource

    package = package_dir(spec)
    for src in runtime_sources(package):
        dest = f"{package.name}/{src.name}" if src.is_dir() else package.name
        job.to_server(FileSource(str(src), dest_dir=dest))
        job.to_clients(FileSource(str(src), dest_dir=dest))
    script = Path(spec.site.client_script)
    copies = list(spec.packaging.extra_files)
    if not script.resolve().is_relative_to(package):
        copies.insert(0, str(script))
    for f in copies:
        job.to_clients(FileSource(f))
        job.to_server(FileSource(f))


def method_of(spec: JobSpec):
    """The method class the sites run (``client_args.method``; the registry's default if absent)."""
    return method_class(spec.site.client_args.get("method"))


def check_site_script(spec: JobSpec, method_cls) -> None:
    """A script of the package must be the one site script (``fl/site.py``, which runs every method
    by its registry entry); a script outside the package (the user's, a test's) is left alone."""
    script, package = Path(spec.site.client_script).resolve(), package_dir(spec)
    rel = script.relative_to(package).as_posix() if script.is_relative_to(package) else None
    if rel is not None and rel != SITE_SCRIPT:
        raise ValueError(f"job {spec.name}: method {method_cls.name!r} runs with the site script {SITE_SCRIPT}, "
                         f"the spec names {rel}")


def output_guard_args(spec: JobSpec, method_cls):
    """The output guard's arguments with what the method's sites send beyond weights and metrics
    (``guard_declarations``) added; None when the guard is off."""
    guard = spec.privacy.output_guard
    if not guard:
        return None
    ca = spec.site.client_args
    declared = method_cls.guard_declarations(int(ca.get("preprocess", {}).get("size", 128)),
                                             ca.get("train", {}).get("method_args", {}), model=spec.model)
    if not declared:
        return guard
    guard = dict(guard) if isinstance(guard, dict) else {}
    if declared.get("extra_tasks"):
        guard["extra_tasks"] = {**guard.get("extra_tasks", {}), **declared["extra_tasks"]}
    if declared.get("expected_shapes"):  # tensors sent with the model's (FedDA's shared discriminator)
        guard["expected_shapes"] = {**guard.get("expected_shapes", {}), **declared["expected_shapes"]}
    if declared.get("meta_keys"):  # short plain meta a method's sites send (the adaptation's error reason)
        guard["meta_keys"] = list(dict.fromkeys([*guard.get("meta_keys", []), *declared["meta_keys"]]))
    if declared.get("metrics"):
        guard["metrics"] = list(dict.fromkeys([*guard.get("metrics", DEFAULT_METRIC_PATTERNS), *declared["metrics"]]))
    return guard
