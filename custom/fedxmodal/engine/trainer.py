"""The one training engine: every method and every regime (local, centralized, federated) trains
and evaluates through ``SegmentationEngine``. A method contributes only ``training_loss``."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import PreparedVolume, PreprocessConfig, VolumePreprocessor
from ..losses.segmentation import build_segmentation_loss
from ..metrics.dice import summarize, volume_metrics
from ..networks.unet import UNetConfig, build_unet
from ..transforms.spatial import RandomAffine2D
from .methods import build_method

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "fedxmodal-unet2d/1"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class TrainConfig:
    """Optimisation settings. GIN paper: Adam lr 3e-4, beta1 0.5, weight decay 3e-5; we keep
    beta1 and the decay but default to lr 1e-3, as CPU budgets allow ~10x fewer steps."""

    method: str = "gin"
    method_args: dict = field(default_factory=dict)
    batch_size: int = 16
    lr: float = 1e-3
    beta1: float = 0.5
    weight_decay: float = 3e-5
    spatial_augment: bool = True
    foreground_only: bool = True  # train on slices that contain labels, as the papers do
    amp: bool = True  # mixed precision, used only on CUDA
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        return cls(**dict(d or {}))


class SegmentationEngine:
    """A 2D U-Net, its optimizer and method, and the loops that train and evaluate it.

    Images are (N, 1, S, S) float slices, labels (N, S, S) uint8 class indices, where class c>0
    is ``structures[c-1]``.
    """

    def __init__(self, structures, network: UNetConfig | None = None, train: TrainConfig | None = None,
                 preprocess: PreprocessConfig | None = None, device: str = "auto", writer=None,
                 domains=()):
        self.structures = tuple(structures)
        self.domains = tuple(domains)  # names of the sites trained on, in domain-index order
        self.network = network or UNetConfig()
        self.train_config = train or TrainConfig()
        self.preprocess = preprocess or PreprocessConfig()
        self.device = resolve_device(device)
        self.writer = writer  # anything with add_scalar(tag, value, step): TensorBoard or NVFlare's
        self.model = build_unet(len(self.structures), self.network).to(self.device)
        self.method = build_method(self.train_config.method, **self.train_config.method_args)
        self.seg_loss = build_segmentation_loss()
        self.spatial = RandomAffine2D() if self.train_config.spatial_augment else None
        tc = self.train_config
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, betas=(tc.beta1, 0.999),
                                          weight_decay=tc.weight_decay)
        self.use_amp = tc.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.global_step = 0
        self.epochs_done = 0

    @property
    def n_classes(self) -> int:
        return len(self.structures) + 1

    # ---- training -------------------------------------------------------------------------
    def fit(self, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1, desc: str = "train",
            progress: bool = True, should_stop=None, domains: torch.Tensor | None = None) -> dict:
        """Train ``epochs`` passes over (N,1,S,S) images / (N,S,S) labels (and (N,) domain index
        per slice, for the methods that use it); returns mean loss, slices seen, steps and wall
        time. ``should_stop()`` is polled per step (NVFlare abort)."""
        if images.shape[0] == 0:
            raise ValueError("no training slices")
        if not torch.isfinite(images).all():
            raise ValueError("training images contain NaN/inf")
        self.model.train()
        bs = self.train_config.batch_size
        n = images.shape[0]
        losses, t0, steps = [], time.perf_counter(), 0
        for _ in range(epochs):
            order = torch.randperm(n)
            # Drop a last batch of 1 (BatchNorm cannot train on it).
            batches = [order[i:i + bs] for i in range(0, n, bs) if len(order[i:i + bs]) > 1 or n == 1]
            for idx in tqdm(batches, desc=f"{desc} epoch {self.epochs_done + 1}", leave=False, disable=not progress):
                if should_stop is not None and should_stop():
                    return self._fit_summary(losses, n, steps, t0, aborted=True)
                x = images[idx].to(self.device, non_blocking=True)
                y = labels[idx].to(self.device, non_blocking=True).long()
                d = None if domains is None else domains[idx].to(self.device)
                if self.spatial is not None:
                    x, y = self.spatial(x, y)
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    loss, logs = self.method.training_loss(self.model, x, y, self.seg_loss, domains=d)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at step {self.global_step}")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                losses.append(float(loss.detach()))
                steps += 1
                self.global_step += 1
                if self.writer is not None and self.global_step % 10 == 0:
                    self.writer.add_scalar("step/loss", losses[-1], self.global_step)
                    for k, v in logs.items():
                        self.writer.add_scalar(f"step/{k}", v, self.global_step)
            self.epochs_done += 1
        return self._fit_summary(losses, n, steps, t0)

    @staticmethod
    def _fit_summary(losses, n, steps, t0, aborted=False) -> dict:
        secs = time.perf_counter() - t0
        return {"loss": float(np.mean(losses)) if losses else math.nan, "n_slices": n, "steps": steps,
                "seconds": secs, "aborted": aborted}

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_slices(self, images: torch.Tensor, batch_size: int = 32, domain: int | None = None) -> torch.Tensor:
        """(Z, 1, S, S) -> (Z, C, S, S) softmax probabilities (on CPU). ``domain``: index of the
        training site the images come from (domain-specific normalization), None if unknown."""
        self.model.eval()
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(self.device)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                out.append(torch.softmax(self.method.infer(self.model, x, domain).float(), 1).cpu())
        return torch.cat(out)

    def predict_volume(self, vol: PreparedVolume, preprocessor: VolumePreprocessor,
                       domain: int | None = None) -> np.ndarray:
        """A prepared volume -> (X, Y, Z) uint8 class indices on the volume's original grid."""
        probs = preprocessor.invert(vol, self.predict_slices(vol.image, domain=domain))
        return probs.argmax(0).numpy().astype(np.uint8)

    def evaluate(self, site_slices, split: str = "test", hd95: bool = False, progress: bool = False) -> dict:
        """Per-volume 3D Dice per structure on one site's split (on the original grids). A site the
        engine trained on is run as its own domain (matters for domain-specific normalization)."""
        domain = self.domains.index(site_slices.name) if site_slices.name in self.domains else None
        per_volume = []
        vols = site_slices.volumes(split)
        for vol in tqdm(vols, desc=f"eval {site_slices.name}/{split}", leave=False, disable=not progress):
            if vol.ref_label is None:
                continue
            pred = self.predict_volume(vol, site_slices.preprocessor, domain=domain)
            m = volume_metrics(pred, vol.ref_label, self.structures, spacing=vol.spacing, hd95=hd95)
            m["case"] = vol.case.case_id
            per_volume.append(m)
        return {"site": site_slices.name, "modality": site_slices.modality, "split": split,
                "per_volume": per_volume, "summary": summarize(per_volume, self.structures)}

    # ---- weights and checkpoints ----------------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict) -> None:
        state = {k: torch.as_tensor(v) for k, v in weights.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise KeyError(f"weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def checkpoint(self, **meta) -> dict:
        return {"format": CHECKPOINT_FORMAT, "structures": list(self.structures),
                "network": self.network.to_dict(), "preprocess": self.preprocess.to_dict(),
                "train": self.train_config.to_dict(), "domains": list(self.domains), "model": self.get_weights(),
                "meta": meta}

    def save(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(**meta), path)
        return path

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", **overrides) -> "SegmentationEngine":
        """Load a checkpoint written by ``save`` (or by the federated server, same format)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model checkpoint not found")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            hint = (" (an NVFlare global model: pass the job folder too, e.g. --job jobs/fedgin)"
                    if isinstance(ckpt, dict) and "model" in ckpt else "")
            raise ValueError(f"{path}: not a fedxmodal checkpoint (expected format {CHECKPOINT_FORMAT}){hint}")
        engine = cls(ckpt["structures"], network=UNetConfig.from_dict(ckpt["network"]),
                     train=TrainConfig.from_dict({**ckpt.get("train", {}), **overrides}),
                     preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]), device=device,
                     domains=ckpt.get("domains", ()))
        engine.set_weights(ckpt["model"])
        engine.meta = ckpt.get("meta", {})
        return engine
