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
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedxmodal.fl.refusal import carries_full_weights, refuse_full_weights
from fedxmodal.utils import as_numpy

__all__ = ["DEFAULT_DP_EXCLUDE", "GaussianDPFilter", "gaussian_dp_epsilon"]

# BatchNorm's running statistics and batch counter: not trained by gradients, and (counter) integer.
DEFAULT_DP_EXCLUDE = r"(running_mean|running_var|num_batches_tracked)$"


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
    """(array, whether it was a torch tensor)."""
    return as_numpy(v), hasattr(v, "detach")


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
            if carries_full_weights(shareable):
                return refuse_full_weights(self, fl_ctx, (
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

