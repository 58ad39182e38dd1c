"""FedProx (Li et al., MLSys 2020), a baseline of the FedDA paper, with NVFlare's own pieces: the server's
FedAvg sends the coefficient in the model's meta (``fedprox_mu``, NVFlare 2.9's FedProx contract)
and the site adds NVFlare's ``PTFedProxLoss`` (mu/2 * ||w - w_global||^2) to the segmentation loss.

The engine may not import NVFlare, so the loss object and the frozen copy of the received global
model are given to the method by its site part (``site.FedProxSiteParts``) each round; without
them (local / centralized training) the method is plain, hence federated only.
"""

from __future__ import annotations

from ..base import PlainMethod, ServerParts

DEFAULT_MU = 0.01  # NVFlare's PTFedProxLoss default


class FedProxMethod(PlainMethod):
    """Method args: ``mu`` (the proximal coefficient, default 0.01)."""

    name = "fedprox"
    label = "FedProx"
    regimes = ("federated",)
    site_parts = "fedxmodal.methods.fedprox.site.FedProxSiteParts"

    def __init__(self, mu: float = DEFAULT_MU):
        self.mu = float(mu)
        self.proximal = None  # NVFlare's PTFedProxLoss, set by the site part for a round
        self.reference = None  # frozen copy of the global model received that round

    @classmethod
    def server_parts(cls, min_clients, method_args=None):
        return ServerParts(fedavg_args={"fedprox_mu": float((method_args or {}).get("mu", DEFAULT_MU))})

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        seg = seg_loss(model(self.augment(images)), labels[:, None])
        if self.proximal is None or self.reference is None:
            return seg, {}
        prox = self.proximal(model, self.reference)
        return seg + prox, {"loss_seg": float(seg.detach()), "loss_prox": float(prox.detach())}
