"""The FedAvg recipe: FedGIN's protocol, and every method of ``fedxmodal.methods`` federated.

FedAvg weighted by the sites' training slices (:class:`~fedxmodal.fl.server.ResumableFedAvg`);
the global model persisted every round and resumable; the best global model kept by the sites'
pre-training validation ``key_metric``; cross-site evaluation; TensorBoard streaming; at the
sites, the job's Client API script in-process. What the method adds on the server (FedDG's
amplitude exchange before FedAvg, FedBN's aggregator, FedDA's per-site payloads, FedProx's
coefficient) and declares to the output guard comes from
the method's own module (``server_parts`` / ``guard_declarations``), looked up by its name in
``client_args.method``.
"""

from __future__ import annotations

from fedxmodal.utils import instantiate

from .components import (add_closing, add_persistor, add_site_executor, check_site_script, method_of, new_job,
                         output_guard_args, ship_code)
from .filters import add_result_filters
from .spec import JobSpec

__all__ = ["build_fedavg_job"]


def build_fedavg_job(spec: JobSpec):
    """The FedJob of ``spec`` (not yet written anywhere; see :func:`fedxmodal.recipes.export.export_job`)."""
    from fedxmodal.fl.server import ResumableFedAvg

    method_cls = method_of(spec)
    check_site_script(spec, method_cls)
    parts = method_cls.server_parts(spec.server.min_clients, spec.site.client_args.get("train", {}).get("method_args", {}))
    job = new_job(spec)
    persistor = add_persistor(job, spec)
    for i, workflow in enumerate(parts.pre_workflows):
        job.to_server(instantiate(workflow), id=f"pre_workflow_{i}")
    job.to_server(
        ResumableFedAvg(
            aggregator=instantiate(parts.aggregator) if parts.aggregator else None,
            num_clients=spec.server.clients_per_round,
            sample_seed=spec.server.client_sampling_seed,
            num_rounds=spec.server.num_rounds,
            persistor_id=persistor,
            task_check_period=float(spec.server.task_check_period),
            ignore_result_error=spec.server.ignore_result_error,
            site_payloads=instantiate(parts.site_payloads) if parts.site_payloads else None,
            **parts.fedavg_args,
        ),
        id="fedavg",
    )
    add_closing(job, spec)
    add_site_executor(job, spec)
    add_result_filters(job, model=spec.model, site_output_filters=spec.privacy.site_output_filters,
                       server_input_filters=spec.privacy.server_input_filters,
                       output_guard=output_guard_args(spec, method_cls),
                       params_transfer_type=spec.site.params_transfer_type)
    ship_code(job, spec)
    return job
