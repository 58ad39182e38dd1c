"""What a method adds to the one training engine: its augmentation, its loss, and (for the
normalization methods) how its network is run.

A method is an object with
``training_loss(model, images, labels, seg_loss, domains=None) -> (loss, logs)`` (images
(B, 1, H, W) already spatially augmented, labels (B, H, W) class indices, domains (B,) the index
of the site each slice comes from, or None where unknown/irrelevant) and
``infer(model, images, domain=None) -> (B, C, H, W) logits``. Optional:
``prepare(per_domain_images)`` receives the training slices of every domain the engine trains on
before training (a centralized FedDG builds its amplitude bank there). The engine owns the loop,
the optimizer, devices, AMP, logging and evaluation; methods never copy those.
"""

from __future__ import annotations

import torch

from ..losses.consistency import kl_consistency
from ..networks.domain_norm import forward_by_branch, n_branches, select_branches, set_branch
from ..transforms.bezier import BezierStyleAugment, minmax_symmetric
from ..transforms.frequency import ButterworthHighPassAugment, interpolate_low_freq_amplitude, low_freq_amplitude
from ..transforms.gin import GINAugment
from ..transforms.ipa import gin_ipa_views
from ..transforms.randconv import RandConvAugment


class PlainMethod:
    """No intensity augmentation (base spatial augmentation only)."""

    name = "none"
    # What a federated job of this method adds to FedAvg (build_job keyword arguments, e.g. a
    # server workflow or aggregator); see fedxmodal.apps.compare.federated_spec.
    federated_job: dict = {}

    @classmethod
    def network_overrides(cls, regime: str, n_domains: int) -> dict:
        """UNetConfig fields this method needs in ``regime`` ('local', 'centralized', 'federated')."""
        return {}

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None) -> dict:
        """What this method's sites send beyond weights and metrics, declared to the output guard
        (``fedxmodal.fl.guard.OutputGuard`` arguments ``extra_tasks`` and ``metrics``)."""
        return {}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        logits = model(self.augment(images))
        return seg_loss(logits, labels[:, None]), {}

    def infer(self, model, images, domain=None):
        return model(images)

    def prepare(self, per_domain_images) -> None:
        """Called with [(N_d, 1, H, W) training slices per domain] before training; no-op here."""


class GINMethod(PlainMethod):
    """GIN: every training batch passes through a fresh random shallow conv net (REFERENCE.md §1).
    ``shared_across_batch=True`` is the federated papers' variant (one net per batch)."""

    name = "gin"

    def __init__(self, shared_across_batch: bool = False, interm_channels: int = 2, n_layers: int = 4):
        self.gin = GINAugment(n_layers=n_layers, interm_channels=interm_channels,
                              shared_across_batch=shared_across_batch)

    def augment(self, images):
        return self.gin(images)


class GINIPAMethod(GINMethod):
    """GIN-IPA: three GIN views, two blended by a smooth random mask; segmentation loss on the
    first blended view, KL consistency of all three to their mean (weight 10 by default)."""

    name = "gin_ipa"

    def __init__(self, consistency_weight: float = 10.0, **gin_args):
        super().__init__(**gin_args)
        self.consistency_weight = consistency_weight

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        views = gin_ipa_views(images, self.gin)
        logits = model(torch.cat(views))  # one forward for the three views: (3B, C, H, W)
        per_view = logits.chunk(3)
        seg = seg_loss(per_view[0], labels[:, None])
        cons = kl_consistency(list(per_view), weight=self.consistency_weight)
        return seg + cons, {"loss_seg": float(seg.detach()), "loss_consistency": float(cons.detach())}


class RandConvMethod(PlainMethod):
    """RandConv (Xu et al., ICLR 2021): one random conv layer per batch, kernel from {1,3,5,7},
    mixed with the input. With ``consistency_weight > 0`` two random views are segmented and a KL
    consistency of clean/view1/view2 to their mean is added (the paper's optional loss)."""

    name = "randconv"

    def __init__(self, kernel_sizes=(1, 3, 5, 7), mix: bool = True, consistency_weight: float = 0.0):
        self.randconv = RandConvAugment(kernel_sizes=tuple(kernel_sizes), mix=mix)
        self.consistency_weight = consistency_weight

    def augment(self, images):
        return self.randconv(images)

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        if self.consistency_weight <= 0:
            return super().training_loss(model, images, labels, seg_loss)
        logits = model(torch.cat([images, self.augment(images), self.augment(images)])).chunk(3)
        seg = seg_loss(logits[1], labels[:, None])
        cons = kl_consistency(list(logits), weight=self.consistency_weight)
        return seg + cons, {"loss_seg": float(seg.detach()), "loss_consistency": float(cons.detach())}


class FedDGAmplitudeMethod(PlainMethod):
    """FedDG-style frequency augmentation (Liu et al., CVPR 2021, the continuous interpolation part):
    the low-frequency amplitude of each slice is moved toward another domain's, its phase kept.

    The amplitude bank holds low-frequency amplitude squares of OTHER domains' slices:
    federated, it arrives through NVFlare (``fl_share`` / ``fl_receive``, see fedxmodal.fl.feddg);
    centralized, ``prepare`` builds it from the pooled sites and each slice draws only from the
    other domains. Without a bank (one site alone) training is plain: there is no other domain.
    """

    name = "feddg_amp"
    federated_job = {"pre_workflows": [{"path": "fedxmodal.fl.feddg.AmplitudeExchange", "args": {}}]}

    def __init__(self, ratio: float = 0.1, lam_range=(0.0, 1.0), n_share: int = 64):
        self.ratio = ratio
        self.lam_range = tuple(lam_range)
        self.n_share = n_share
        self.bank = None  # (M, 1, s, s) amplitude squares
        self.bank_domains = None  # (M,) domain of each bank entry (centralized) or None

    @classmethod
    def guard_declarations(cls, image_size, method_args=None):
        from ..transforms.frequency import low_freq_half_width

        ratio = (method_args or {}).get("ratio", 0.1)
        side = 2 * low_freq_half_width(image_size, image_size, ratio) + 1
        return {"extra_tasks": {"share_amplitudes": {"params": {"amplitudes": [None, 1, side, side]}},
                                "receive_amplitudes": {"metrics": True}},
                "metrics": ["bank_size"]}

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

    def fl_share(self, images: torch.Tensor) -> dict:
        return {"amplitudes": self.share_amplitudes(images)}

    def fl_receive(self, params: dict) -> int:
        self.bank = torch.as_tensor(params["amplitude_bank"]).float()
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


class ButterworthHighPassMethod(PlainMethod):
    """Local frequency-domain variant: random Butterworth high-pass (cutoff in [0.01, 0.1], order 2)."""

    name = "freq_hp"

    def __init__(self, cutoff_range=(0.01, 0.1), order: int = 2, p: float = 0.5):
        self.highpass = ButterworthHighPassAugment(cutoff_range=tuple(cutoff_range), order=order, p=p)

    def augment(self, images):
        return self.highpass(images)


class DSBNMethod(PlainMethod):
    """Domain-specific BatchNorm (Chang et al., CVPR 2019). Centralized: a network with one BN
    branch per site (``network.norm_branches`` = number of sites), each slice normalized by its
    site's branch. Federated (FedBN): a plain network whose BatchNorm tensors never leave the site
    (``keeps_batchnorm_local``) and are left out of the server's average
    (fedxmodal.fl.aggregators.FedBNAggregator). At test time a known site uses its own branch; an
    unknown one the branch whose statistics fit best (``select_branches``)."""

    name = "dsbn"
    keeps_batchnorm_local = True
    federated_job = {"aggregator": {"path": "fedxmodal.fl.aggregators.FedBNAggregator", "args": {}}}

    @classmethod
    def network_overrides(cls, regime, n_domains):
        # Federated, the domain IS the site: one BN per site is FedBN's site-local BN.
        return {"norm_branches": n_domains} if regime == "centralized" and n_domains > 1 else {}

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        if n_branches(model) == 1:
            return super().training_loss(model, images, labels, seg_loss)
        if domains is None:
            raise ValueError("dsbn with a multi-branch network needs the domain (site) of every slice")
        logits = forward_by_branch(model, images, domains)
        return seg_loss(logits, labels[:, None]), {}

    def infer(self, model, images, domain=None):
        if n_branches(model) == 1:
            return model(images)
        if domain is None:
            return forward_by_branch(model, images, select_branches(model, images))
        set_branch(model, domain)
        return model(images)


class DualNormMethod(PlainMethod):
    """Dual-Norm (Zhou et al., CVPR 2022): every slice is remapped by a random Bezier curve into a
    source-similar (monotone) and a source-dissimilar (inverted) image; the first go through BN
    branch 0, the second through branch 1 (``network.norm_branches = 2``); both are segmented.
    At test each slice takes the branch whose stored BN statistics are closest to its own.

    The network sees slices min-max scaled to ``[-1, 1]`` (training views and test slices alike),
    as in the original: on z-scored input the first BN's statistics of an image and of its
    inversion are the same (a linear conv of -x has the mean and std of that of x), and the rule
    routed about half of the in-domain slices to the wrong branch."""

    name = "dualnorm"

    @classmethod
    def network_overrides(cls, regime, n_domains):
        return {"norm_branches": 2}

    def __init__(self):
        self.bezier = BezierStyleAugment(zscore=False)

    def training_loss(self, model, images, labels, seg_loss, domains=None):
        if n_branches(model) != 2:
            raise ValueError("dualnorm needs a network with norm_branches = 2")
        similar, dissimilar = self.bezier(images)
        branches = torch.cat([torch.zeros(len(images)), torch.ones(len(images))]).long()
        logits = forward_by_branch(model, torch.cat([similar, dissimilar]), branches)
        return seg_loss(logits, torch.cat([labels, labels])[:, None]), {}

    def infer(self, model, images, domain=None):
        images = minmax_symmetric(images)
        return forward_by_branch(model, images, select_branches(model, images))


METHODS = {m.name: m for m in (PlainMethod, RandConvMethod, FedDGAmplitudeMethod, ButterworthHighPassMethod,
                               DSBNMethod, DualNormMethod, GINMethod, GINIPAMethod)}


def build_method(name: str, **kwargs):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](**kwargs)
