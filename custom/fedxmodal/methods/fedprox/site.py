"""FedProx at a site: the coefficient from the received model's meta (NVFlare's contract,
``get_fedprox_mu``), NVFlare's ``PTFedProxLoss`` against a frozen copy of the received global."""

from __future__ import annotations

import copy
import logging

from nvflare.app_common.utils.fedprox_utils import get_fedprox_mu
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from ..base import SiteParts

log = logging.getLogger(__name__)


class FedProxSiteParts(SiteParts):
    def __init__(self, trainer, data, site_name, state_dir=None):
        super().__init__(trainer, data, site_name, state_dir=state_dir)
        self.mu = None

    def on_task(self, task_name, fl_model) -> None:
        if task_name == "train":
            self.mu = get_fedprox_mu(fl_model)  # raises if the server did not send it

    def before_training(self, info) -> None:
        method = self.trainer.method
        method.proximal = PTFedProxLoss(mu=self.mu)
        method.reference = copy.deepcopy(self.trainer.model).requires_grad_(False)  # the received global
        log.info("[%s] round %s: FedProx mu=%s", self.site_name, info.current_round, self.mu)

    def after_training(self, info, fit_result) -> dict:
        method = self.trainer.method
        method.proximal = method.reference = None
        return {}
