"""FedDG at a site: share this site's low-frequency amplitude squares, then take the other sites'
as the amplitude bank (the two tasks of :class:`~fedxmodal.methods.feddg.workflow.AmplitudeExchange`)."""

from __future__ import annotations

import logging

from nvflare.client import FLModel, ParamsType

from ..base import SiteParts
from . import AMPLITUDES_KEY, BANK_KEY, BANK_SIZE_METRIC, RECEIVE_TASK, SHARE_TASK

log = logging.getLogger(__name__)


class FedDGSiteParts(SiteParts):
    def task_handlers(self) -> dict:
        method = self.trainer.method

        def share(_model):
            payload = {AMPLITUDES_KEY: method.share_amplitudes(self.data.training.images).float().contiguous()}
            log.info("[%s] sharing %s", self.site_name, {k: tuple(v.shape) for k, v in payload.items()})
            return FLModel(params=payload, params_type=ParamsType.FULL)

        def receive(model):
            n = method.set_bank(model.params[BANK_KEY])
            log.info("[%s] received %d amplitude spectra of other sites", self.site_name, n)
            return FLModel(metrics={BANK_SIZE_METRIC: n})

        return {SHARE_TASK: share, RECEIVE_TASK: receive}
