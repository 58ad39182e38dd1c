"""FedDA at a site: take the reference from the payload (the peer's weights in a cyclic round,
else the received global model), keep the discriminator across rounds (in memory and in the
site's state folder) or share it under a key prefix when the job averages it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..base import SiteParts
from . import DISC_PREFIX, PEER_META, PEER_PREFIX

log = logging.getLogger(__name__)


def _take(params: dict, prefix: str) -> dict:
    """Remove the ``prefix``ed entries from ``params``; return them without the prefix."""
    return {k[len(prefix):]: params.pop(k) for k in [k for k in params if k.startswith(prefix)]}


class FedDASiteParts(SiteParts):
    def __init__(self, trainer, data, site_name, state_dir=None):
        super().__init__(trainer, data, site_name, state_dir=state_dir)
        self.method = trainer.method
        self.received: dict | None = None  # the global weights of the current train task
        self.peer: dict | None = None  # a cyclic round's peer weights
        self.peer_site: str | None = None
        self._resume_checked = False

    # ---- the payload ------------------------------------------------------------------------
    def on_task(self, task_name, fl_model) -> None:
        """Strip what is not the model's weights from the payload before they are loaded: the
        peer's weights (cyclic) and the averaged discriminator (shared D)."""
        params = fl_model.params if isinstance(fl_model.params, dict) else {}
        self.peer = _take(params, PEER_PREFIX) or None
        self.peer_site = (fl_model.meta or {}).get(PEER_META) if self.peer else None
        disc = _take(params, DISC_PREFIX)
        if disc:
            self.trainer.set_discriminator_weights(disc)
            log.info("[%s] took the averaged discriminator (%d tensors)", self.site_name, len(disc))

    def weight_access(self):
        trainer = self.trainer

        def get_weights():
            weights = trainer.get_weights()
            if self.method.share_discriminator:
                weights.update({DISC_PREFIX + k: v for k, v in trainer.discriminator_weights().items()})
            return weights

        def set_weights(weights):
            trainer.set_weights(weights)
            self.received = {k: torch.as_tensor(v).detach().clone() for k, v in weights.items()}

        return get_weights, set_weights

    # ---- a round ----------------------------------------------------------------------------
    def before_training(self, info) -> None:
        self._load_state(info.current_round)
        ref = self.peer if self.peer is not None else self.received
        self.trainer.set_reference(ref)
        log.info("[%s] round %s: reference encoder = %s", self.site_name, info.current_round,
                 f"peer {self.peer_site}'s local model" if self.peer is not None else "the received global model")

    def after_training(self, info, fit_result) -> dict:
        self.trainer.set_reference(None)
        self.peer = self.received = None  # free them until the next round
        self._save_state(info.current_round)
        return {k: v for k, v in fit_result.get("means", {}).items()
                if k in ("loss_seg", "loss_adv", "loss_disc", "disc_acc", "adv_weight")}

    # ---- the discriminator across runs (a resumed job) ---------------------------------------
    def _state_path(self) -> Path | None:
        if not self.state_dir:
            return None
        key = json.dumps({"method": self.method.name, "adversarial": self.trainer.adversarial.to_dict(),
                          "network": self.trainer.network.to_dict(), "structures": self.trainer.structures},
                         sort_keys=True, default=str)
        return Path(self.state_dir) / self.site_name / f"fedda-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"

    def _save_state(self, rnd) -> None:
        path = self._state_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": int(rnd), "discriminator": self.trainer.discriminator_weights(),
                    "optimizer": self.trainer.optimizers["discriminator"].state_dict()}, tmp)
        tmp.replace(path)

    def _load_state(self, rnd) -> None:
        """A resumed job (the site process is new, the round is not 0): the discriminator saved
        after the previous round, if there is one."""
        path = self._state_path()
        first, self._resume_checked = not self._resume_checked, True
        if path is None or not rnd or not first or not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("round") != int(rnd) - 1:
            log.info("[%s] %s is from round %s, not %s: a fresh discriminator", self.site_name, path,
                     state.get("round"), int(rnd) - 1)
            return
        self.trainer.set_discriminator_weights(state["discriminator"])
        self.trainer.optimizers["discriminator"].load_state_dict(state["optimizer"])
        log.info("[%s] resumed the discriminator of round %s from %s", self.site_name, state["round"], path)
