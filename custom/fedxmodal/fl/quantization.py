"""Quantized model updates: :class:`ModelQuantizer` (site output filter) and
:class:`ModelDequantizer` (server input filter) are NVFlare's ``nvflare.app_opt.pt.quantization`` with two fixes for our models: integer tensors
(BatchNorm's ``num_batches_tracked``) pass through unquantized (NVFlare's raises on them), and
the modules import without ``bitsandbytes`` (a CPU site has none): ``float16`` and ``adaquant``
then work; ``blockwise8`` / ``float4`` / ``normfloat4`` need ``bitsandbytes`` and a CUDA GPU, as in
NVFlare, and fail with a clear message otherwise.

The two classes are built on first use (:func:`__getattr__`), so that importing this module (or
building a job) never touches ``sys.modules``; the bitsandbytes stand-in exists only while NVFlare's
quantization modules are imported.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Optional

import numpy as np

from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

__all__ = ["ModelDequantizer", "ModelQuantizer"]

_BNB_TYPES = ("blockwise8", "float4", "normfloat4")
_FLOAT_TYPES = ("float32", "float16", "bfloat16")


def _bitsandbytes_available() -> bool:
    try:
        import bitsandbytes.functional  # noqa: F401

        return True
    except Exception:
        return False


def _import_nvflare_quantization():
    """NVFlare's quantizer and dequantizer classes. Their modules import ``bitsandbytes`` at the
    top although only the 8/4-bit types use it; without it, a stand-in is put in ``sys.modules``
    for the duration of the import (and removed after) whose functions raise a clear error."""
    if not _bitsandbytes_available():
        def _missing(*args, **kwargs):
            raise RuntimeError("8-/4-bit quantization (blockwise8, float4, normfloat4) needs the "
                               "bitsandbytes package and a CUDA GPU; use float16 or adaquant")

        fake = types.ModuleType("bitsandbytes")
        fake_f = types.ModuleType("bitsandbytes.functional")
        for name in ("quantize_4bit", "quantize_blockwise", "dequantize_4bit", "dequantize_blockwise", "QuantState"):
            setattr(fake_f, name, _missing)
        fake.functional = fake_f
        saved = {k: sys.modules.get(k) for k in ("bitsandbytes", "bitsandbytes.functional")}
        sys.modules.update({"bitsandbytes": fake, "bitsandbytes.functional": fake_f})
        try:
            from nvflare.app_opt.pt.quantization import dequantizer, quantizer  # noqa: F401
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
    from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer as _NVDequantizer
    from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer as _NVQuantizer

    return _NVQuantizer, _NVDequantizer



def _dtype_name(v) -> str:
    return v.dtype.name if isinstance(v, np.ndarray) else str(v.dtype).split(".")[-1]


@functools.lru_cache(maxsize=None)
def _classes() -> dict:
    _NVQuantizer, _NVDequantizer = _import_nvflare_quantization()

    class ModelQuantizer(_NVQuantizer):
        """NVFlare's ``ModelQuantizer`` (site output filter); integer tensors pass through as they are.

        Args:
            quantization_type: ``float16`` or ``adaquant`` on any machine; ``blockwise8``, ``float4``,
                ``normfloat4`` with bitsandbytes and a CUDA GPU.
        """

        _always_serialize_args = ("quantization_type",)

        def __init__(self, quantization_type: str = "float16"):
            super().__init__(quantization_type=quantization_type)

        def quantization(self, params: dict, fl_ctx: FLContext):
            if self.quantization_type in _BNB_TYPES:
                import torch

                if not _bitsandbytes_available() or not torch.cuda.is_available():
                    raise RuntimeError(f"quantization_type {self.quantization_type!r} needs bitsandbytes and a CUDA "
                                       "GPU at the site (NVFlare's implementation); use float16 or adaquant")
            floats = {k: v for k, v in params.items() if _dtype_name(v) in _FLOAT_TYPES}
            quantized, state, source = super().quantization(floats, fl_ctx)
            out, all_state, all_source = {}, {}, {}
            for k, v in params.items():
                if k in floats:
                    out[k], all_state[k], all_source[k] = quantized[k], state.get(k, {}), source[k]
                else:
                    out[k], all_state[k], all_source[k] = v, {}, _dtype_name(v)
            return out, all_state, all_source


    class ModelDequantizer(_NVDequantizer):
        """NVFlare's ``ModelDequantizer`` (server input filter); passes through results that are not
        quantized and tensors that were not (integers)."""

        def dequantize_params(self, params: dict, quant_state: dict, quantization_type: str, source_datatype: dict,
                              fl_ctx: Optional[FLContext] = None) -> dict:
            floats = [k for k in params if source_datatype.get(k) in _FLOAT_TYPES]
            sub = super().dequantization(
                params={k: params[k] for k in floats}, quant_state={k: quant_state.get(k, {}) for k in floats},
                quantization_type=quantization_type, source_datatype={k: source_datatype[k] for k in floats},
                fl_ctx=fl_ctx,
            )
            return {k: (sub[k] if k in sub else params[k]) for k in params}

        def dequantization(self, params, quant_state, quantization_type, source_datatype, fl_ctx):
            return self.dequantize_params(params, quant_state, quantization_type, source_datatype, fl_ctx)

        def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
            if not dxo.get_meta_prop("quantized_flag"):
                return None
            return super().process_dxo(dxo, shareable, fl_ctx)



    for cls in (ModelQuantizer, ModelDequantizer):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {"ModelQuantizer": ModelQuantizer, "ModelDequantizer": ModelDequantizer}


def __getattr__(name: str):
    # PEP 562: NVFlare (and the job builder) find the classes by "fedxmodal.fl.quantization.<Name>".
    if name in ("ModelQuantizer", "ModelDequantizer"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
