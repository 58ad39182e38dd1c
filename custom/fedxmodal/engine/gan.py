"""The GAN trainer: a conditional StyleGAN2 (generator, projection discriminator, EMA generator)
trained on a site's real slices and their conditions -- phase 1 of a federated data factory.

The trainer is given its method object, which brings ``build_network(**network)`` -> a
:class:`fedxmodal.networks.gan.FactoryGAN` (the weights a federation averages: G, D and
EMA-G alike). ``fit(next_batch, steps)`` runs ``steps`` G+D steps; ``next_batch()`` returns REAL
slices with their conditions::

    {"images": (B, 1, S, S) float in about [-1, 1], "site": (B,) long, "key": (B, key_dim) float,
     "zbin": (B,) long}

One step, StyleGAN2 with lazy regularisation:

1. D: ``d_logistic(D(x), D(G(z)))`` with G's fakes under the real batch's conditions (the key
   dropped per sample with probability ``key_drop``, the same mask for D's real and fake
   condition; style mixing with ``style_mix_prob``); every ``r1_every``-th D step (counted from
   0) a separate step on ``r1_gamma / 2 * r1_every * R1``.
2. G: ``g_nonsaturating(D(G(z')))`` with fresh z' (and a fresh key-drop mask) under the same
   conditions; every ``pl_every``-th G step a separate step on ``pl_weight * pl_every * PL`` on a
   batch shrunk ``pl_batch_shrink`` times.
3. EMA: generator_ema <- lerp(generator_ema, generator, 1 - ema_beta); buffers copied.

Main losses run under :meth:`BaseTrainer.autocast`; R1 and PL in float32 (gradient penalties are
unreliable in bf16/fp16). Both Adam optimizers carry StyleGAN2's lazy-regularisation corrections
(lr * c, betas ** c, c = every / (every + 1)). The mapping network's 0.01 lr multiplier lives in
its equalized-lr layers, so one lr serves all of G.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.preprocess import PreprocessConfig
from ..losses.gan import PathLengthRegularizer, d_logistic, g_nonsaturating, r1_penalty
from ..networks.gan import FactoryGAN
from ..networks.stylegan import StyleGANConfig, StyleGenerator
from .base import BaseTrainer, SettingsDict, read_checkpoint

CHECKPOINT_FORMAT = "fedxmodal-gan/1"
BATCH_KEYS = ("images", "site", "key", "zbin")


@dataclass
class GanConfig(SettingsDict):
    """Optimisation of the conditional StyleGAN2 (the data factory paper; StyleGAN2 / StyleGAN2-ADA).

    ``steps``: G+D steps per ``fit`` (per round in a federation); ``lr``/``betas``: Adam, StyleGAN2's
    2e-3 and (0, 0.99), corrected for lazy regularisation; ``r1_gamma``: 0.1, StyleGAN2-ADA's
    heuristic 0.0002 * res^2 / batch at 64 px and batch 8 (the paper's 10 is for 256-512 px);
    ``r1_every`` / ``pl_every``: lazy intervals; ``pl_weight``, ``pl_batch_shrink``: the
    path-length term and its smaller batch; ``ema_beta``: the EMA generator's decay per G step;
    ``style_mix_prob``: style mixing in training; ``amp``: mixed precision where the device has it;
    ``seed``: for the method's samplers.
    """

    strict = False  # checkpoints of other versions: unknown keys are dropped
    method: str = ""
    method_args: dict = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 8
    lr: float = 2e-3
    betas: tuple = (0.0, 0.99)
    r1_gamma: float = 0.1
    r1_every: int = 16
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_batch_shrink: int = 2
    ema_beta: float = 0.998
    style_mix_prob: float = 0.9
    amp: bool = True
    seed: int = 0

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        for name in ("steps", "batch_size", "r1_every", "pl_every", "pl_batch_shrink"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.ema_beta <= 1 or not 0 <= self.style_mix_prob <= 1:
            raise ValueError("ema_beta and style_mix_prob must be in [0, 1]")
        if self.lr <= 0 or self.r1_gamma < 0 or self.pl_weight < 0:
            raise ValueError("lr must be > 0, r1_gamma and pl_weight >= 0")


def lazy_adam(params, lr: float, betas: tuple, every: int) -> torch.optim.Adam:
    """Adam for a network regularised every ``every`` steps (StyleGAN2: lr * c, betas ** c)."""
    c = every / (every + 1)
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8)


def _per_sample(value, n: int, dtype, device) -> torch.Tensor:
    """An int/bool or an (n,) tensor -> an (n,) tensor of ``dtype`` on ``device``."""
    v = torch.as_tensor(value, dtype=dtype)
    v = v.expand(n).clone() if v.dim() == 0 else v
    if v.shape != (n,):
        raise ValueError(f"expected a scalar or ({n},) values, got shape {tuple(v.shape)}")
    return v.to(device)


class GanTrainer(BaseTrainer):
    """G, D and EMA-G of a :class:`FactoryGAN`, their Adam optimizers and StyleGAN2's steps (module doc).

    Args:
        structures: the structures of the job (kept for checkpoints; a GAN reads no label).
        method: the method object (``build_network(**network)`` -> FactoryGAN).
        network: keyword arguments of ``method.build_network`` (the job's model ``args``).
        train: :class:`GanConfig`.
        preprocess: how volumes become slices (default: 64 px slices).
        model: use this FactoryGAN instead of building one (tests).
    """

    checkpoint_format = CHECKPOINT_FORMAT
    config_class = GanConfig

    def __init__(self, structures, method, network: dict | None = None, train: GanConfig | None = None,
                 preprocess: PreprocessConfig | None = None, device: str = "auto", writer=None, domains=(),
                 model: torch.nn.Module | None = None):
        self.train_config = train or GanConfig()
        super().__init__(device=device, amp=self.train_config.amp, writer=writer)
        self.structures = tuple(structures)
        self.domains = tuple(domains)
        self.network = dict(network or {})
        self.preprocess = preprocess or PreprocessConfig(size=64)
        self.method = method
        self.model = (model if model is not None else method.build_network(**self.network)).to(self.device)
        self.cfg = self.model.cfg  # the StyleGANConfig
        self.d_steps = 0
        self.g_steps = 0
        self.path_length = PathLengthRegularizer()
        self.reset_optimizers()

    @property
    def generator(self):
        return self.model.generator

    @property
    def discriminator(self):
        return self.model.discriminator

    def reset_optimizers(self) -> None:
        """Fresh Adam state for G and D (the official federated code re-creates it every round)."""
        tc = self.train_config
        self.add_optimizer("generator", lazy_adam(self.generator.parameters(), tc.lr, tc.betas, tc.pl_every))
        self.add_optimizer("discriminator", lazy_adam(self.discriminator.parameters(), tc.lr, tc.betas,
                                                      tc.r1_every))

    # ---- one step -------------------------------------------------------------------------------
    def _batch(self, batch: dict) -> dict:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"a GAN batch needs {BATCH_KEYS}, missing {missing}")
        s, cfg = self.cfg.image_size, self.cfg
        images = batch["images"]
        if images.dim() != 4 or images.shape[1:] != (cfg.image_channels, s, s) or images.shape[0] < 1:
            raise ValueError(f"images must be (B, {cfg.image_channels}, {s}, {s}), got {tuple(images.shape)}")
        out = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        out["images"], out["key"] = out["images"].float(), out["key"].float()
        out["site"], out["zbin"] = out["site"].long(), out["zbin"].long()
        return out

    def _keep(self, n: int) -> torch.Tensor:
        """Per-sample key-drop mask for training: True keeps the domain key."""
        return torch.rand(n, device=self.device) >= self.cfg.key_drop

    def _cond(self, b: dict, idx=None) -> tuple:
        keys = ("site", "key", "zbin")
        return tuple(b[k] if idx is None else b[k][idx] for k in keys)

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device)

    def _no_autocast(self):
        return torch.autocast(self.device.type, enabled=False)

    def d_step(self, b: dict) -> dict:
        """Discriminator step (+ lazy R1); returns its scalars."""
        tc, G, D = self.train_config, self.generator, self.discriminator
        n, cond, keep = b["images"].shape[0], self._cond(b), self._keep(b["images"].shape[0])
        G.requires_grad_(False)
        D.requires_grad_(True)
        with self.autocast():
            with torch.no_grad():
                fake = G(self._z(n), *cond, key_keep=keep, mix_prob=tc.style_mix_prob)
            fake_logits = D(fake, *cond, key_keep=keep).float()
            real_logits = D(b["images"], *cond, key_keep=keep).float()
        loss = d_logistic(real_logits, fake_logits)
        self.optimizer_step(loss, "discriminator")
        out = {"loss_d": float(loss.detach()), "d_real_acc": float((real_logits > 0).float().mean())}
        if tc.r1_gamma > 0 and self.d_steps % tc.r1_every == 0:
            with self._no_autocast():
                real = b["images"].detach().requires_grad_(True)
                r1 = r1_penalty(D(real, *cond, key_keep=keep), real)
            self.optimizer_step(r1 * (tc.r1_gamma / 2 * tc.r1_every), "discriminator")
            out["r1"] = float(r1.detach())
        self.d_steps += 1
        return out

    def g_step(self, b: dict) -> dict:
        """Generator step (+ lazy path-length regularisation); returns its scalars."""
        tc, G, D = self.train_config, self.generator, self.discriminator
        n, cond = b["images"].shape[0], self._cond(b)
        G.requires_grad_(True)
        D.requires_grad_(False)
        keep = self._keep(n)
        with self.autocast():
            fake = G(self._z(n), *cond, key_keep=keep, mix_prob=tc.style_mix_prob)
            loss = g_nonsaturating(D(fake, *cond, key_keep=keep).float())
        self.optimizer_step(loss, "generator")
        out = {"loss_g": float(loss.detach())}
        if tc.pl_weight > 0 and self.g_steps % tc.pl_every == 0:
            m = max(1, n // tc.pl_batch_shrink)
            idx = torch.arange(m, device=self.device)
            with self._no_autocast():
                fake, ws = G(self._z(m), *self._cond(b, idx), key_keep=keep[idx], mix_prob=tc.style_mix_prob,
                             return_ws=True)
                pl = self.path_length(fake, ws)
            self.optimizer_step(pl * (tc.pl_weight * tc.pl_every), "generator")
            out["pl"] = float(pl.detach())
        self.g_steps += 1
        return out

    def train_step(self, batch: dict) -> dict:
        """One D step, one G step and the EMA update on a batch of real slices (module doc)."""
        b = self._batch(batch)
        out = {**self.d_step(b), **self.g_step(b)}
        self.model.update_ema(self.train_config.ema_beta)
        self.generator.requires_grad_(True)
        self.discriminator.requires_grad_(True)
        return out

    def iteration(self, batch: dict, index: int, n_batches: int) -> tuple[dict, int]:
        """:meth:`train_step` as a step of the base trainer's loop; ``fit(next_batch, steps=...)``
        summarises ``loss_g``, ``loss_d``, ``d_real_acc`` and, over the steps that computed them,
        ``r1`` and ``pl`` (``counts``)."""
        return self.train_step(batch), int(batch["images"].shape[0])

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self, site, key, zbin, n: int = 16, seed: int = 0, truncation: float = 1.0, key_keep=True,
               ema: bool = True) -> torch.Tensor:
        """``n`` generated slices of a condition, deterministic for a ``seed`` (z from a seeded
        generator, constant noise, no style mixing).

        Args:
            site, zbin: ints or (n,) long tensors. key: (key_dim,) or (n, key_dim).
            key_keep: bool or (n,) bool (False: the site/z-bin condition alone).
            ema: the EMA generator (the one to sample from) or the trained one.
        Returns:
            (n, image_channels, S, S) float32 on the CPU.
        """
        dev = self.device
        site, zbin = _per_sample(site, n, torch.long, dev), _per_sample(zbin, n, torch.long, dev)
        keep = _per_sample(key_keep, n, torch.bool, dev)
        key = torch.as_tensor(key, dtype=torch.float32)
        key = (key.expand(n, -1) if key.dim() == 1 else key).to(dev)
        G = self.model.generator_ema if ema else self.generator
        z = torch.randn(n, self.cfg.z_dim, generator=torch.Generator().manual_seed(int(seed))).to(dev)
        was_training = G.training
        G.eval()
        try:
            with torch.no_grad(), self.inference_autocast():
                img = G(z, site, key, zbin, key_keep=keep, truncation=truncation, noise_mode="const")
        finally:
            G.train(was_training)
        return img.float().cpu()

    # ---- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, **meta) -> dict:
        return {**super().checkpoint(**meta), "gan_state": {"d_steps": self.d_steps, "g_steps": self.g_steps,
                                                            "path_length": self.path_length.state_dict()}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, method, device: str = "auto", **train_overrides) -> "GanTrainer":
        trainer = super().from_checkpoint(ckpt, method, device=device, **train_overrides)
        state = ckpt.get("gan_state") or {}
        trainer.d_steps, trainer.g_steps = int(state.get("d_steps", 0)), int(state.get("g_steps", 0))
        if "path_length" in state:
            trainer.path_length.load_state_dict(state["path_length"])
        return trainer

    @classmethod
    def from_job_args(cls, args: dict, method, device: str = "auto") -> "GanTrainer":
        """The trainer a job's site arguments describe (``structures``, ``model`` = the network's
        ``{"path", "args"}``, ``train``, ``preprocess`` (default 64 px slices), ``method``)."""
        train = GanConfig.from_dict({**args.get("train", {}), "method": args.get("method", "")})
        return cls(args["structures"], method, network=dict(args.get("model", {}).get("args") or {}), train=train,
                   preprocess=PreprocessConfig.from_dict({"size": 64, **(args.get("preprocess") or {})}),
                   device=device)


def load_factory_generator(factory) -> tuple[StyleGenerator, dict]:
    """The phase-1 generator to adapt around: the EMA generator of a ``GanTrainer``, of a
    ``FactoryGAN`` or of a GAN checkpoint file; or a ``StyleGenerator`` itself. Returns
    (generator, the GAN trainer's ``train`` / ``preprocess`` records: {} for a bare network)."""
    if isinstance(factory, StyleGenerator):
        return factory, {}
    if isinstance(factory, FactoryGAN):
        return factory.generator_ema, {}
    if isinstance(factory, GanTrainer):
        return factory.model.generator_ema, {"train": factory.train_config.to_dict(),
                                             "preprocess": factory.preprocess.to_dict()}
    ckpt = read_checkpoint(factory, CHECKPOINT_FORMAT)
    cfg = StyleGANConfig.from_dict({k: v for k, v in ckpt["network"].items() if k != "init_seed"})
    generator = StyleGenerator(cfg)
    prefix = "generator_ema."
    generator.load_state_dict({k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)})
    return generator, {"train": ckpt.get("train", {}), "preprocess": ckpt.get("preprocess", {})}
