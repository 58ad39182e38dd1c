"""FedDA on the server: one payload per site per round, composed into the resumable FedAvg
(``fedxmodal.fl.server.ResumableFedAvg(site_payloads=FedDAPayloads(...))``).

* **cyclic**: each site receives the global model plus one peer's last local weights (flat keys
  ``peer::<name>``, ``meta["peer_site"]``), the peer chosen on a ring
  (:func:`fedxmodal.methods.fedda.ring_peers`); round 0, or a peer without a local model yet (a
  site that dropped out, the first round after a server restart): no peer, the site uses the
  joint reference. The sites train in parallel, and the global model is the FedAvg of the weights
  they return, exactly as in FedAvg. Privacy cost: a site receives another site's UN-averaged
  local model (docs/privacy.md).
* **shared discriminator**: the sites' discriminators (``discriminator::<name>``) are taken out
  of their results before FedAvg sees them, averaged apart from the model (weighted like it) and
  sent with the next round's payloads; the global model (and its checkpoints) never holds them.

The local models and the averaged discriminator live in the server process only: after a
restart the first round is joint and the sites keep their own discriminators for it.
"""

from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np

from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

from fedxmodal.utils import as_numpy

from . import DISC_PREFIX, PEER_META, PEER_PREFIX, ring_peers

__all__ = ["FedDAPayloads"]
log = logging.getLogger(__name__)


class FedDAPayloads:
    _always_serialize_args = ("cyclic", "share_discriminator")

    def __init__(self, cyclic: bool = True, share_discriminator: bool = False):
        """Args:
        cyclic: send each site a peer's last local weights with the global model.
        share_discriminator: average the sites' discriminators apart from the model.
        """
        self.cyclic = cyclic
        self.share_discriminator = share_discriminator
        self.local: Dict[str, Dict[str, np.ndarray]] = {}  # site -> its last local weights (full)
        self.discriminator: Dict[str, np.ndarray] = {}  # the averaged discriminator, prefixed keys
        self.schedule: List[tuple] = []  # (round, site, peer or None): what was sent
        self._global: Dict[str, np.ndarray] = {}
        self._round = -1
        self._disc_sum = None

    def payloads(self, current_round: int, sites, model: FLModel) -> Dict[str, FLModel]:
        self._round = int(current_round)
        self._global = dict(model.params or {})
        self._disc_sum = WeightedAggregationHelper()
        peers = ring_peers(sites, self._round, available=self.local) if self.cyclic else {s: None for s in sites}
        out = {}
        for site in sites:
            params, meta = dict(self._global), dict(model.meta or {})
            peer = peers.get(site)
            if peer is not None:
                params.update({PEER_PREFIX + k: v for k, v in self.local[peer].items()})
                meta[PEER_META] = peer
            params.update(self.discriminator)
            out[site] = FLModel(params=params, params_type=model.params_type, metrics=model.metrics, meta=meta,
                                current_round=model.current_round, start_round=model.start_round,
                                total_rounds=model.total_rounds)
            self.schedule.append((self._round, site, peer))
            log.info(f"FedDA round {self._round}: {site} <- global model"
                     + (f" + {peer}'s local model" if peer else " (joint reference)")
                     + (" + averaged discriminator" if self.discriminator else ""))
        return out

    def accept(self, result: FLModel) -> FLModel:
        """Before FedAvg aggregates a site's result: take the discriminator out (averaged here when
        shared), refuse any peer weights coming back, remember the site's local model."""
        params = result.params if isinstance(result.params, dict) else {}
        site = (result.meta or {}).get("client_name", "?")
        disc = {k: params.pop(k) for k in [k for k in params if k.startswith(DISC_PREFIX)]}
        stray = [k for k in params if k.startswith(PEER_PREFIX)]
        for k in stray:  # the site's output guard refuses these; never aggregate or forward them
            params.pop(k)
        if stray:
            log.error(f"FedDA: {site} sent {len(stray)} peer tensors back; dropped")
        if disc and self.share_discriminator:
            weight = float((result.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND, 1.0) or 1.0)
            self._disc_sum.add(data={k: as_numpy(v) for k, v in disc.items()}, weight=weight, contributor_name=site,
                               contribution_round=self._round)
        if self.cyclic and params:
            if result.params_type == ParamsType.DIFF:  # local = the global it received + its update
                self.local[site] = {k: as_numpy(self._global[k]) + as_numpy(v) for k, v in params.items()}
            else:
                self.local[site] = {k: as_numpy(v).copy() for k, v in params.items()}
        return result

    def round_done(self, current_round: int, model: FLModel) -> None:
        n = self._disc_sum.get_len() if self._disc_sum is not None else 0
        if self.share_discriminator and n:
            self.discriminator = {k: np.asarray(v, dtype=np.float32) for k, v in self._disc_sum.get_result().items()}
            log.info(f"FedDA round {current_round}: discriminator averaged over {n} sites")
