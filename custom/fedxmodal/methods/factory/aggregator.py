"""The factory's server aggregation: an UNWEIGHTED mean of the sampled sites' generator,
discriminator and EMA generator (the official code averages with uniform weights, so that a site
with many slices does not own the factory's appearance). Imports NVFlare."""

from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from fedxmodal.utils import as_numpy

__all__ = ["UniformAggregator"]
log = logging.getLogger(__name__)


class UniformAggregator(ModelAggregator):
    """Mean of every received tensor with weight 1 per site (``NUM_STEPS_CURRENT_ROUND`` ignored)."""

    def __init__(self):
        super().__init__()
        self.reset_stats()

    def reset_stats(self):
        self._sums: Dict[str, np.ndarray] = {}
        self._counts: Dict[str, int] = {}
        self._params_type: Optional[ParamsType] = None
        self.contributors: list[str] = []

    def accept_model(self, model: FLModel):
        if self._params_type is None:
            self._params_type = model.params_type
        elif model.params_type != self._params_type:
            raise ValueError(f"mixed params types {self._params_type} / {model.params_type} in one round")
        for key, value in (model.params or {}).items():
            self._sums[key] = self._sums.get(key, 0.0) + as_numpy(value).astype(np.float64)
            self._counts[key] = self._counts.get(key, 0) + 1
        self.contributors.append((model.meta or {}).get("client_name", "?"))

    def aggregate_model(self) -> FLModel:
        if not self._sums:
            raise RuntimeError("uniform aggregation: no site result received this round")
        log.info(f"uniform average of {len(self.contributors)} sites: {self.contributors}")
        params = {k: (s / self._counts[k]).astype(np.float32) for k, s in self._sums.items()}
        return FLModel(params=params, params_type=self._params_type or ParamsType.FULL)
