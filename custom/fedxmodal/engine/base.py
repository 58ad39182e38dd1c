"""What every trainer shares, whatever its training style: device, mixed precision, seeding,
named optimizers, step logging, epoch batching, weights for the federation, checkpoints.

Trainers by training style sit beside each other on top of :class:`BaseTrainer`, as MONAI's
``SupervisedTrainer``, ``GanTrainer`` and ``AdversarialTrainer`` do: :mod:`.supervised` (one
network, one loss per step, a method's loss), :mod:`.episodic` (self-supervised episodes, no
labels; one-shot evaluation from a support volume). The engine imports no NVFlare and names no method:
a trainer is given its method object.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch


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


def epoch_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """One epoch's shuffled index batches over ``n`` items. A last batch of one item is dropped
    (BatchNorm cannot train on it) unless it is the only item."""
    order = torch.randperm(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)
            if len(order[i:i + batch_size]) > 1 or n == 1]


def read_checkpoint(path, expected_format) -> dict:
    """Load a checkpoint dict written by a trainer's ``save`` (``expected_format``: one format or
    several); the error names the file and, for an NVFlare global model, says what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    formats = (expected_format,) if isinstance(expected_format, str) else tuple(expected_format)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        hint = (" (an NVFlare global model: pass the job folder too, e.g. --job jobs/fedgin)"
                if isinstance(ckpt, dict) and "model" in ckpt else "")
        raise ValueError(f"{path}: not a fedxmodal checkpoint (expected format {' or '.join(formats)}){hint}")
    return ckpt


class BaseTrainer:
    """Device, AMP, optimizers by name, logging and the weights the federation exchanges.

    Subclasses set ``self.model`` (the network whose weights a federation averages) and register
    their optimizers with :meth:`add_optimizer`; one training step calls :meth:`optimizer_step`
    per optimizer. ``writer``: anything with ``add_scalar(tag, value, step)`` (TensorBoard or
    NVFlare's SummaryWriter).
    """

    checkpoint_format = "fedxmodal/unknown"

    def __init__(self, device: str = "auto", amp: bool = True, writer=None):
        self.device = resolve_device(device)
        self.writer = writer
        self.use_amp = amp and self.device.type == "cuda"  # mixed precision, used only on CUDA
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.global_step = 0
        self.epochs_done = 0
        self.meta: dict = {}

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self.optimizers[name] = optimizer
        self.scalers[name] = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        return optimizer

    def autocast(self):
        return torch.autocast(self.device.type, enabled=self.use_amp)

    def optimizer_step(self, loss: torch.Tensor, name: str) -> None:
        """Backward ``loss`` and step optimizer ``name`` (gradients scaled under CUDA AMP)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {name} loss at step {self.global_step}")
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def log_step(self, scalars: dict, every: int = 10) -> None:
        """Write ``step/<name>`` scalars every ``every`` global steps."""
        if self.writer is not None and self.global_step % every == 0:
            for k, v in scalars.items():
                self.writer.add_scalar(f"step/{k}", v, self.global_step)

    @staticmethod
    def fit_summary(losses, n, steps, t0, aborted=False) -> dict:
        secs = time.perf_counter() - t0
        return {"loss": float(np.mean(losses)) if losses else math.nan, "n_slices": n, "steps": steps,
                "seconds": secs, "aborted": aborted}

    # ---- weights the federation exchanges -------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict) -> None:
        state = {k: torch.as_tensor(v) for k, v in weights.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise KeyError(f"weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, **meta) -> dict:
        """The dict :meth:`save` writes; subclasses add what rebuilds them."""
        return {"format": self.checkpoint_format, "model": self.get_weights(), "meta": meta}

    def save(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(**meta), path)
        return path
