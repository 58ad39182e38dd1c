"""The adversarial trainer: the segmentation U-Net plus a feature discriminator on its encoder,
updated in alternation every batch (AdaptSegNet / ADDA style), for feature alignment methods.

Per batch:

1. **segmentation step** (the discriminator frozen): ``L = L_method + lambda(p) * L_adv``, where
   ``L_method`` is the method's ``training_loss`` (Dice + CE, its augmentation) and ``L_adv`` asks
   the discriminator to take the local features for the *reference* ones (BCE with logits,
   label 1). Only the optimizer ``"model"`` steps.
2. **discriminator step** (on detached features: the encoder gets no gradient):
   ``0.5 * [BCE(D(f_local), 0) + BCE(D(f_reference), 1)]``. Only the optimizer ``"discriminator"`` steps.

Where the reference features come from:

* a **reference network** given with :meth:`AdversarialTrainer.set_reference` (federated: the
  global model the site received, or a peer site's model): a frozen copy of the U-Net run under
  ``no_grad`` in train mode -- with *batch* statistics, since its stored BatchNorm statistics come
  from another modality or an average -- on the very input the local network saw this step
  (captured by a forward pre-hook), encoder path only;
* without one, with slices of two or more domains in the batch (pooled sites): domain 0 plays
  "local", the others "reference" (domain-adversarial alignment of the pooled domains);
* neither: no adversarial term (plain supervised training).

Features are tapped with forward hooks on MONAI's UNet (:func:`fedxmodal.networks.unet.encoder_taps`):
the bottleneck (the innermost bottom layer) and optionally the block before it with
``aux_ratio`` x the weight. ``lambda(p)`` ramps with the run's progress ``p`` (:meth:`BaseTrainer.plan`).
The method object carries an :class:`AdversarialConfig` as ``method.adversarial``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..networks.discriminator import FeatureDiscriminator
from ..networks.unet import build_unet, encoder_features, encoder_taps
from .base import SettingsDict
from .supervised import SupervisedTrainer

RAMPS = ("sigmoid", "constant")


@dataclass(frozen=True)
class AdversarialConfig(SettingsDict):
    """weight: lambda_max; ramp: ``sigmoid`` (lambda_max * (2 / (1 + exp(-10 p)) - 1), DANN's) or
    ``constant``; aux_tap / aux_ratio: the second, shallower tap and its share of the weight;
    d_lr / d_betas / d_width: the discriminator's Adam and width (FedDA's design choices)."""

    weight: float = 1e-3
    ramp: str = "sigmoid"
    aux_tap: bool = False
    aux_ratio: float = 0.2
    d_lr: float = 1e-4
    d_betas: tuple = (0.9, 0.99)
    d_width: int = 32

    def __post_init__(self):
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {RAMPS}, got {self.ramp!r}")
        if self.weight < 0:
            raise ValueError("the adversarial weight must be >= 0")

    def weight_at(self, progress: float) -> float:
        if self.ramp == "constant":
            return float(self.weight)
        return float(self.weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0))


def _bce(logits: torch.Tensor, target) -> torch.Tensor:
    target = torch.as_tensor(target, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target.expand_as(logits) if target.dim() == 0 else target)


class AdversarialTrainer(SupervisedTrainer):
    """The supervised trainer's network, method loss, evaluation and checkpoints, plus a feature
    discriminator per tap, its optimizer and the alternating steps (module doc). Inherits from
    :class:`SupervisedTrainer` so that its checkpoints, ``evaluate`` and ``segment`` work unchanged;
    only ``fit`` (the training style) differs."""

    def __init__(self, structures, method, network=None, train=None, preprocess=None, device: str = "auto",
                 writer=None, domains=()):
        super().__init__(structures, method, network=network, train=train, preprocess=preprocess, device=device,
                         writer=writer, domains=domains)
        self.adversarial: AdversarialConfig = method.adversarial
        cfg = self.adversarial
        self.taps = encoder_taps(self.model, cfg.aux_tap)
        channels = [self.network.channels[-1]] + ([self.network.channels[-2]] if len(self.taps) > 1 else [])
        self.discriminator = torch.nn.ModuleList(
            [FeatureDiscriminator(c, cfg.d_width) for c in channels]).to(self.device)
        self.add_optimizer("discriminator", torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr,
                                                             betas=tuple(cfg.d_betas)))
        self.reference: torch.nn.Module | None = None
        self._capture: dict | None = None  # filled by the hooks during a segmentation step
        self.model.register_forward_pre_hook(self._on_input)
        for i, tap in enumerate(self.taps):
            tap.register_forward_hook(partial(self._on_tap, i))

    # ---- hooks ------------------------------------------------------------------------------
    def _on_input(self, _module, args):
        if self._capture is not None:
            self._capture["input"].append(args[0])

    def _on_tap(self, i, _module, _inputs, output):
        if self._capture is not None:
            self._capture["taps"][i].append(output)

    # ---- the reference and the discriminator ------------------------------------------------
    def set_reference(self, weights: dict | None) -> None:
        """The frozen reference network's weights (a U-Net state dict), or None for none."""
        if weights is None:
            self.reference = None
            return
        ref = build_unet(len(self.structures), self.network).to(self.device)
        missing, unexpected = ref.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise KeyError(f"reference weights do not fit the network: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        self.reference = ref.requires_grad_(False).train()  # batch statistics (module doc)

    def discriminator_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()}

    def set_discriminator_weights(self, weights: dict) -> None:
        self.discriminator.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})

    # ---- training ---------------------------------------------------------------------------
    def _reference_features(self, model_input, feats, domains):
        """(reference features per tap, or None; per-row label of the local features: 0, or 1 for
        the 'reference' domains) for the mode of this step (module doc)."""
        if self.reference is not None:
            with torch.no_grad(), self.autocast():
                ref = encoder_features(self.reference, model_input.detach(), aux=len(self.taps) > 1)
            return ref, torch.zeros(len(feats[0]), device=self.device)
        if domains is not None and domains.unique().numel() > 1:
            label = (domains > domains.min()).float()
            return None, label.repeat(len(feats[0]) // len(label))
        return None, None

    def train_step(self, x, y, domains, lam: float) -> dict:
        cfg = self.adversarial
        ratios = [1.0] + [cfg.aux_ratio] * (len(self.taps) - 1)
        rows = lambda v, t: v.view(-1, 1, 1, 1).expand_as(t)  # noqa: E731  per-row label -> patch targets
        # 1. segmentation step, the discriminator frozen
        self.discriminator.requires_grad_(False)
        self._capture = {"input": [], "taps": [[] for _ in self.taps]}
        try:
            with self.autocast():
                seg, logs = self.method.training_loss(self.model, x, y, self.seg_loss, domains=domains)
        finally:
            capture, self._capture = self._capture, None
        feats = [torch.cat(t) for t in capture["taps"]]
        ref, local_label = self._reference_features(torch.cat(capture["input"]), feats, domains)
        active = local_label is not None
        adv = torch.zeros((), device=self.device)
        if active and lam > 0:
            with self.autocast():
                for r, f, disc in zip(ratios, feats, self.discriminator):
                    logits = disc(f)
                    adv = adv + r * _bce(logits, rows(1.0 - local_label, logits))  # fool D: "reference"
        loss = seg + lam * adv
        self.optimizer_step(loss, "model")
        self.discriminator.requires_grad_(True)
        out = {**logs, "loss_seg": float(seg.detach()), "loss_adv": float(adv.detach()), "adv_weight": lam}
        if not active:
            return out
        # 2. discriminator step on detached features (no gradient reaches the encoder)
        d_loss, correct, total = torch.zeros((), device=self.device), 0.0, 0
        with self.autocast():
            for i, (f, disc) in enumerate(zip(feats, self.discriminator)):
                local = disc(f.detach())
                d_loss = d_loss + (0.5 if ref is not None else 1.0) * _bce(local, rows(local_label, local))
                correct += float(((local > 0).float() == rows(local_label, local)).float().sum())
                total += local.numel()
                if ref is not None:
                    other = disc(ref[i].to(f.dtype))
                    d_loss = d_loss + 0.5 * _bce(other, 1.0)
                    correct += float((other > 0).float().sum())
                    total += other.numel()
        self.optimizer_step(d_loss, "discriminator")
        return {**out, "loss_disc": float(d_loss.detach()), "disc_acc": correct / max(total, 1)}

    def start_fit(self) -> None:
        super().start_fit()
        self.discriminator.train()

    def iteration(self, batch: dict, index: int, n_batches: int) -> tuple[dict, int]:
        """As :meth:`SupervisedTrainer.iteration`, with the alternating steps of :meth:`train_step`;
        the scalars add ``loss_seg``, ``loss_adv``, ``adv_weight`` (and ``loss_disc``,
        ``disc_acc`` when the adversarial term is active)."""
        self.schedule_lr(index, n_batches)  # the segmentation optimizer's (TrainConfig.lr_schedule)
        x, y, d = self.batch_to_device(batch)
        logs = self.train_step(x, y, d, self.adversarial.weight_at(self.progress(index, n_batches)))
        return {"loss": logs["loss_seg"] + logs["adv_weight"] * logs["loss_adv"], **logs}, x.shape[0]

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, **meta) -> dict:
        return {**super().checkpoint(**meta), "discriminator": self.discriminator_weights()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, method, device: str = "auto", **train_overrides) -> "AdversarialTrainer":
        trainer = super().from_checkpoint(ckpt, method, device=device, **train_overrides)
        if ckpt.get("discriminator"):
            trainer.set_discriminator_weights(ckpt["discriminator"])
        return trainer
