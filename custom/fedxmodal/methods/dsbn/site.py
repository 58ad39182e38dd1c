"""FedBN at a site: BatchNorm tensors (affine + running statistics) stay at the site."""

from __future__ import annotations

from ...networks.domain_norm import batchnorm_state_keys
from ..base import SiteParts


class FedBNSiteParts(SiteParts):
    """BatchNorm tensors are never sent, and received ones are ignored once the site has its own
    (the first global model initialises them)."""

    def weight_access(self):
        trainer = self.trainer
        local_keys = batchnorm_state_keys(trainer.model)
        state = {"initialised": False}

        def get_weights():
            return {k: v for k, v in trainer.get_weights().items() if k not in local_keys}

        def set_weights(weights):
            if state["initialised"]:
                own = trainer.get_weights()
                weights = {**{k: own[k] for k in local_keys}, **{k: v for k, v in weights.items() if k not in local_keys}}
            trainer.set_weights(weights)
            state["initialised"] = True

        return get_weights, set_weights
