"""FedDG's amplitude exchange (Liu et al., CVPR 2021) as an NVFlare server workflow.

Runs once, before FedAvg (it is the job's first workflow):

1. ``SHARE_TASK`` to every site: each returns ``{"amplitudes": (K, 1, s, s)}``, the centred
   low-frequency squares of |FFT| of K of its training slices (s = 2 * floor(ratio * 128) + 1, 25
   for the default ratio 0.1 at 128^2) -- see
   :meth:`fedxmodal.methods.feddg.FedDGAmplitudeMethod.share_amplitudes`.
2. ``RECEIVE_TASK`` to each site with the squares of all OTHER sites (under ``BANK_KEY``), which become its amplitude
   bank for frequency-space interpolation during local training.

What leaves a site, therefore: low-frequency amplitude spectra of some slices (a privacy
trade-off FedDG makes by design: the amplitude carries global intensity/texture "style", the
phase -- which carries the anatomy -- never leaves the site, nor does any pixel or label). The
server only relays; it keeps nothing.
"""

from __future__ import annotations

import numpy as np

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedxmodal.utils import as_numpy

from . import AMPLITUDES_KEY, BANK_KEY, BANK_SIZE_METRIC, RECEIVE_TASK, SHARE_TASK

__all__ = ["AmplitudeExchange"]


class AmplitudeExchange(ModelController):
    _always_serialize_args = ("min_sites", "task_check_period")

    def __init__(self, min_sites: int = 2, timeout: int = 0, task_check_period: float = 0.1):
        """Args:
        min_sites: sites that must share (the exchange needs at least two domains).
        timeout: seconds to wait for the sites (0: no limit).
        task_check_period: how often (s) the controller checks its tasks.
        """
        super().__init__(task_check_period=task_check_period)
        self.min_sites = min_sites
        self.timeout = timeout
        self.task_check_period = task_check_period

    def run(self):
        sites = self.sample_clients()
        if len(sites) < self.min_sites:
            self.panic(f"FedDG amplitude exchange needs {self.min_sites} sites, {len(sites)} connected")
            return
        results = self.send_model_and_wait(task_name=SHARE_TASK, data=FLModel(params={}), targets=sites,
                                           timeout=self.timeout)
        shared = {}
        for r in results:
            name = r.meta.get("client_name", "?")
            amps = (r.params or {}).get(AMPLITUDES_KEY)
            if amps is None:
                self.panic(f"site {name} shared no amplitude spectra")
                return
            amps = as_numpy(amps).astype(np.float32)
            if amps.ndim != 4 or amps.shape[1] != 1 or amps.shape[2] != amps.shape[3] or amps.shape[2] % 2 != 1:
                self.panic(f"site {name}: amplitudes must be (K, 1, s, s) with odd s, got {amps.shape}")
                return
            shared[name] = amps
        if len(shared) < self.min_sites:
            self.panic(f"only {sorted(shared)} shared amplitude spectra; need {self.min_sites} sites")
            return
        self.info("amplitude spectra received: " + ", ".join(f"{k} {v.shape}" for k, v in sorted(shared.items())))
        for name in sorted(shared):
            others = np.concatenate([v for k, v in sorted(shared.items()) if k != name])
            replies = self.send_model_and_wait(
                task_name=RECEIVE_TASK, data=FLModel(params={BANK_KEY: others}, params_type=ParamsType.FULL),
                targets=[name], timeout=self.timeout)
            got = (replies[0].metrics or {}).get(BANK_SIZE_METRIC) if replies else None
            if got != others.shape[0]:
                self.panic(f"site {name} did not take the amplitude bank (reply {got}, sent {others.shape[0]})")
                return
            self.info(f"{name} received {others.shape[0]} spectra of the other sites")
        self.info("FedDG amplitude exchange finished")
