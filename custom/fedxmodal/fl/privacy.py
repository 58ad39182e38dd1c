"""Privacy and communication filters for a site's model update (NVFlare task-result filters).

:class:`GaussianDPFilter` -- the Gaussian mechanism on the site's model UPDATE, which NVFlare does
not ship: the L2 norm of the whole update (all floating-point tensors together, except
``exclude_vars``) is clipped to ``clip_norm`` and N(0, (noise_multiplier * clip_norm)^2) is added
to every element. It needs weight DIFFERENCES: a DP job sets ``params_transfer_type="DIFF"``
(the Client API then sends ``WEIGHT_DIFF`` = local weights - received global weights, the
update; the job builder refuses a DP job without it). A full-weights result (cross-site
evaluation's ``submit_model``: the site's un-noised local model) is REFUSED by default -- it would
bypass the mechanism -- and only the server's (noised) models are cross-evaluated.

What the mechanism means (docs/privacy.md): per round, the site's released update is
``clip(u) + N(0, sigma^2 C^2 I)``; two datasets of the site change ``clip(u)`` by at most ``2C``, so
each round is a Gaussian mechanism with L2 sensitivity ``2C`` -- SITE-level ("local") DP against
the server and anyone who sees the updates, with no trust in the server and no amplification by
sampling. :func:`gaussian_dp_epsilon` composes the rounds with zero-concentrated DP (Bun &
Steinke 2016: rho = T * Delta^2 / (2 s^2); epsilon = rho + 2 sqrt(rho ln(1/delta))). What it does
NOT cover: the validation metrics and the training-slice count sent with every update, the
tensors matched by ``exclude_vars`` (BatchNorm running statistics and counters by default: they
are sent as they are), and anything a seeded run makes predictable (``seed`` is for tests and
experiments; in production leave it None so the noise comes from the OS's entropy).

Quantization (:class:`ModelQuantizer` site output / :class:`ModelDequantizer` server input) is
NVFlare's ``nvflare.app_opt.pt.quantization`` with two fixes for our models: integer tensors
(BatchNorm's ``num_batches_tracked``) pass through unquantized (NVFlare's raises on them), and
the modules import without ``bitsandbytes`` (a CPU site has none): ``float16`` and ``adaquant``
then work; ``blockwise8`` / ``float4`` / ``normfloat4`` need ``bitsandbytes`` and a CUDA GPU, as in
NVFlare, and fail with a clear message otherwise.
"""

from __future__ import annotations

import math
import re
import sys
import types
import zlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from fedxmodal.fl.guard import REFUSED_HEADER

__all__ = [
    "DEFAULT_DP_EXCLUDE",
    "DIFF_ONLY_FILTERS",
    "GaussianDPFilter",
    "LocalModelRefuser",
    "ModelDequantizer",
    "ModelQuantizer",
    "gaussian_dp_epsilon",
]

# BatchNorm's running statistics and batch counter: not trained by gradients, and (counter) integer.
DEFAULT_DP_EXCLUDE = r"(running_mean|running_var|num_batches_tracked)$"

# Filters whose semantics need weight DIFFERENCES (on full weights they would clip/zero/noise the
# weights themselves, or drop tensors from the global model): build_job requires DIFF for them.
DIFF_ONLY_FILTERS = {
    "fedxmodal.fl.privacy.GaussianDPFilter",
    "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
    "nvflare.app_common.filters.PercentilePrivacy",
    "nvflare.app_common.filters.svt_privacy.SVTPrivacy",
    "nvflare.app_common.filters.SVTPrivacy",
    "nvflare.app_common.filters.exclude_vars.ExcludeVars",
    "nvflare.app_common.filters.ExcludeVars",
}


def gaussian_dp_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5, sensitivity: float = 2.0) -> float:
    """(epsilon, delta)-DP of ``rounds`` Gaussian-mechanism releases with noise std
    ``noise_multiplier * C`` and L2 sensitivity ``sensitivity * C`` (2: one site's dataset replaced
    by another, as :class:`GaussianDPFilter` releases a clipped update), composed with zCDP.

    rho = rounds * sensitivity^2 / (2 noise_multiplier^2); epsilon = rho + 2 sqrt(rho ln(1/delta)).
    """
    if noise_multiplier <= 0:
        return math.inf
    rho = rounds * sensitivity**2 / (2.0 * noise_multiplier**2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def _to_numpy(v) -> Tuple[np.ndarray, bool]:
    if isinstance(v, np.ndarray):
        return v, False
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy(), True
    return np.asarray(v), False


class GaussianDPFilter(DXOFilter):
    """Clip the site's update to L2 norm ``clip_norm`` and add Gaussian noise (module doc).

    Args:
        clip_norm: C, the bound on the L2 norm of the whole update (all noised tensors together).
        noise_multiplier: sigma; the noise std per element is sigma * C.
        exclude_vars: regular expression (search) of tensor names sent WITHOUT clipping and noise
            (and not counted in the norm); default: BatchNorm running statistics and counters.
            Integer tensors are never noised.
        seed: None (production): fresh OS entropy. An int: reproducible noise, a stream per
            (seed, site, round) -- for tests and experiments only (whoever knows it can remove
            the noise).
        refuse_full_weights: refuse a ``WEIGHTS`` result (full local weights bypass the mechanism).
    """

    _always_serialize_args = ("clip_norm", "noise_multiplier", "exclude_vars", "seed", "refuse_full_weights")

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        exclude_vars: Optional[str] = DEFAULT_DP_EXCLUDE,
        seed: Optional[int] = None,
        refuse_full_weights: bool = True,
    ):
        super().__init__(
            supported_data_kinds=[DataKind.WEIGHT_DIFF, DataKind.WEIGHTS],
            data_kinds_to_filter=[DataKind.WEIGHT_DIFF, DataKind.WEIGHTS],
        )
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.exclude_vars = exclude_vars
        self.seed = seed
        self.refuse_full_weights = bool(refuse_full_weights)
        self._exclude = re.compile(exclude_vars) if exclude_vars else None
        self._warned_excluded = False

    def is_excluded(self, name: str, value) -> bool:
        arr, _ = _to_numpy(value)
        return arr.dtype.kind != "f" or bool(self._exclude and self._exclude.search(name))

    def rng(self, site: str, current_round) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        r = int(current_round) if current_round is not None else -1
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), zlib.crc32(site.encode()), r + 1]))

    def privatize(self, update: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """The mechanism on a ``{name: array}`` update; returns (new dict, stats) via ``self.last_stats``."""
        noised = [k for k, v in update.items() if not self.is_excluded(k, v)]
        sq = 0.0
        for k in noised:
            arr, _ = _to_numpy(update[k])
            sq += float(np.sum(np.square(arr, dtype=np.float64)))
        norm = math.sqrt(sq)
        factor = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        std = self.noise_multiplier * self.clip_norm
        out = dict(update)
        n_values = 0
        for k in noised:
            arr, was_torch = _to_numpy(update[k])
            new = arr.astype(np.float64) * factor
            if std > 0:
                new = new + rng.normal(0.0, std, size=arr.shape)
            new = new.astype(arr.dtype)
            n_values += new.size
            if was_torch:
                import torch

                new = torch.from_numpy(new)
            out[k] = new
        self.last_stats = {"norm": norm, "clipped_norm": norm * factor, "factor": factor, "noise_std": std,
                           "n_tensors": len(noised), "n_values": n_values,
                           "excluded": [k for k in update if k not in set(noised)]}
        return out

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self.refuse_full_weights and shareable.get_return_code() == ReturnCode.OK:
            if _carries_full_weights(shareable):
                return _refuse_full_weights(self, fl_ctx, (
                    "differential privacy: full local weights are not sent (they would bypass the "
                    "Gaussian mechanism; a DP job sends clipped, noised weight differences only)"))
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            return None  # full weights with refuse_full_weights=False: sent as they are (caller's choice)
        site = fl_ctx.get_identity_name() if fl_ctx else "?"
        rnd = shareable.get_header("current_round")
        dxo.data = self.privatize(dxo.data, self.rng(site, rnd))
        s = self.last_stats
        self.log_info(
            fl_ctx,
            f"Gaussian DP (round {rnd}): update L2 norm {s['norm']:.4g} -> {s['clipped_norm']:.4g} "
            f"(clip {self.clip_norm:g}), noise std {s['noise_std']:.3g} on {s['n_values']} values in "
            f"{s['n_tensors']} tensors",
        )
        if s["excluded"] and not self._warned_excluded:
            self._warned_excluded = True
            self.log_warning(fl_ctx, f"Gaussian DP: {len(s['excluded'])} tensors are sent WITHOUT clipping/noise "
                                     f"(exclude_vars {self.exclude_vars!r} or integer): {s['excluded'][:6]}...")
        return dxo


# ----------------------------------------------------------------------------------- quantization
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


_NVQuantizer, _NVDequantizer = _import_nvflare_quantization()


def _dtype_name(v) -> str:
    return v.dtype.name if isinstance(v, np.ndarray) else str(v.dtype).split(".")[-1]


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



# ----------------------------------------------------------------------------------- job wiring
class LocalModelRefuser(Filter):
    """Refuses a site's full local weights (cross-site evaluation's ``submit_model``) in a job
    whose update filters (DP, PercentilePrivacy, SVTPrivacy, ExcludeVars) they would bypass."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code() != ReturnCode.OK or not _carries_full_weights(shareable):
            return shareable
        return _refuse_full_weights(self, fl_ctx, (
            "this job filters the model updates a site sends (privacy); its full local weights would "
            "bypass those filters and are not sent"))


def _carries_full_weights(shareable: Shareable) -> bool:
    try:
        return from_shareable(shareable).data_kind == DataKind.WEIGHTS
    except Exception:
        return False


def _refuse_full_weights(component, fl_ctx: FLContext, reason: str) -> Shareable:
    component.log_warning(fl_ctx, f"REFUSED a full-weights result: {reason}")
    reply = make_reply(ReturnCode.EXECUTION_RESULT_ERROR)
    reply.set_header(REFUSED_HEADER, reason)
    return reply


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
    """Wire the job's result filters (called by :func:`fedxmodal.fl.job.build_job`).

    Sites: ``site_output_filters`` (``[{"path", "args"}]``, in order; update filters -- DP,
    PercentilePrivacy, SVTPrivacy, ExcludeVars -- on the ``train`` task only, and then
    :class:`LocalModelRefuser` on ``submit_model``), then -- when ``output_guard`` is truthy
    (``True`` or the :class:`~fedxmodal.fl.guard.OutputGuard` arguments other than ``model``) --
    the guard, LAST. Server: ``server_input_filters`` then
    :class:`~fedxmodal.fl.guard.RefusedResultLogger`. Every chain lists ``tasks`` by name
    (NVFlare matches filter chains by exact task name; ``"*"`` would never apply).
    """
    from nvflare.job_config.defs import FilterType

    from fedxmodal.fl.client_loop import instantiate
    from fedxmodal.fl.guard import DEFAULT_TASKS, OutputGuard, RefusedResultLogger

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
