"""The methods, one module (or package) each, and their registry.

Adding a method: write its module (see :mod:`.base` for what a method owns) and add its class to
:data:`METHODS`, in the order the comparison lists them. Nothing else names a method.
"""

from __future__ import annotations

import dataclasses

from ..engine.base import read_checkpoint
from ..engine.supervised import TrainConfig
from .base import PlainMethod
from .butterworth import ButterworthHighPassMethod
from .dsbn import DSBNMethod
from .dualnorm import DualNormMethod
from .fedda import FedDACyclicMethod, FedDAGINMethod, FedDAMethod
from .factory import FactoryMethod
from .factory.adaptation import AdaptationMethod
from .fedcowpro import CoWProMethod, FedCoWProMethod, SSLALPNetMethod
from .feddg import FedDGAmplitudeMethod
from .fedprox import FedProxMethod
from .gin import GINIPAMethod, GINMethod
from .randconv import RandConvMethod

DEFAULT_METHOD = "gin"  # FedGIN, the main job's method
METHODS = {m.name: m for m in (
    PlainMethod,
    RandConvMethod,
    FedDGAmplitudeMethod,
    ButterworthHighPassMethod,
    DSBNMethod,
    DualNormMethod,
    GINMethod,
    GINIPAMethod,
    FedProxMethod,
    FedDAMethod,
    FedDACyclicMethod,
    FedDAGINMethod,
    SSLALPNetMethod,
    CoWProMethod,
    FedCoWProMethod,
    FactoryMethod,
    AdaptationMethod,
)}
DEFAULT_ONESHOT_METHOD = "fedcowpro"  # the self-supervised one-shot job's method (jobs/fedcowpro)
DEFAULT_GAN_METHOD = "data_factory"  # the generative job's method (jobs/factory)


def method_class(name: str):
    """The registered method class of ``name`` ("" or None: :data:`DEFAULT_METHOD`)."""
    name = name or DEFAULT_METHOD
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def build_method(name: str, **kwargs):
    return method_class(name)(**kwargs)


def build_trainer(structures, network=None, train=None, preprocess=None, device: str = "auto", writer=None,
                  domains=()):
    """The trainer of ``train.method`` (a :class:`~fedxmodal.engine.supervised.TrainConfig`), given
    its method object built from ``train.method_args``."""
    train = train or TrainConfig()
    cls = method_class(train.method)
    train = dataclasses.replace(train, method=cls.name)  # checkpoints record the method by name
    return cls.trainer(structures, cls(**train.method_args), network=network, train=train, preprocess=preprocess,
                       device=device, writer=writer, domains=domains)


def load_trainer(path, device: str = "auto", **train_overrides):
    """A trainer rebuilt from a checkpoint written by its ``save`` (or by ``compare``/``train``)."""
    ckpt = read_checkpoint(path, sorted({cls.trainer.checkpoint_format for cls in METHODS.values()}))
    train = {**ckpt.get("train", {}), **train_overrides}
    cls = method_class(train.get("method"))
    if ckpt["format"] != cls.trainer.checkpoint_format:
        raise ValueError(f"{path}: a {ckpt['format']} checkpoint, but method {cls.name} trains with {cls.trainer.__name__}")
    return cls.trainer.from_checkpoint(ckpt, cls(**train.get("method_args", {})), device=device, **train_overrides)


def trainer_from_job_args(args: dict, device: str = "auto"):
    """The (untrained) trainer a job's site arguments describe, by its method's training style."""
    cls = method_class(args.get("method"))
    method = cls(**dict(args.get("train", {}).get("method_args") or {}))
    return cls.trainer.from_job_args({**args, "method": cls.name}, method, device=device)
