"""The supervised trainer: one segmentation network, one optimizer, one loss per step, the loss
given by a method (its augmentation / consistency terms). Every regime (local, centralized,
federated) of the augmentation and normalization methods trains and evaluates through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ..data.preprocess import PreparedVolume, PreprocessConfig, VolumePreprocessor
from ..losses.segmentation import build_segmentation_loss
from ..networks.unet import UNetConfig, build_unet, config_from_job_model
from ..transforms.spatial import RandomAffine2D
from .base import BaseTrainer, SettingsDict
from .evaluation import evaluate_site, predict_volume

CHECKPOINT_FORMAT = "fedxmodal-unet2d/1"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig(SettingsDict):
    """Optimisation settings. GIN paper: Adam lr 3e-4, beta1 0.5, weight decay 3e-5; we keep
    beta1 and the decay but default to lr 1e-3, as CPU budgets allow ~10x fewer steps.
    ``method`` / ``method_args`` name the method the trainer was given (kept in checkpoints)."""

    method: str = ""  # "": the package's default method (fedxmodal.methods.DEFAULT_METHOD)
    method_args: dict = field(default_factory=dict)
    batch_size: int = 16
    lr: float = 1e-3
    beta1: float = 0.5
    weight_decay: float = 3e-5
    spatial_augment: bool = True
    foreground_only: bool = True  # train on slices that contain labels, as the papers do
    amp: bool = True  # mixed precision where the device has it (CUDA float16, CPU bfloat16); False: float32
    # "constant" or "cosine": lr x 0.5 (1 + cos(pi p)) over the run's progress p (needs ``plan``;
    # federated: the job's rounds x local epochs), after a linear warm-up over ``warmup`` of the run
    lr_schedule: str = "constant"
    warmup: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: expected one of {LR_SCHEDULES}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup {self.warmup}: a fraction of the run in [0, 1)")

    def lr_at(self, progress: float) -> float:
        """The learning rate at ``progress`` in [0, 1] of the run."""
        if self.lr_schedule == "constant":
            return self.lr
        if progress < self.warmup:
            return self.lr * max(progress / self.warmup, 0.01)  # never 0: the first steps still move
        p = (progress - self.warmup) / (1.0 - self.warmup)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


class SupervisedTrainer(BaseTrainer):
    """A 2D U-Net, its Adam optimizer and the method's loss; the loops that train and evaluate it.

    Images are (N, 1, S, S) float slices, labels (N, S, S) uint8 class indices, where class c>0
    is ``structures[c-1]``. ``method``: an object with ``training_loss`` / ``infer`` /
    ``prepare`` (see :mod:`fedxmodal.methods.base`). ``domains``: names of the sites trained on,
    in domain-index order.
    """

    checkpoint_format = CHECKPOINT_FORMAT

    def __init__(self, structures, method, network: UNetConfig | None = None, train: TrainConfig | None = None,
                 preprocess: PreprocessConfig | None = None, device: str = "auto", writer=None, domains=()):
        self.train_config = train or TrainConfig()
        super().__init__(device=device, amp=self.train_config.amp, writer=writer)
        self.structures = tuple(structures)
        self.domains = tuple(domains)
        self.network = network or UNetConfig()
        self.preprocess = preprocess or PreprocessConfig()
        self.model = build_unet(len(self.structures), self.network).to(self.device)
        self.method = method
        self.seg_loss = build_segmentation_loss()
        self.spatial = RandomAffine2D() if self.train_config.spatial_augment else None
        tc = self.train_config
        self.optimizer = self.add_optimizer("model", torch.optim.Adam(
            self.model.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999), weight_decay=tc.weight_decay))

    @property
    def n_classes(self) -> int:
        return len(self.structures) + 1

    # ---- training: one step of the base trainer's loop ------------------------------------
    def iteration(self, batch: dict, index: int, n_batches: int) -> tuple[dict, int]:
        """One step on a :class:`~fedxmodal.engine.base.SliceData` batch: images (B, 1, S, S),
        labels (B, S, S), domains (B,) or None; spatial augmentation, then the method's loss."""
        self.schedule_lr(index, n_batches)
        x, y, d = self.batch_to_device(batch)
        with self.autocast():
            loss, logs = self.method.training_loss(self.model, x, y, self.seg_loss, domains=d)
        self.optimizer_step(loss, "model")
        return {"loss": float(loss.detach()), **logs}, x.shape[0]

    def batch_to_device(self, batch: dict) -> tuple:
        """(images, labels as long, domains or None) on the device, spatially augmented."""
        x = batch["images"].to(self.device, non_blocking=True)
        y = batch["labels"].to(self.device, non_blocking=True).long()
        d = None if batch.get("domains") is None else batch["domains"].to(self.device)
        if self.spatial is not None:
            x, y = self.spatial(x, y)
        return x, y, d

    def schedule_lr(self, batch: int, n_batches: int) -> None:
        """Set the model optimizer's lr for ``batch`` of the current epoch (``TrainConfig.lr_at``)."""
        if self.train_config.lr_schedule == "constant":
            return
        if not self.planned_epochs:  # progress() would read 1.0: a cosine lr of 0 for the whole run
            raise ValueError(f"lr_schedule {self.train_config.lr_schedule!r} needs the run's length: call "
                             "plan(epochs) before fit")
        lr = self.train_config.lr_at(self.progress(batch, n_batches))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_slices(self, images: torch.Tensor, batch_size: int = 32, domain: int | None = None) -> torch.Tensor:
        """(Z, 1, S, S) -> (Z, C, S, S) softmax probabilities (on CPU). ``domain``: index of the
        training site the images come from (domain-specific normalization), None if unknown."""
        self.model.eval()
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(self.device)
            with self.inference_autocast():
                out.append(torch.softmax(self.method.infer(self.model, x, domain).float(), 1).cpu())
        return torch.cat(out)

    def predict_volume(self, vol: PreparedVolume, preprocessor: VolumePreprocessor,
                       domain: int | None = None) -> np.ndarray:
        """A prepared volume -> (X, Y, Z) uint8 class indices on the volume's original grid."""
        return predict_volume(partial(self.predict_slices, domain=domain), vol, preprocessor)

    def evaluate(self, site_slices, split: str = "test", hd95: bool = False, progress: bool = False) -> dict:
        """Per-volume 3D Dice per structure on one site's split (on the original grids). A site the
        trainer trained on is run as its own domain (matters for domain-specific normalization)."""
        domain = self.domains.index(site_slices.name) if site_slices.name in self.domains else None
        return evaluate_site(partial(self.predict_slices, domain=domain), site_slices, self.structures, split,
                             hd95=hd95, progress=progress)

    # ---- checkpoints (BaseTrainer.checkpoint / from_checkpoint) -----------------------------
    config_class = TrainConfig

    @staticmethod
    def network_record(network) -> dict:
        return network.to_dict()

    @staticmethod
    def network_from_record(record):
        return UNetConfig.from_dict(record)

    @classmethod
    def from_job_args(cls, args: dict, method, device: str = "auto") -> "SupervisedTrainer":
        """The trainer a job's site arguments describe (``structures``, ``model``, ``train``,
        ``preprocess``, ``method``)."""
        train = TrainConfig.from_dict({**args.get("train", {}), "method": args.get("method", "")})
        return cls(args["structures"], method, network=config_from_job_model(args["model"]), train=train,
                   preprocess=PreprocessConfig.from_dict(args.get("preprocess")), device=device)
