"""The result filters of a job: privacy / communication filters at the sites, the output guard
LAST, and the server's counterparts (dequantization, refusal reporting), one chain per task.

Host side: this wires components into a FedJob; the components themselves (``fedxmodal.fl.dp``,
``.quantization``, ``.guard``, ``.refusal``, ``.analytics``) are the runtime that ships.
"""

from __future__ import annotations

from typing import Any, Dict

from fedxmodal.utils import instantiate

# Filters whose semantics need weight DIFFERENCES (on full weights they would clip/zero/noise the
# weights themselves, or drop tensors from the global model): build_job requires DIFF for them.
DIFF_ONLY_FILTERS = {
    "fedxmodal.fl.dp.GaussianDPFilter",
    "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
    "nvflare.app_common.filters.PercentilePrivacy",
    "nvflare.app_common.filters.svt_privacy.SVTPrivacy",
    "nvflare.app_common.filters.SVTPrivacy",
    "nvflare.app_common.filters.exclude_vars.ExcludeVars",
    "nvflare.app_common.filters.ExcludeVars",
}


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def _check_exportable(obj, given: Dict[str, Any], path: str) -> None:
    """NVFlare's exporter writes a component's arguments back from same-named attributes; make
    sure every given argument survives (e.g. ExcludeVars compiles a regex string: use a list)."""
    attrs = vars(obj)
    for k, v in given.items():
        key = k if k in attrs else f"_{k}"
        if key not in attrs:
            raise ValueError(f"filter {path}: argument {k!r} is not kept as an attribute; it would be "
                             "missing from the exported job config")
        got = attrs[key]
        same = got == v or (isinstance(got, (list, tuple)) and isinstance(v, (list, tuple)) and list(got) == list(v))
        if not isinstance(same, bool) or not same:
            raise ValueError(f"filter {path}: argument {k}={v!r} becomes {got!r} and would not survive the "
                             "export to the job config" + (" (ExcludeVars: give a list of names, not a regex)"
                                                          if "ExcludeVars" in path else ""))


def add_result_filters(job, *, model, site_output_filters=(), server_input_filters=(), output_guard=None,
                       params_transfer_type: str = "FULL", tasks=None) -> None:
    """Wire the job's result filters (every recipe calls this).

    Sites: ``site_output_filters`` (``[{"path", "args"}]``, in order; update filters -- DP,
    PercentilePrivacy, SVTPrivacy, ExcludeVars -- on the ``train`` task only, and then
    :class:`LocalModelRefuser` on ``submit_model``), then -- when ``output_guard`` is truthy
    (``True`` or the :class:`~fedxmodal.fl.guard.OutputGuard` arguments other than ``model``) --
    the guard, LAST. Server: ``server_input_filters`` then
    :class:`~fedxmodal.fl.refusal.RefusedResultLogger`. Every chain lists ``tasks`` by name
    (NVFlare matches filter chains by exact task name; ``"*"`` would never apply).
    """
    from nvflare.job_config.defs import FilterType

    from fedxmodal.fl.guard import DEFAULT_TASKS, OutputGuard
    from fedxmodal.fl.refusal import LocalModelRefuser, RefusedResultLogger

    tasks = list(tasks or DEFAULT_TASKS)
    site_filters, update_only = [], []
    for spec in site_output_filters:
        if not isinstance(spec, dict) or "path" not in spec:
            raise ValueError(f'a filter is {{"path": "pkg.Class", "args": {{...}}}}, got {spec!r}')
        obj = instantiate(spec)
        _check_exportable(obj, dict(spec.get("args") or {}), spec["path"])
        is_update_filter = spec["path"] in DIFF_ONLY_FILTERS or _class_path(obj) in DIFF_ONLY_FILTERS
        if is_update_filter and params_transfer_type.upper() != "DIFF":
            raise ValueError(f"{spec['path']} works on model UPDATES: set params_transfer_type='DIFF' (on full "
                             "weights it would clip/zero/noise the weights themselves or drop tensors)")
        site_filters.append(obj)
        update_only.append(is_update_filter)
    guard = OutputGuard(model=model, **(dict(output_guard) if isinstance(output_guard, dict) else {})) \
        if output_guard else None
    # One chain per task: FedJob keeps a chain's tasks in a set, whose order (in the exported
    # config) would change from run to run; single-task chains export deterministically.
    # An update filter applies to the train task's update; the full local model that cross-site
    # evaluation asks for (submit_model) would bypass it, so it is refused in such a job.
    refuse_local_model = LocalModelRefuser() if any(update_only) else None
    for task in tasks:
        chain = [f for f, upd in zip(site_filters, update_only) if task == "train" or not upd]
        if task == "submit_model" and refuse_local_model is not None:
            chain.insert(0, refuse_local_model)
        for f in chain + ([guard] if guard is not None else []):
            job.to_clients(f, filter_type=FilterType.TASK_RESULT, tasks=[task])

    server_filters = []
    for spec in server_input_filters:
        obj = instantiate(spec)
        _check_exportable(obj, dict(spec.get("args") or {}), spec["path"])
        server_filters.append(obj)
    if output_guard or site_filters:
        server_filters.append(RefusedResultLogger())
    for task in tasks:
        for f in server_filters:
            job.to_server(f, filter_type=FilterType.TASK_RESULT, tasks=[task])



def guarded_analytics():
    """The sites' analytics forwarder that lets only scalar records through (output guard on)."""
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE

    from fedxmodal.fl.analytics import GuardedConvertToFedEvent

    return GuardedConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE])
