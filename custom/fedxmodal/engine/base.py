"""What every trainer shares, whatever its training style: device, mixed precision, seeding,
named optimizers, step logging, epoch batching, weights for the federation, checkpoints.

Trainers by training style sit beside each other on top of :class:`BaseTrainer`, as MONAI's
``SupervisedTrainer``, ``GanTrainer`` and ``AdversarialTrainer`` do: :mod:`.supervised` (one
network, one loss per step, a method's loss), :mod:`.adversarial` (the segmentation network and
a feature discriminator, alternating steps) and :mod:`.episodic` (self-supervised episodes, no
labels; one-shot evaluation from a support volume). The engine imports no NVFlare and names no method:
a trainer is given its method object.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm


class SettingsDict:
    """``to_dict`` / ``from_dict`` for the trainers' settings dataclasses (what checkpoints and job
    specs hold). An unknown key is an error naming it and the known ones when ``strict``;
    otherwise it is dropped (settings written by another trainer style or version)."""

    strict: ClassVar[bool] = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None = None):
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and cls.strict:
            raise ValueError(f"{cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


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


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 / AMX, as oneDNN reports it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # another torch build: no claim
        return False


def mixed_precision_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype a trainer uses on ``device``: float16 on CUDA (with gradient scaling, as
    before), bfloat16 on CPUs that have native bf16, None (float32) elsewhere or when ``amp`` is
    off -- ``amp: false`` in a job's ``train`` settings forces float32 everywhere."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def epoch_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """One epoch's shuffled index batches over ``n`` items. A last batch of one item is dropped
    (BatchNorm cannot train on it) unless it is the only item."""
    order = torch.randperm(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)
            if len(order[i:i + batch_size]) > 1 or n == 1]


@dataclass
class SliceData:
    """Labelled slices held in memory, trained on in epochs of shuffled batches.

    Shapes: images (N, 1, S, S) float, labels (N, S, S) class indices, domains (N,) long (the
    index of the site each slice comes from) or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor | None = None

    def __post_init__(self):
        if self.images.shape[0] == 0:
            raise ValueError("no training slices")
        if not torch.isfinite(self.images).all():
            raise ValueError("training images contain NaN/inf")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, idx: torch.Tensor) -> dict:
        """``{"images", "labels", "domains"}`` of the slices ``idx``."""
        return {"images": self.images[idx], "labels": self.labels[idx],
                "domains": None if self.domains is None else self.domains[idx]}

    def epoch(self, batch_size: int) -> "EpochBatches":
        """One epoch's batches in a fresh random order (drawn now, indexed as the loop asks)."""
        return EpochBatches(self, epoch_batches(len(self), batch_size))


class EpochBatches:
    """The batches of one epoch of a :class:`SliceData`, each indexed when the loop reaches it."""

    def __init__(self, data: SliceData, order: list[torch.Tensor]):
        self.data, self.order = data, order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for idx in self.order:
            yield self.data.batch(idx)


class FitStats:
    """Per-step scalars of one ``fit`` -> the one summary every trainer returns."""

    def __init__(self, keep_history: bool = False):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.history: list[dict] | None = [] if keep_history else None
        self.steps = self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, scalars: dict, samples: int) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        if self.history is not None:
            self.history.append(dict(scalars))
        self.steps += 1
        self.samples += int(samples)

    def summary(self, aborted: bool = False) -> dict:
        """``loss`` (mean of the step losses), ``means`` / ``counts`` of every logged term (over
        the steps that logged it), ``steps``, ``samples`` (slices or episodes seen), ``seconds``,
        ``aborted`` (and ``history``, every step's scalars, when kept)."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        out = {"loss": means.get("loss", math.nan), "means": means, "counts": dict(self.counts),
               "steps": self.steps, "samples": self.samples, "seconds": time.perf_counter() - self.t0,
               "aborted": aborted}
        if self.history is not None:
            out["history"] = self.history
        return out


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


class StepBatches:
    """``steps`` batches drawn from ``next_batch()`` one at a time, as the loop asks for them."""

    def __init__(self, next_batch: Callable[[], dict], steps: int):
        self.next_batch, self.steps = next_batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.next_batch()


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
        self.amp_dtype = mixed_precision_dtype(self.device, amp)  # None: float32
        self.use_amp = self.amp_dtype is not None
        self.scale_gradients = self.amp_dtype == torch.float16  # bf16 has float32's range: no scaler
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.global_step = 0
        self.epochs_done = 0
        self.planned_epochs: int | None = None  # the whole run's epochs, for schedules (None: unknown)
        self.meta: dict = {}

    def plan(self, planned_epochs: int | None, epochs_done: int | None = None) -> None:
        """Tell the trainer how many epochs the whole run trains (and, federated, how many came
        before this process's next ``fit``: round x local epochs), for schedules such as a ramp."""
        self.planned_epochs = int(planned_epochs) if planned_epochs else None
        if epochs_done is not None:
            self.epochs_done = int(epochs_done)

    def progress(self, batch: int = 0, n_batches: int = 1) -> float:
        """Training progress in [0, 1] at ``batch`` of ``n_batches`` of the current epoch; 1.0 when
        the run's length is unknown (see :meth:`plan`)."""
        if not self.planned_epochs:
            return 1.0
        return min(1.0, max(0.0, (self.epochs_done + batch / max(n_batches, 1)) / self.planned_epochs))

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self.optimizers[name] = optimizer
        self.scalers[name] = torch.amp.GradScaler("cuda", enabled=self.scale_gradients)
        return optimizer

    def autocast(self):
        """Mixed precision for training steps."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def inference_autocast(self):
        """Mixed precision for prediction: CUDA float16 as in training; float32 on CPU, so that
        evaluations, masks and exported bundles do not depend on whether a CPU has bfloat16."""
        on_cuda = self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp and on_cuda)

    def optimizer_step(self, loss: torch.Tensor, name: str) -> None:
        """Backward ``loss`` and step optimizer ``name`` (gradients scaled under CUDA float16)."""
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

    # ---- the one training loop -----------------------------------------------------------
    def fit(self, data: SliceData | Callable[[], dict], *, epochs: int | None = None, steps: int | None = None,
            should_stop: Callable[[], bool] | None = None, progress: bool = False, desc: str = "train",
            keep_history: bool = False) -> dict:
        """Train on ``data``: a :class:`SliceData` for ``epochs`` passes of shuffled batches
        (default 1), or a callable returning the next batch for ``steps`` steps (default the
        config's ``steps``). Each batch goes to :meth:`iteration` (the training style's step);
        ``should_stop()`` is polled before every step (NVFlare abort). Returns
        :meth:`FitStats.summary`."""
        passes = self._passes(data, epochs, steps)
        self.start_fit()
        stats = FitStats(keep_history)
        for batches in passes:
            batches = batches()
            for b, batch in enumerate(tqdm(batches, desc=f"{desc} epoch {self.epochs_done + 1}", leave=False,
                                           disable=not progress)):
                if should_stop is not None and should_stop():
                    return stats.summary(aborted=True)
                scalars, samples = self.iteration(batch, b, len(batches))
                stats.add(scalars, samples)
                self.global_step += 1
                self.log_step(scalars)
            self.epochs_done += 1
        return stats.summary()

    def _passes(self, data, epochs, steps) -> list:
        """Lazily built passes over ``data``: each a callable returning a list (epoch) or a lazy
        sequence (steps) of batches."""
        if isinstance(data, SliceData):
            if steps is not None:
                raise ValueError("slices in memory train in epochs: pass epochs, not steps")
            epochs = 1 if epochs is None else int(epochs)
            batch_size = self.train_config.batch_size
            return [lambda: data.epoch(batch_size)] * epochs
        if not callable(data):
            raise TypeError(f"fit takes SliceData or a callable returning batches, got {type(data).__name__}")
        if epochs is not None:
            raise ValueError("a stream of batches trains in steps: pass steps, not epochs")
        steps = int(self.train_config.steps if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return [lambda: StepBatches(data, steps)]

    def start_fit(self) -> None:
        """Before a fit's first step: train mode (and a style's own checks)."""
        self.model.train()

    def iteration(self, batch, index: int, n_batches: int) -> tuple[dict, int]:
        """One training step on ``batch`` (``index`` of ``n_batches`` in this pass): returns the
        step's scalars (``loss`` among them) and the number of samples it trained on."""
        raise NotImplementedError

    # ---- weights the federation exchanges -------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict) -> None:
        state = {k: torch.as_tensor(v) for k, v in weights.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise KeyError(f"weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # ---- checkpoints ------------------------------------------------------------------------
    # A trainer that checkpoints sets ``config_class`` (its settings dataclass: ``to_dict`` /
    # ``from_dict``) and keeps ``structures``, ``network``, ``preprocess``, ``train_config`` and
    # ``domains``; ``network_record`` / ``network_from_record`` round-trip its network settings.
    config_class = None

    @staticmethod
    def network_record(network) -> dict:
        return dict(network or {})

    @staticmethod
    def network_from_record(record):
        return dict(record or {})

    def checkpoint(self, **meta) -> dict:
        """The dict :meth:`save` writes (subclasses may add what else rebuilds them)."""
        return {"format": self.checkpoint_format, "structures": list(self.structures),
                "network": self.network_record(self.network), "preprocess": self.preprocess.to_dict(),
                "train": self.train_config.to_dict(), "domains": list(self.domains), "model": self.get_weights(),
                "meta": meta}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, method, device: str = "auto", **train_overrides):
        """Rebuild from a :meth:`checkpoint` dict (see :func:`read_checkpoint`) and the method object."""
        from ..data.preprocess import PreprocessConfig

        trainer = cls(ckpt["structures"], method, network=cls.network_from_record(ckpt.get("network")),
                      train=cls.config_class.from_dict({**ckpt.get("train", {}), **train_overrides}),
                      preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]), device=device,
                      domains=ckpt.get("domains", ()))
        trainer.set_weights(ckpt["model"])
        trainer.meta = ckpt.get("meta", {})
        return trainer

    def save(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(**meta), path)
        return path
