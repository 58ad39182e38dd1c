"""Refused results: how a site says "not sent" and how the server reports it.

A refused result is an empty error reply (``ReturnCode.EXECUTION_RESULT_ERROR``) that carries only
the reason, in the header :data:`REFUSED_HEADER` (names, shapes and dtypes -- never values).
FedAvg never aggregates an error result; :class:`RefusedResultLogger` logs the reason on the server.
"""

from __future__ import annotations

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

__all__ = ["REFUSED_HEADER", "LocalModelRefuser", "RefusedResultLogger", "carries_full_weights", "refuse",
           "refuse_full_weights"]

REFUSED_HEADER = "fedxmodal_output_refused"


def refuse(reason: str) -> Shareable:
    """The empty error reply that replaces a refused result (the reason only, at most 1000 chars)."""
    reply = make_reply(ReturnCode.EXECUTION_RESULT_ERROR)
    reply.set_header(REFUSED_HEADER, reason[:1000])
    return reply


def carries_full_weights(shareable: Shareable) -> bool:
    try:
        return from_shareable(shareable).data_kind == DataKind.WEIGHTS
    except Exception:
        return False


def refuse_full_weights(component, fl_ctx: FLContext, reason: str) -> Shareable:
    component.log_warning(fl_ctx, f"REFUSED a full-weights result: {reason}")
    return refuse(reason)


class LocalModelRefuser(Filter):
    """Refuses a site's full local weights (cross-site evaluation's ``submit_model``) in a job
    whose update filters (DP, PercentilePrivacy, SVTPrivacy, ExcludeVars) they would bypass."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code() != ReturnCode.OK or not carries_full_weights(shareable):
            return shareable
        return refuse_full_weights(self, fl_ctx, (
            "this job filters the model updates a site sends (privacy); its full local weights would "
            "bypass those filters and are not sent"))


class RefusedResultLogger(Filter):
    """Server task-result filter: logs (ERROR) every result a site's output guard refused, with
    the site's reason; the result itself is an error reply that FedAvg never aggregates."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        reason = shareable.get_header(REFUSED_HEADER) if isinstance(shareable, Shareable) else None
        if reason:
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer else "?"
            task = fl_ctx.get_prop(FLContextKey.TASK_NAME) or shareable.get_header(ReservedKey.TASK_NAME) or "?"
            self.log_error(fl_ctx, f"result of task {task} from {site} REFUSED by the site's output guard "
                                   f"(rc={shareable.get_return_code()}): {reason}; not used")
        return shareable
