"""What may leave a site: the output guard (site side) and its counterparts on the server.

:class:`OutputGuard` is a task-result filter that the job puts LAST in every site's result chain.
It lets a result through only if it is what the job declares:

* ``train`` / ``submit_model``: model weights or weight differences (``WEIGHTS`` /
  ``WEIGHT_DIFF``) whose every tensor has a declared name and exactly the declared shape (the
  state dict of the job's model, built from the job's ``{"path", "args"}`` model spec, or
  ``expected_shapes``) and a numeric dtype. Missing tensors are allowed (partial sharing,
  ``ExcludeVars``); an unknown name, a wrong shape, a non-numeric value is not. A quantized
  payload (NVFlare's ``ModelQuantizer``) is dequantized on a copy and checked the same way.
* ``validate``: metrics only.
* Metrics (the ``validate`` result, the validation metrics sent with a ``train`` result): a flat
  mapping of allowed names (``metrics``: regular expressions, full match) to scalars.
* DXO meta: the keys NVFlare itself writes (``NUM_STEPS_CURRENT_ROUND``, ``initial_metrics``,
  the quantizer's and SVTPrivacy's bookkeeping) and ``meta_keys``; headers: the Client API's
  round counters. Nothing else at the top level of the result.
* Any other task: refused unless declared in ``extra_tasks`` (e.g. FedDG's amplitude exchange:
  ``{"share_amplitudes": {"params": {"amplitudes": [null, 1, 25, 25]}}}``; ``null`` = any size).

Anything else is refused: the reason is logged at the site (ERROR), the result is replaced by an
empty error reply (``ReturnCode.EXECUTION_RESULT_ERROR``) that carries only the reason in the
header ``fedxmodal_output_refused`` (names, shapes and dtypes -- never values), so nothing of
the refused payload leaves the site (:mod:`fedxmodal.fl.refusal`). On the server,
:class:`~fedxmodal.fl.refusal.RefusedResultLogger` logs that
reason; FedAvg never aggregates an error result (with NVFlare's default policy the round goes on
without the site if enough sites remain, else the job stops; ``ignore_result_error=True`` always
goes on), cross-site evaluation ignores it.

NVFlare applies job filters only to the task names listed in the chain (``"*"`` is NOT a
wildcard there: such a chain is silently never applied). The job lists the tasks it knows; the
guard also listens to ``AFTER_TASK_RESULT_FILTER`` and checks the result of any task that no
chain covered, so a task the job builder did not foresee cannot bypass it.

:class:`fedxmodal.fl.analytics.GuardedConvertToFedEvent` replaces NVFlare's ``ConvertToFedEvent`` at the sites: the
TensorBoard stream (``analytix_log_stats`` events) is the other channel from a site to the
server; only scalar records with short plain tags are forwarded.

The guard checks STRUCTURE, not information content: a malicious site script can still encode
data in the values of the weights or metrics it is allowed to send (that is what differential
privacy, ``fedxmodal.fl.dp``, bounds), and code running at a site can open its own network
connections (process isolation is the deployment's job). It stops the realistic failures: a
method or a bug that sends images, labels, per-case values or extra tensors.
"""

from __future__ import annotations

import copy
import numbers
import re
import weakref
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply

from fedxmodal.fl.payload import (NUMERIC_KINDS, describe_value, dtype_kind, is_array, is_scalar, payload_bytes,
                                  shape_matches, shape_of, small_plain)
from fedxmodal.fl.refusal import REFUSED_HEADER, refuse
from fedxmodal.utils import instantiate

__all__ = [
    "DEFAULT_METRIC_PATTERNS",
    "DEFAULT_TASKS",
    "OutputGuard",
    "OutputRefused",
    "describe_value",
    "is_scalar",
    "payload_bytes",
]

DEFAULT_TASKS = ("train", "validate", "submit_model")  # what fedxmodal jobs send to the sites
DEFAULT_METRIC_PATTERNS = (r"[A-Za-z_][A-Za-z0-9_.\-/]{0,63}",)  # any plain name; jobs narrow it
_MODEL_TASKS = ("train", "submit_model")

# DXO meta keys NVFlare's own components write on a site's result.
_QUANT_META = {MetaKey.PROCESSED_ALGORITHM, "quant_state", "source_datatype", "quantized_flag"}
_SVT_META = {"svt_privacy_budget", "svt_privacy_accountant"}
_PLAIN_META = _SVT_META | {"filter_history"}  # DXOFilter records the filters applied
_QUANT_STATE_KEYS = {  # per tensor, as written by nvflare.app_opt.pt.quantization
    "offset", "quantization_level", "new_dtype", "tensor_shape", "norm", "compressed_tensor",  # adaquant
    "absmax", "code",  # blockwise8
    "quant_type", "blocksize", "quant_map", "dtype", "shape", "nested_absmax", "nested_blocksize",
    "nested_quant_map", "nested_dtype", "nested_offset",  # 4-bit
}
# Headers a Client API result carries when it reaches the result filters (plus return code).
_ALLOWED_HEADERS = {
    ReservedHeaderKey.CONTENT_TYPE, ReservedHeaderKey.RC, "start_round", "current_round", "num_rounds",
    "validate_type", "__task_name__", "__task_id__", "__workflow__", "__audit_event_id__",
}
_CHECKED: Dict[int, "weakref.ref"] = {}  # results a guard has checked (weak: nothing is added to them)


def _mark_checked(result) -> None:
    key = id(result)
    _CHECKED[key] = weakref.ref(result, lambda _r, k=key: _CHECKED.pop(k, None))


def _was_checked(result) -> bool:
    ref = _CHECKED.get(id(result))
    return ref is not None and ref() is result


class OutputRefused(Exception):
    """A result that may not leave the site; ``str(exc)`` is the reason."""


# ----------------------------------------------------------------------------------- the guard
class OutputGuard(Filter):
    """Task-result filter: refuses (see module doc) any result that is not what the job declares.

    Args:
        model: the job's model spec ``{"path": "pkg.Class", "args": {...}}`` (or the model object:
            NVFlare's config loader builds such a spec); its state dict gives the declared tensor
            names and shapes (built once, at the site, on first use).
        expected_shapes: ``{name: [dims]}`` instead of (or on top of) ``model``.
        metrics: regular expressions (full match) of the metric names a site may send.
        meta_keys: further DXO meta keys allowed (values: scalars, short strings, small dicts).
        extra_tasks: ``{task: {"params": {name: [dims or null]}, "metrics": true}}`` for a job's own
            tasks (``null`` dims: any size); a declared task may send those params and/or metrics.
        max_metrics: most metric entries in one result.
    """

    _always_serialize_args = ("model", "metrics")

    def __init__(
        self,
        model: Optional[Mapping[str, Any]] = None,
        expected_shapes: Optional[Mapping[str, Sequence[int]]] = None,
        metrics: Sequence[str] = DEFAULT_METRIC_PATTERNS,
        meta_keys: Sequence[str] = (),
        extra_tasks: Optional[Mapping[str, Mapping[str, Any]]] = None,
        max_metrics: int = 256,
    ):
        super().__init__()
        if model is None and expected_shapes is None:
            raise ValueError("OutputGuard needs the job's model spec or the expected shapes")
        # NVFlare's config loader builds a {"path", "args"} argument into the object itself.
        self.model = dict(model) if isinstance(model, Mapping) else model
        self.expected_shapes = {k: list(v) for k, v in (expected_shapes or {}).items()} or None
        self.metrics = list(metrics)
        self.meta_keys = list(meta_keys)
        self.extra_tasks = {k: dict(v) for k, v in (extra_tasks or {}).items()} or None
        self.max_metrics = int(max_metrics)
        self._metric_res = [re.compile(p) for p in self.metrics]
        self._shapes: Optional[Dict[str, Tuple[int, ...]]] = None

    # ---- declared tensors
    def declared_shapes(self) -> Dict[str, Tuple[int, ...]]:
        if self._shapes is None:
            shapes: Dict[str, Tuple[int, ...]] = {}
            if self.model is not None:
                net = instantiate(self.model) if isinstance(self.model, Mapping) else self.model
                shapes.update({k: tuple(int(d) for d in v.shape) for k, v in net.state_dict().items()})
            for k, v in (self.expected_shapes or {}).items():
                shapes[k] = tuple(int(d) for d in v)
            self._shapes = shapes
        return self._shapes

    # ---- checks (raise OutputRefused)
    def _check_metrics(self, metrics, where: str) -> None:
        if not isinstance(metrics, Mapping):
            raise OutputRefused(f"{where} must be a mapping of scalars, got {describe_value(metrics)}")
        if len(metrics) > self.max_metrics:
            raise OutputRefused(f"{where}: {len(metrics)} entries (at most {self.max_metrics})")
        for k, v in metrics.items():
            if not isinstance(k, str) or not any(r.fullmatch(k) for r in self._metric_res):
                raise OutputRefused(f"{where}: metric name {str(k)[:80]!r} is not declared")
            if not is_scalar(v):
                raise OutputRefused(f"{where}: metric {k!r} is not a scalar ({describe_value(v)})")

    def _check_tensors(self, params, declared: Mapping[str, Sequence[Optional[int]]], where: str) -> None:
        if not isinstance(params, Mapping):
            raise OutputRefused(f"{where} must be a mapping of tensors, got {describe_value(params)}")
        for k, v in params.items():
            if k not in declared:
                raise OutputRefused(f"{where}: undeclared entry {str(k)[:120]!r} ({describe_value(v)})")
            if not is_array(v) and not isinstance(v, (numbers.Number, np.generic)):
                raise OutputRefused(f"{where}: {k!r} is not a tensor ({describe_value(v)})")
            shape = shape_of(v) if is_array(v) else ()
            if not shape_matches(declared[k], shape):
                raise OutputRefused(f"{where}: {k!r} has shape {shape}, declared {tuple(declared[k])}")
            kind = dtype_kind(v) if is_array(v) else np.asarray(v).dtype.kind
            if kind not in NUMERIC_KINDS:
                raise OutputRefused(f"{where}: {k!r} is not numeric ({describe_value(v)})")

    def _dequantized_copy(self, dxo: DXO, where: str) -> Dict[str, Any]:
        """NVFlare's dequantization applied to a copy (the quantized payload itself is what leaves)."""
        params, meta = dxo.data, dxo.meta
        qtype = meta.get(MetaKey.PROCESSED_ALGORITHM)
        state, source = meta.get("quant_state"), meta.get("source_datatype")
        if not isinstance(qtype, str) or not isinstance(state, Mapping) or not isinstance(source, Mapping):
            raise OutputRefused(f"{where}: incomplete quantization metadata")
        for k, st in state.items():
            if k not in params:
                raise OutputRefused(f"{where}: quantization state for an entry not in the payload: {str(k)[:120]!r}")
            if not isinstance(st, Mapping) or not set(st) <= _QUANT_STATE_KEYS:
                raise OutputRefused(f"{where}: unexpected quantization state for {k!r}")
        if set(source) != set(params) or not all(isinstance(v, str) and len(v) <= 16 for v in source.values()):
            raise OutputRefused(f"{where}: quantization source types do not match the payload")
        from fedxmodal.fl.quantization import ModelDequantizer

        try:
            decoded = ModelDequantizer().dequantize_params(copy.deepcopy(dict(params)), copy.deepcopy(dict(state)),
                                                           qtype, dict(source))
        except Exception as e:  # a payload that does not decode is not what the job declared
            raise OutputRefused(f"{where}: quantized payload does not decode ({type(e).__name__}: {e})") from None
        for k, v in decoded.items():  # the encoded form may not be larger than the tensor it encodes
            n = int(np.prod(shape_of(v))) if is_array(v) else 1
            sent = payload_bytes(params[k]) + payload_bytes(state.get(k))
            if sent > 4 * n + 4096:
                raise OutputRefused(f"{where}: quantized {str(k)[:120]!r} takes {sent} bytes for {n} values")
        return decoded

    def _check_meta(self, meta: Mapping[str, Any], quantized: bool, where: str) -> None:
        for k, v in meta.items():
            if k == MetaKey.INITIAL_METRICS:
                self._check_metrics(v, f"{where} validation metrics")
            elif k == MetaKey.NUM_STEPS_CURRENT_ROUND:
                if not is_scalar(v):
                    raise OutputRefused(f"{where}: {k} is not a number ({describe_value(v)})")
            elif k in _QUANT_META:
                if not quantized:
                    raise OutputRefused(f"{where}: quantization metadata {k!r} on a payload that is not quantized")
            elif k in _PLAIN_META or k in self.meta_keys:
                if not small_plain(v):
                    raise OutputRefused(f"{where}: meta {k!r} is not small plain data ({describe_value(v)})")
            else:
                raise OutputRefused(f"{where}: undeclared meta entry {str(k)[:80]!r} ({describe_value(v)})")

    def check(self, task_name: str, result: Shareable) -> Dict[str, Any]:
        """Raise :class:`OutputRefused` unless ``result`` may leave; else return what it holds."""
        where = f"{task_name} result"
        extra = (self.extra_tasks or {}).get(task_name)
        if task_name not in DEFAULT_TASKS and extra is None:
            raise OutputRefused(f"task {task_name!r} is not declared by the job (declare it in extra_tasks)")
        if not isinstance(result, Shareable):
            raise OutputRefused(f"{where} is a {type(result).__name__}, not a Shareable")
        for k in result:
            if k not in (ReservedHeaderKey.HEADERS, "DXO"):
                raise OutputRefused(f"{where}: undeclared top-level entry {str(k)[:80]!r} ({describe_value(result[k])})")
        for k, v in (result.get(ReservedHeaderKey.HEADERS) or {}).items():
            if k not in _ALLOWED_HEADERS and k != REFUSED_HEADER:
                raise OutputRefused(f"{where}: undeclared header {str(k)[:80]!r} ({describe_value(v)})")
            if not (v is None or is_scalar(v) or (isinstance(v, str) and len(v) <= 256)):
                raise OutputRefused(f"{where}: header {k!r} is not a scalar ({describe_value(v)})")
        try:
            dxo = from_shareable(result)
        except Exception as e:
            raise OutputRefused(f"{where} is not a DXO ({type(e).__name__})") from None
        kind, data = dxo.data_kind, dxo.data
        quantized = bool(dxo.get_meta_prop("quantized_flag"))
        self._check_meta(dxo.meta or {}, quantized and kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF), where)

        stats = {"kind": kind, "tensors": 0, "metrics": 0, "bytes": payload_bytes(data) + payload_bytes(dxo.meta)}
        if kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            if extra is not None and "params" in extra:
                declared = {k: list(v) for k, v in extra["params"].items()}
            elif task_name in _MODEL_TASKS:
                declared = self.declared_shapes()
            else:
                raise OutputRefused(f"{where}: task {task_name!r} may not send tensors")
            params = self._dequantized_copy(dxo, where) if quantized else data
            self._check_tensors(params, declared, where)
            stats["tensors"] = len(params)
        elif kind == DataKind.METRICS:
            if task_name in _MODEL_TASKS or (extra is not None and not extra.get("metrics", False)):
                raise OutputRefused(f"{where}: task {task_name!r} may not send metrics only")
            self._check_metrics(data, f"{where} metrics")
            stats["metrics"] = len(data)
        else:
            raise OutputRefused(f"{where}: data kind {kind} is not declared")
        if MetaKey.INITIAL_METRICS in (dxo.meta or {}):
            stats["metrics"] += len(dxo.meta[MetaKey.INITIAL_METRICS])
        return stats

    # ---- NVFlare entry points
    def _guard(self, result: Shareable, fl_ctx: FLContext) -> Shareable:
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME) or (result.get_header(ReservedKey.TASK_NAME) if
                                                           isinstance(result, Shareable) else None) or "?"
        site = fl_ctx.get_identity_name()
        if isinstance(result, Shareable) and result.get_return_code() != ReturnCode.OK:
            # An error reply carries nothing but its code (and an earlier refusal's reason).
            clean = make_reply(result.get_return_code())
            reason = result.get_header(REFUSED_HEADER)
            if isinstance(reason, str):
                clean.set_header(REFUSED_HEADER, reason[:1000])
            return clean
        try:
            stats = self.check(str(task), result)
        except OutputRefused as e:
            reason = str(e)
            self.log_error(fl_ctx, f"OUTPUT GUARD REFUSED the {task} result of {site}: {reason}. "
                                   "Nothing of it leaves the site.")
            return refuse(reason)
        self.log_info(fl_ctx, f"output guard: {task} result of {site} accepted: {stats['kind']}, "
                              f"{stats['tensors']} tensors, {stats['metrics']} metrics, "
                              f"payload_bytes={stats['bytes']}")
        return result

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        out = self._guard(shareable, fl_ctx)
        _mark_checked(out)
        return out

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN and self.model is not None:
            try:
                n = len(self.declared_shapes())
                self.log_info(fl_ctx, f"output guard: {n} declared tensors, metrics {self.metrics}")
            except Exception as e:  # refused later, result by result, with the reason
                self.log_error(fl_ctx, f"output guard: cannot build the job's model {self.model}: {e}")
        elif event_type == EventType.AFTER_TASK_RESULT_FILTER:
            # Catch-all for a task whose result chain does not include this guard.
            # (Every guard instance -- one per task chain -- gets the event; the first one checks.)
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            if not isinstance(result, Shareable) or _was_checked(result):
                return
            out = self._guard(result, fl_ctx)
            if out is not result:  # replace the reply in place: the runner sends this object
                result.clear()
                result.update(out)
            _mark_checked(result)
