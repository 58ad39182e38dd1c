"""DSBN / FedBN: domain-specific BatchNorm (Chang et al., CVPR 2019; Li et al., ICLR 2021).

Pieces: :class:`DSBNMethod` (the trainer's part), ``site.FedBNSiteParts`` (a FedBN site never
sends its BatchNorm tensors and keeps its own), ``aggregator.FedBNAggregator`` (the server
averages everything else).
"""

from __future__ import annotations

from ...networks.domain_norm import forward_by_branch, n_branches, select_branches, set_branch
from ..base import PlainMethod, ServerParts


class DSBNMethod(PlainMethod):
    """Domain-specific BatchNorm. Centralized: a network with one BN branch per site
    (``network.norm_branches`` = number of sites), each slice normalized by its site's branch.
    Federated (FedBN): a plain network whose BatchNorm tensors never leave the site
    (:class:`~fedxmodal.methods.dsbn.site.FedBNSiteParts`) and are left out of the server's average
    (:class:`~fedxmodal.methods.dsbn.aggregator.FedBNAggregator`). At test time a known site uses
    its own branch; an unknown one the branch whose statistics fit best (``select_branches``).
    One site alone has no second domain: no local regime."""

    name = "dsbn"
    label = "DSBN / FedBN"
    regimes = ("centralized", "federated")
    site_parts = "fedxmodal.methods.dsbn.site.FedBNSiteParts"

    @classmethod
    def server_parts(cls, min_clients, method_args=None):
        return ServerParts(aggregator={"path": "fedxmodal.methods.dsbn.aggregator.FedBNAggregator", "args": {}})

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
