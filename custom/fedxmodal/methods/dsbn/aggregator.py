"""Server-side aggregation beyond plain FedAvg.

:class:`FedBNAggregator` (FedBN, Li et al., ICLR 2021 -- DSBN's federated form): a weighted
average of every tensor EXCEPT the BatchNorm ones, which each site keeps for itself. Sites of a
FedBN job do not even send them (:class:`fedxmodal.methods.dsbn.site.FedBNSiteParts`); the
aggregator also drops any that arrive, so BN statistics never enter the global model. The global
model keeps its initial BN tensors (``ResumableFedAvg.update_model`` merges a partial update).
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Optional

import numpy as np

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.apis.fl_constant import FLMetaKey

from fedxmodal.networks.domain_norm import MONAI_NORM_PATTERN
from fedxmodal.utils import as_numpy

__all__ = ["FedBNAggregator"]
log = logging.getLogger(__name__)


class FedBNAggregator(ModelAggregator):
    _always_serialize_args = ("local_vars",)

    def __init__(self, local_vars: str = MONAI_NORM_PATTERN):
        """Args:
        local_vars: regex of the state-dict keys that stay at the sites (default: MONAI's
            norm layers, ``...adn.N.*``: affine parameters and running statistics).
        """
        super().__init__()
        self.local_vars = local_vars
        self._local = re.compile(local_vars)
        self.reset_stats()

    def reset_stats(self):
        self._sums: Dict[str, np.ndarray] = {}
        self._weights: Dict[str, float] = {}
        self._params_type: Optional[ParamsType] = None
        self.skipped = set()
        self.contributors = []

    def accept_model(self, model: FLModel):
        weight = float((model.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND, 1.0))
        if self._params_type is None:
            self._params_type = model.params_type
        elif model.params_type != self._params_type:
            raise ValueError(f"mixed params types {self._params_type} / {model.params_type} in one round")
        for key, value in (model.params or {}).items():
            if self._local.search(key):
                self.skipped.add(key)
                continue
            v = as_numpy(value).astype(np.float64)
            self._sums[key] = self._sums.get(key, 0.0) + weight * v
            self._weights[key] = self._weights.get(key, 0.0) + weight
        self.contributors.append((model.meta or {}).get("client_name", "?"))

    def aggregate_model(self) -> FLModel:
        if not self._sums:
            raise RuntimeError("FedBN aggregation: no shared tensors received this round")
        if self.skipped:
            log.info(f"FedBN: {len(self.skipped)} BatchNorm tensors left out of the average")
        params = {k: (s / self._weights[k]).astype(np.float32) for k, s in self._sums.items()}
        return FLModel(params=params, params_type=self._params_type or ParamsType.FULL)
