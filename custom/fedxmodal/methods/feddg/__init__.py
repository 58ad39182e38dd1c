"""FedDG's continuous frequency-space interpolation (Liu et al., CVPR 2021), a baseline of the federated GIN paper.

Pieces: :class:`FedDGAmplitudeMethod` (the trainer's part; centralized it builds its bank from the
pooled sites), ``site.FedDGSiteParts`` (a site's two exchange tasks) and ``workflow.AmplitudeExchange``
(the server workflow that relays the sites' low-frequency amplitude squares before FedAvg).
"""

from __future__ import annotations

import torch

from ...transforms.frequency import interpolate_low_freq_amplitude, low_freq_amplitude, low_freq_half_width
from ..base import PlainMethod, ServerParts

SHARE_TASK = "share_amplitudes"
RECEIVE_TASK = "receive_amplitudes"
AMPLITUDES_KEY = "amplitudes"
# The bank travels under its own key: the Client API's tensor conversion remembers the shapes of
# the keys a site sent, so reusing "amplitudes" for a bank of another size would break it.
BANK_KEY = "amplitude_bank"
BANK_SIZE_METRIC = "bank_size"


class FedDGAmplitudeMethod(PlainMethod):
    """FedDG-style frequency augmentation (Liu et al., CVPR 2021, the continuous interpolation part):
    the low-frequency amplitude of each slice is moved toward another domain's, its phase kept.

    The amplitude bank holds low-frequency amplitude squares of OTHER domains' slices:
    federated, it arrives through NVFlare (``site.FedDGSiteParts``, ``workflow.AmplitudeExchange``);
    centralized, ``prepare`` builds it from the pooled sites and each slice draws only from the
    other domains. Without a bank (one site alone) training is plain: there is no other domain.
    """

    name = "feddg_amp"
    label = "FedDG amplitude"
    regimes = ("centralized", "federated")  # one site alone has no other domain
    site_parts = "fedxmodal.methods.feddg.site.FedDGSiteParts"

    @classmethod
    def server_parts(cls, min_clients, method_args=None):
        # every site the job requires must share (the exchange needs two domains at least)
        return ServerParts(pre_workflows=({"path": "fedxmodal.methods.feddg.workflow.AmplitudeExchange",
                                           "args": {"min_sites": max(2, min_clients)}},))

    def __init__(self, ratio: float = 0.1, lam_range=(0.0, 1.0), n_share: int = 64):
        self.ratio = ratio
        self.lam_range = tuple(lam_range)
        self.n_share = n_share
        self.bank = None  # (M, 1, s, s) amplitude squares
        self.bank_domains = None  # (M,) domain of each bank entry (centralized) or None

    @classmethod
    def guard_declarations(cls, image_size, method_args=None, model=None):
        ratio = (method_args or {}).get("ratio", 0.1)
        side = 2 * low_freq_half_width(image_size, image_size, ratio) + 1
        return {"extra_tasks": {SHARE_TASK: {"params": {AMPLITUDES_KEY: [None, 1, side, side]}},
                                RECEIVE_TASK: {"metrics": True}},
                "metrics": [BANK_SIZE_METRIC]}

    def prepare(self, per_domain_images) -> None:
        if len(per_domain_images) < 2:
            return
        banks = [self.share_amplitudes(x) for x in per_domain_images]
        self.bank = torch.cat(banks)
        self.bank_domains = torch.cat([torch.full((len(b),), d, dtype=torch.long) for d, b in enumerate(banks)])

    def share_amplitudes(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) training slices -> (min(N, n_share), 1, s, s) low-frequency amplitude squares
        of randomly chosen slices: all that a site shares (no phase, no pixels)."""
        idx = torch.randperm(images.shape[0])[: self.n_share]
        return low_freq_amplitude(images[idx].float(), ratio=self.ratio)

    def set_bank(self, bank) -> int:
        """Take (M, 1, s, s) amplitude squares of other sites as the bank; returns M."""
        self.bank = torch.as_tensor(bank).float()
        self.bank_domains = None
        return int(self.bank.shape[0])

    def augment(self, images, domains=None):
        if self.bank is None:
            return images
        bank = self.bank.to(images.device)
        if domains is None or self.bank_domains is None:
            return interpolate_low_freq_amplitude(images, bank, ratio=self.ratio, lam_range=self.lam_range)
        out = images.clone()
        for d in domains.unique().tolist():
            rows = (domains == d).nonzero(as_tuple=True)[0]
            other = bank[(self.bank_domains != d).to(bank.device)]
            if len(other):
                out[rows] = interpolate_low_freq_amplitude(images[rows], other, ratio=self.ratio,
                                                           lam_range=self.lam_range)
        return out

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        logits = model(self.augment(images, domains))
        return seg_loss(logits, labels[:, None]), {}
