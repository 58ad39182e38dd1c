"""FedDA: adversarial feature alignment across single-modality sites ("Adversarial Versus Federated:
An Adversarial Learning based Multi-Modality Cross-Domain Federated Medical Segmentation", arXiv
2509.23907; what is the paper's and what is our choice: docs/results.md).

Each site trains the U-Net and a feature discriminator on its encoder's bottleneck with the
:class:`~fedxmodal.engine.adversarial.AdversarialTrainer`: the segmentation step pushes the
site's features toward those of a frozen *reference* encoder on the same local batch, the
discriminator step learns to tell them apart.

* ``fedda`` (joint): the reference is the global model the site received this round.
* ``fedda_cyclic``: the reference is a peer site's last local model, sent with the global model
  by :class:`~fedxmodal.methods.fedda.workflow.FedDAPayloads` (one payload per site per round,
  ring schedule :func:`ring_peers`; round 0, or a peer with no model yet: the joint reference).
* ``fedda_gin``: joint FedDA with GIN augmentation (neither paper does this).

The discriminator stays at its site (kept across rounds, in the site's checkpoints and its state
folder); ``share_discriminator: true`` averages it across sites instead (FADE-style): the sites
send it under :data:`DISC_PREFIX` and the workflow averages it apart from the model.
Centralized (pooled sites), ``fedda``/``fedda_gin`` align the pooled domains with each other (the
trainer's domain mode); a single site has nothing to align with (no local regime).

Pieces: this module (the trainer's part, guard declarations, server parts, the peer schedule),
``site.FedDASiteParts`` (what a site does with the payload, no NVFlare import) and
``workflow.FedDAPayloads`` (the server part: per-site payloads composed into the resumable FedAvg,
shared-discriminator averaging; imports NVFlare).
"""

from __future__ import annotations

from ...engine.adversarial import AdversarialConfig, AdversarialTrainer
from ...transforms.gin import GINAugment
from ..base import PlainMethod, ServerParts

PEER_PREFIX = "peer::"  # a peer's local weights in a cyclic payload: "peer::<state-dict key>"
DISC_PREFIX = "discriminator::"  # the (averaged) discriminator's weights, when shared
PEER_META = "peer_site"  # FLModel.meta of a cyclic payload: whose weights came along
PAYLOADS = "fedxmodal.methods.fedda.workflow.FedDAPayloads"


def ring_peers(sites, rnd: int, available=None) -> dict:
    """``{site: peer or None}`` for round ``rnd``: sites in name order on a ring, each paired with
    the site ``1 + (rnd mod (N - 1))`` places further on, so that over N - 1 consecutive rounds
    every site meets every other one and never itself. Round 0 (no local models yet), a single
    site, or a peer not in ``available`` (no local model of it so far): None (joint reference)."""
    sites = sorted(sites)
    n = len(sites)
    if rnd <= 0 or n < 2:
        return {s: None for s in sites}
    offset = 1 + (rnd % (n - 1))
    peers = {s: sites[(i + offset) % n] for i, s in enumerate(sites)}
    return {s: (p if available is None or p in available else None) for s, p in peers.items()}


class FedDAMethod(PlainMethod):
    """FedDA-joint. Method args: ``adv_weight`` (lambda_max, default 1e-3), ``ramp``
    (``sigmoid``/``constant``), ``aux_tap`` / ``aux_ratio`` (second, shallower tap at 0.2x),
    ``d_lr``, ``d_betas``, ``d_width`` (the discriminator), ``share_discriminator`` (average D
    across sites instead of keeping it local; needs ``params_transfer_type: FULL``, the default:
    with DIFF the Client API sends differences only for keys it received, and round 0's payload
    holds no discriminator yet)."""

    name = "fedda"
    label = "FedDA joint"
    regimes = ("centralized", "federated")
    trainer = AdversarialTrainer
    site_parts = "fedxmodal.methods.fedda.site.FedDASiteParts"
    cyclic = False

    def __init__(self, adv_weight: float = 1e-3, ramp: str = "sigmoid", aux_tap: bool = False,
                 aux_ratio: float = 0.2, d_lr: float = 1e-4, d_betas=(0.9, 0.99), d_width: int = 32,
                 share_discriminator: bool = False):
        self.adversarial = AdversarialConfig(weight=adv_weight, ramp=ramp, aux_tap=aux_tap, aux_ratio=aux_ratio,
                                             d_lr=d_lr, d_betas=tuple(d_betas), d_width=d_width)
        self.share_discriminator = bool(share_discriminator)

    @classmethod
    def server_parts(cls, min_clients, method_args=None):
        share = bool((method_args or {}).get("share_discriminator", False))
        if not (cls.cyclic or share):
            return ServerParts()  # joint, D local: plain FedAvg
        return ServerParts(site_payloads={"path": PAYLOADS, "args": {"cyclic": cls.cyclic, "share_discriminator": share}})

    @classmethod
    def guard_declarations(cls, image_size, method_args=None, model=None):
        """A shared discriminator leaves the site with the model: its tensors are declared under
        :data:`DISC_PREFIX` (shapes from the job's U-Net channels and ``d_width``). What a cyclic
        site sends is the model only (its peer's weights must never go back out)."""
        args = method_args or {}
        if not args.get("share_discriminator"):
            return {}
        from ...networks.discriminator import FeatureDiscriminator

        channels = list(((model or {}).get("args") or {}).get("channels", (16, 32, 64, 128)))
        taps = [channels[-1]] + ([channels[-2]] if args.get("aux_tap") else [])
        shapes = {}
        for i, c in enumerate(taps):
            for k, v in FeatureDiscriminator(c, int(args.get("d_width", 32))).state_dict().items():
                shapes[f"{DISC_PREFIX}{i}.{k}"] = list(v.shape)
        return {"expected_shapes": shapes}


class FedDACyclicMethod(FedDAMethod):
    """FedDA-cyclic: the reference is a peer's last local model (federated only)."""

    name = "fedda_cyclic"
    label = "FedDA cyclic"
    regimes = ("federated",)
    cyclic = True


class FedDAGINMethod(FedDAMethod):
    """Joint FedDA on GIN-augmented slices (per-sample GIN, as the FedGIN job)."""

    name = "fedda_gin"
    label = "FedDA + GIN"

    def __init__(self, shared_across_batch: bool = False, interm_channels: int = 2, n_layers: int = 4, **adv_args):
        super().__init__(**adv_args)
        self.gin = GINAugment(n_layers=n_layers, interm_channels=interm_channels,
                              shared_across_batch=shared_across_batch)

    def augment(self, images):
        return self.gin(images)
