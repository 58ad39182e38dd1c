"""The analytics channel from a site to the server, guarded: :class:`GuardedConvertToFedEvent`
replaces NVFlare's ``ConvertToFedEvent`` at the sites (the TensorBoard stream, ``analytix_log_stats``
events, is the other way data leaves a site besides task results)."""

from __future__ import annotations

import re
from typing import List, Mapping, Optional

from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent

from fedxmodal.fl.payload import describe_value, is_scalar

__all__ = ["GuardedConvertToFedEvent"]


class GuardedConvertToFedEvent(ConvertToFedEvent):
    """NVFlare's ``ConvertToFedEvent`` that forwards only scalar analytics (TensorBoard scalars,
    metrics) with plain tags to the server; anything else (images, text, arrays) is dropped at
    the site with a logged reason."""

    ALLOWED_TYPES = ("SCALAR", "SCALARS", "METRIC", "METRICS")
    _TAG = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")

    def __init__(self, events_to_convert: List[str], fed_event_prefix: str = "fed."):
        super().__init__(events_to_convert=events_to_convert, fed_event_prefix=fed_event_prefix)

    def _reason(self, data) -> Optional[str]:
        try:
            dxo = from_shareable(data)
        except Exception:
            return "not a DXO"
        dtype = dxo.get_meta_prop("analytics_data_type")
        dtype = getattr(dtype, "value", dtype)
        if str(dtype) not in self.ALLOWED_TYPES:
            return f"data type {dtype}"
        d = dxo.data or {}
        tag, value = d.get("track_key"), d.get("track_value")
        if not isinstance(tag, str) or not self._TAG.fullmatch(tag):
            return "tag is not a plain name"
        values = value.values() if isinstance(value, Mapping) else [value]
        if isinstance(value, Mapping) and (len(value) > 64 or not all(
                isinstance(k, str) and self._TAG.fullmatch(k) for k in value)):
            return "non-plain scalar names"
        if not all(is_scalar(v) for v in values):
            return f"value is not a scalar ({describe_value(value)})"
        return None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type in self.events_to_convert:
            data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
            if isinstance(data, Shareable) and fl_ctx.get_prop(FLContextKey.EVENT_SCOPE) != "federation":
                reason = self._reason(data)
                if reason:
                    self.log_error(fl_ctx, f"OUTPUT GUARD: analytics record not forwarded to the server: {reason}")
                    return
        super().handle_event(event_type, fl_ctx)

