"""The adaptation recipe: a protocol of a method's own tasks around a frozen model, no FedAvg
(the data factory's phase 2, ``jobs/specs/factory_adapt.json``).

The server runs the method's server workflow(s) (``server_parts().pre_workflows``), each given
the job's model args as ``model_args`` (the network the sites train: its settings describe the
frozen model too); no persistor, no model selection, no cross-site evaluation. The sites run the
method's site script with its task handlers; the output guard checks every task the method
declares (``guard_declarations``: ``extra_tasks``), and nothing else may leave.
"""

from __future__ import annotations

from fedxmodal.utils import instantiate

from .components import add_site_executor, check_site_script, method_of, new_job, output_guard_args, ship_code
from .filters import add_result_filters
from .spec import JobSpec

__all__ = ["build_adaptation_job"]


def build_adaptation_job(spec: JobSpec):
    """The FedJob of ``spec`` (see :func:`fedxmodal.recipes.export.export_job`)."""
    method_cls = method_of(spec)
    check_site_script(spec, method_cls)
    method_args = spec.site.client_args.get("train", {}).get("method_args", {})
    parts = method_cls.server_parts(spec.server.min_clients, method_args)
    if not parts.pre_workflows or parts.aggregator or parts.site_payloads:
        raise ValueError(f"job {spec.name}: the adaptation recipe runs a method's server workflows only; "
                         f"method {method_cls.name!r} has {parts}")
    guard = output_guard_args(spec, method_cls)
    if not guard:
        raise ValueError(f"job {spec.name}: the adaptation recipe needs the output guard (output_guard in the spec)")
    tasks = sorted(guard.get("extra_tasks") or {})
    if not tasks:
        raise ValueError(f"job {spec.name}: method {method_cls.name!r} declares no task of its own")
    job = new_job(spec)
    for i, workflow in enumerate(parts.pre_workflows):
        job.to_server(instantiate({"path": workflow["path"], "args": {**workflow["args"], "model_args": spec.model["args"]}}),
                      id=f"workflow_{i}")
    job.to_server({"server": {"task_request_interval": float(spec.server.task_request_interval)}})
    add_site_executor(job, spec)
    add_result_filters(job, model=spec.model, site_output_filters=spec.privacy.site_output_filters,
                       server_input_filters=spec.privacy.server_input_filters, output_guard=guard,
                       params_transfer_type=spec.site.params_transfer_type, tasks=tasks)
    ship_code(job, spec)
    return job
