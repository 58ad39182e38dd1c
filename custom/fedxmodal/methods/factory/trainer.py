"""The data factory's adaptation trainer: a site's local phase 2 around a FROZEN conditional
generator G (phase 1, :mod:`fedxmodal.engine.gan`). It serves this one method, so it lives here,
on the engine's base trainer (its loop; this module writes the two steps). The site trains an inversion encoder E (slice -> w+) and a
segmentation head S on G's synthesis features (:class:`~fedxmodal.networks.gan_inversion.InversionSegNet`,
``self.model``: the weights that may travel); G never changes (the data factory paper, phase 2).

Batches (``next_batch()``), images in [-1, 1] (G's range), conditions as in phase 1::

    {"images": (B, 1, S, S), "labels": (B, S, S) long (source and few-shot batches only),
     "site": (B,) long, "key": (B, key_dim), "zbin": (B,) long}

**Source site** (:meth:`AdaptationTrainer.fit_source`, labelled slices): w+ = E(x);
x', feats = G.synthesis(w+); loss = mse_weight * MSE(x', x) + ssim_weight * (1 - SSIM(x', x))
+ seg_weight * DiceCE(S(feats), y). SSIM (MONAI's, on [0, 1]) replaces the paper's LPIPS, whose
weights cannot be had here.

**Target site** (:meth:`AdaptationTrainer.fit_target`: unlabelled slices + a few labelled ones),
its own E_t, S_t and, optionally, the source site's frozen branch (E_s, S_s):

(a) reconstruction of the target slices, as at the source;
(b) cycle through the source domain. The paper swaps the condition inside G; here w+ comes from
    the encoder, not from the mapping, so the swap is a shift in W: with m(c)[zbin] the mean of
    ``G.mapping(z, c)`` over a fixed seeded batch of z (``condition_samples``) for each slice
    position, ``shift = m(source site, key dropped) - m(target site, target key)`` and
    w+_src = w+_t + shift[zbin] (every layer), the reverse swap w+ - shift[zbin]. The source's
    key never reaches the target, hence "key dropped" for the source condition. Then
    x_back = G(E_t(G(w+_src)) - shift[zbin]) and the term is L1(x_back, x_t): E_t must invert
    source-like slices too, and the translation must keep the anatomy;
(c) source-like samples: x_s = G(mapping(z, source condition)) at the batch's slice positions;
    pseudo-labels = argmax of the frozen source branch on them (S_s(G_feats(E_s(x_s)))), learnt by
    the TARGET branch on the same samples: DiceCE(S_t(G_feats(E_t(x_s))), pseudo). Skipped
    without a source branch. Only G's samples are used, never a real source slice;
(d) DiceCE of the target branch on the few labelled target slices (``labelled``, every step).

Inference (:meth:`AdaptationTrainer.predict`): S(G_feats(E(x))) probabilities; at a target with a
source branch, 0.5 of that plus 0.5 of the source branch on the translation x_src =
G(E_t(x) + shift[zbin]): S_s(G_feats(E_s(x_src))) (the source branch reads a source-like image,
as it was trained). The engine imports no NVFlare and names no method: the method object brings
``build_network(**network)`` and ``volume_inputs(images, n_zbins)`` (a preprocessed volume ->
G's range and the slices' position bins).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from ...data.preprocess import PreprocessConfig
from ...engine.base import BaseTrainer, SettingsDict
from ...engine.evaluation import evaluate_site, predict_volume
from ...engine.gan import load_factory_generator
from ...losses.segmentation import build_segmentation_loss
from ...networks.stylegan import StyleGANConfig, StyleGenerator

CHECKPOINT_FORMAT = "fedxmodal-adaptation/1"
WIDTH_KEYS = ("encoder_width", "head_width")
BATCH_KEYS = ("images", "site", "key", "zbin")
BRANCH_RULES = ("average", "own", "source")  # inference at a target: the method's 0.5 / 0.5, or one branch


@dataclass
class AdaptationConfig(SettingsDict):
    """Optimisation of phase 2. ``steps``: steps per fit; ``lr``: Adam on E and S; the weights:
    reconstruction (``mse_weight``, ``ssim_weight``), segmentation on labelled slices
    (``seg_weight`` at the source, ``few_shot_weight`` at the target), ``cycle_weight`` and
    ``pseudo_weight`` (target terms b and c, module doc); ``condition_samples``: z per
    condition mean; ``amp``: mixed precision where the device has it; ``seed``: z draws."""

    strict = False  # checkpoints of other versions: unknown keys are dropped
    method: str = ""
    method_args: dict = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    mse_weight: float = 1.0
    ssim_weight: float = 1.0
    seg_weight: float = 1.0
    cycle_weight: float = 1.0
    pseudo_weight: float = 1.0
    few_shot_weight: float = 1.0
    condition_samples: int = 64
    amp: bool = True
    seed: int = 0

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.condition_samples) < 1:
            raise ValueError("steps, batch_size and condition_samples must be >= 1")
        if min(self.lr, self.mse_weight, self.ssim_weight, self.seg_weight, self.cycle_weight,
               self.pseudo_weight, self.few_shot_weight) < 0:
            raise ValueError("lr and the loss weights must be >= 0")


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.requires_grad_(False).eval()


class AdaptationTrainer(BaseTrainer):
    """E and S around a frozen generator; source and target fits, inference, evaluation (module doc).

    Args:
        structures: class c > 0 is ``structures[c-1]``.
        method: brings ``build_network(n_classes=..., **network)`` -> InversionSegNet and
            ``volume_inputs(images, n_zbins)``.
        network: the generator's :class:`StyleGANConfig` fields (taken from ``generator`` if
            given) and ``encoder_width`` / ``head_width``.
        train: :class:`AdaptationConfig`.
        preprocess: how volumes become slices (size = the generator's image size).
        generator: the phase-1 generator (copied and frozen; see :func:`load_factory_generator`);
            None: an untrained one of ``network``'s shape (a checkpoint then loads it).
    """

    checkpoint_format = CHECKPOINT_FORMAT
    config_class = AdaptationConfig

    def __init__(self, structures, method, network: dict | None = None, train: AdaptationConfig | None = None,
                 preprocess: PreprocessConfig | None = None, device: str = "auto", writer=None, domains=(),
                 generator: StyleGenerator | None = None):
        self.train_config = train or AdaptationConfig()
        super().__init__(device=device, amp=self.train_config.amp, writer=writer)
        self.structures, self.domains, self.method = tuple(structures), tuple(domains), method
        network = dict(network or {})
        widths = {k: int(network.pop(k, 32)) for k in WIDTH_KEYS}
        network.pop("init_seed", None)
        if generator is not None:
            if network and StyleGANConfig.from_dict(network) != generator.cfg:
                raise ValueError("network settings differ from the given generator's configuration")
            network = generator.cfg.to_dict()
        self.cfg = StyleGANConfig.from_dict(network)
        self.network = {**self.cfg.to_dict(), **widths}
        self.preprocess = preprocess or PreprocessConfig(size=self.cfg.image_size)
        if self.preprocess.size != self.cfg.image_size:
            raise ValueError(f"slices of {self.preprocess.size} px for a generator of {self.cfg.image_size} px")
        self.generator = _frozen(StyleGenerator(self.cfg)).to(self.device)
        self.model = method.build_network(n_classes=self.n_classes, **self.network).to(self.device)
        if generator is not None:
            self.load_generator(generator.state_dict())
        self.source_branch = None  # a frozen InversionSegNet of the source site (at a target)
        self.conditions, self._shift = {}, None  # target_site, target_key, source_site (fit_target)
        self._phase_step = self.source_step  # the step fit() runs: set by fit_source / fit_target
        self.seg_loss = build_segmentation_loss()
        # MONAI's SSIM on [0, 1]; the 11-px window of SSIM is too wide for test-sized slices
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=11 if self.cfg.image_size >= 32 else 5)
        self.z_gen = torch.Generator().manual_seed(self.train_config.seed)
        self.add_optimizer("model", torch.optim.Adam(self.model.parameters(), lr=self.train_config.lr))

    @property
    def n_classes(self) -> int:
        return len(self.structures) + 1

    def load_generator(self, state: dict) -> None:
        """Load the frozen generator's weights (a StyleGenerator state dict); E starts at its ``w_avg``."""
        self.generator.load_state_dict(state)
        self.model.encoder.set_w_avg(self.generator.w_avg)
        self._shift = None

    def set_source_branch(self, source) -> None:
        """The source site's trained E_s + S_s (an InversionSegNet, an AdaptationTrainer or a state
        dict), copied and frozen: the teacher of term (c) and half of the target's prediction."""
        state = source.model.state_dict() if isinstance(source, AdaptationTrainer) else \
            source if isinstance(source, dict) else source.state_dict()
        branch = copy.deepcopy(self.model)
        branch.load_state_dict(state)
        self.source_branch = _frozen(branch).to(self.device)

    # ---- the domain swap (module doc, term b) -------------------------------------------------
    @torch.no_grad()
    def condition_means(self, site: int, key: torch.Tensor | None) -> torch.Tensor:
        """m(c): mean w of the fixed z batch under (site, key or dropped) per slice position, (n_zbins, w_dim)."""
        cfg, n = self.cfg, self.train_config.condition_samples
        z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(self.train_config.seed))
        z = z.repeat(cfg.n_zbins, 1).to(self.device)
        zbin = torch.arange(cfg.n_zbins, device=self.device).repeat_interleave(n)
        keep = torch.full((len(z),), key is not None, dtype=torch.bool, device=self.device)
        keys = (torch.zeros(cfg.key_dim) if key is None else key).float().to(self.device).expand(len(z), -1)
        w = self.generator.mapping(z, torch.full_like(zbin, int(site)), keys, zbin, key_keep=keep)
        return w.float().view(cfg.n_zbins, n, cfg.w_dim).mean(1)

    def domain_shift(self) -> torch.Tensor:
        """m(source, key dropped) - m(target, target key), (n_zbins, w_dim); needs ``conditions``."""
        if self._shift is None:
            c = self.conditions
            if "source_site" not in c or "target_site" not in c:
                raise RuntimeError("no source/target conditions: run fit_target first")
            self._shift = self.condition_means(c["source_site"], None) - \
                self.condition_means(c["target_site"], c["target_key"])
        return self._shift

    def swap_to_source(self, ws: torch.Tensor, zbins: torch.Tensor) -> torch.Tensor:
        """w+ (B, num_ws, w_dim) of target slices at positions ``zbins`` (B,) -> the source domain."""
        return ws + self.domain_shift()[zbins.to(self.device)][:, None].to(ws.dtype)

    def swap_to_target(self, ws: torch.Tensor, zbins: torch.Tensor) -> torch.Tensor:
        """The reverse of :meth:`swap_to_source`."""
        return ws - self.domain_shift()[zbins.to(self.device)][:, None].to(ws.dtype)

    # ---- pieces of the steps ------------------------------------------------------------------
    def synthesize(self, ws: torch.Tensor) -> tuple[torch.Tensor, list]:
        """G's image and feature maps for w+ (constant noise: the same slice for the same w+)."""
        return self.generator.synthesis(ws, noise_mode="const", return_features=True)

    def branch_logits(self, net, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w+, segmentation logits) of a branch (E, S) on images (B, 1, S, S)."""
        ws = net.encoder(images)
        return ws, net.seg_head(self.synthesize(ws)[1])

    def reconstruction(self, rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = rec.float()
        return F.mse_loss(rec, x), self.ssim((rec + 1) / 2, (x + 1) / 2)

    def _batch(self, batch: dict, labels: bool) -> dict:
        keys = BATCH_KEYS + (("labels",) if labels else ())
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"an adaptation batch needs {keys}, missing {missing}")
        s, c = self.cfg.image_size, self.cfg.image_channels
        out = {k: batch[k].to(self.device) for k in keys}
        if out["images"].dim() != 4 or out["images"].shape[1:] != (c, s, s):
            raise ValueError(f"images must be (B, {c}, {s}, {s}), got {tuple(out['images'].shape)}")
        return {k: v.float() if k in ("images", "key") else v.long() for k, v in out.items()}

    def iteration(self, batch: dict, index: int, n_batches: int) -> tuple[dict, int]:
        """One step of the phase being fitted (:meth:`source_step` or :meth:`target_step`)."""
        with self.autocast():
            terms = self._phase_step(batch)
        self.optimizer_step(terms["loss"], "model")
        return {k: float(v.detach()) for k, v in terms.items()}, int(batch["images"].shape[0])

    # ---- training -----------------------------------------------------------------------------
    def source_step(self, batch: dict) -> dict:
        b, tc = self._batch(batch, labels=True), self.train_config
        ws = self.model.encoder(b["images"])
        rec, feats = self.synthesize(ws)
        mse, ssim = self.reconstruction(rec, b["images"])
        seg = self.seg_loss(self.model.seg_head(feats).float(), b["labels"][:, None])
        loss = tc.mse_weight * mse + tc.ssim_weight * ssim + tc.seg_weight * seg
        return {"loss": loss, "mse": mse, "ssim": ssim, "seg": seg}

    def fit_source(self, next_batch: Callable[[], dict], steps: int | None = None, should_stop=None,
                   progress: bool = False) -> dict:
        """Train E and S on labelled source slices (module doc). Returns the loop's summary
        (:meth:`BaseTrainer.fit`): ``means`` of ``loss``, ``mse``, ``ssim``, ``seg``."""
        self._phase_step = self.source_step
        return self.fit(next_batch, steps=steps, should_stop=should_stop, progress=progress, desc="adapt: source")

    def target_step(self, batch: dict, labelled: dict | None) -> dict:
        b, tc = self._batch(batch, labels=False), self.train_config
        x, zb = b["images"], b["zbin"]
        if int(b["site"].min()) != self.conditions["target_site"] or int(b["site"].max()) != \
                self.conditions["target_site"]:
            raise ValueError("a target batch holds slices of another site")
        ws = self.model.encoder(x)  # (a) intra-domain reconstruction
        rec, _ = self.synthesize(ws)
        mse, ssim = self.reconstruction(rec, x)
        x_src, _ = self.synthesize(self.swap_to_source(ws, zb))  # (b) cycle through the source domain
        back, _ = self.synthesize(self.swap_to_target(self.model.encoder(x_src), zb))
        cycle = F.l1_loss(back.float(), x)
        terms = {"mse": mse, "ssim": ssim, "cycle": cycle}
        loss = tc.mse_weight * mse + tc.ssim_weight * ssim + tc.cycle_weight * cycle
        if self.source_branch is not None:  # (c) the factory's source-like samples, labelled by S_s
            with torch.no_grad():
                samples = self.source_samples(zb)
                pseudo = self.branch_logits(self.source_branch, samples)[1].argmax(1)
            pseudo_loss = self.seg_loss(self.branch_logits(self.model, samples)[1].float(), pseudo[:, None])
            terms["pseudo"], loss = pseudo_loss, loss + tc.pseudo_weight * pseudo_loss
        if labelled is not None:  # (d) the few labelled target slices
            few = self.seg_loss(self.branch_logits(self.model, labelled["images"])[1].float(),
                                labelled["labels"][:, None])
            terms["few_shot"], loss = few, loss + tc.few_shot_weight * few
        return {"loss": loss, **terms}

    @torch.no_grad()
    def source_samples(self, zbins: torch.Tensor) -> torch.Tensor:
        """G's slices under the source condition (key dropped) at positions ``zbins`` (B,), (B, 1, S, S)."""
        cfg, n, zbins = self.cfg, len(zbins), zbins.to(self.device)
        z = torch.randn(n, cfg.z_dim, generator=self.z_gen).to(self.device)
        w = self.generator.mapping(z, torch.full_like(zbins, self.conditions["source_site"]),
                                   torch.zeros(n, cfg.key_dim, device=self.device), zbins,
                                   key_keep=torch.zeros(n, dtype=torch.bool, device=self.device))
        return self.synthesize(w[:, None].repeat(1, self.generator.num_ws, 1))[0].float()

    def fit_target(self, next_batch: Callable[[], dict], steps: int | None = None, source_site: int | None = None,
                   labelled: dict | None = None, should_stop=None, progress: bool = False) -> dict:
        """Adapt E_t and S_t at the target (module doc, terms a-d).

        Args:
            next_batch: unlabelled target batches (the target's site and key; labels ignored).
            source_site: the source's row in G's site embedding (kept for prediction).
            labelled: the few labelled target slices {"images" (n, 1, S, S), "labels" (n, S, S), ...}
                used whole at every step; None: no term (d).
        Returns:
            the loop's summary: ``means`` of ``loss``, ``mse``, ``ssim``, ``cycle``, ``pseudo`` (with
            a source branch), ``few_shot`` (with ``labelled``).
        """
        raw = [next_batch()]  # the first batch fixes the target's condition, then is trained on
        first = self._batch(raw[0], labels=False)
        cond = {"target_site": int(first["site"][0]), "target_key": first["key"][0].detach().cpu(),
                "source_site": int(self.conditions.get("source_site", -1) if source_site is None else source_site)}
        # the target's row may be the source's (a late site like the source): the conditions still differ by the key
        if not 0 <= cond["source_site"] < self.cfg.n_sites:
            raise ValueError(f"source_site must be a site of the generator's {self.cfg.n_sites}, got {cond['source_site']}")
        old = self.conditions
        if not old or old["target_site"] != cond["target_site"] or old["source_site"] != cond["source_site"] \
                or not torch.equal(old["target_key"], cond["target_key"]):
            self.conditions, self._shift = cond, None  # the swap's shift is recomputed
        shots = None if labelled is None else self._batch(labelled, labels=True)
        self._phase_step = lambda b: self.target_step(b, shots)
        return self.fit(lambda: raw.pop() if raw else next_batch(), steps=steps, should_stop=should_stop,
                        progress=progress, desc="adapt: target")

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def branch_probabilities(self, images: torch.Tensor, zbins: torch.Tensor | None = None) -> dict:
        """{"own": S(G(E(x))) probabilities, and at a target with a source branch "source":
        S_s(G(E_s(x_src))) on the translation x_src = G(swap_to_source(E(x), zbins))}, each (B, C, S, S)."""
        self.model.eval()
        x = images.to(self.device).float()
        with self.inference_autocast():
            ws, logits = self.branch_logits(self.model, x)
            out = {"own": torch.softmax(logits.float(), 1)}
            if self.source_branch is not None and self.conditions:
                if zbins is None:
                    raise ValueError("a target's prediction translates each slice: pass its zbins")
                x_src = self.synthesize(self.swap_to_source(ws, zbins))[0]
                out["source"] = torch.softmax(self.branch_logits(self.source_branch, x_src)[1].float(), 1)
        return out

    def predict(self, images: torch.Tensor, zbins: torch.Tensor | None = None, rule: str = "average") -> torch.Tensor:
        """Images (B, 1, S, S) in [-1, 1] (and their position bins (B,)) -> (B, C, S, S) class
        probabilities: the own branch, or 0.5 / 0.5 own and source branch at an adapted target.
        ``rule`` "own" / "source" takes one branch alone (to see what each contributes)."""
        p = self.branch_probabilities(images, zbins)
        if rule == "average":
            return 0.5 * (p["own"] + p["source"]) if "source" in p else p["own"]
        if rule not in p:
            raise ValueError(f"rule {rule!r}: one of {BRANCH_RULES} ('source' only at an adapted target)")
        return p[rule]

    def predict_slices(self, images: torch.Tensor, batch_size: int = 32, rule: str = "average") -> torch.Tensor:
        """A preprocessed volume's slices (Z, 1, S, S) -> (Z, C, S, S) probabilities on the CPU
        (the method maps them to G's range and gives their position bins); ``rule`` as in :meth:`predict`."""
        x, zbins = self.method.volume_inputs(images, self.cfg.n_zbins)
        return torch.cat([self.predict(x[i:i + batch_size], zbins[i:i + batch_size], rule).cpu()
                          for i in range(0, len(x), batch_size)])

    def predict_volume(self, vol, preprocessor, domain: int | None = None) -> np.ndarray:
        """A prepared volume -> (X, Y, Z) uint8 class indices on its original grid (``segment``,
        overlays). ``domain``: the trainers' common signature, unused (a target has one condition)."""
        return predict_volume(self.predict_slices, vol, preprocessor)

    def evaluate(self, site_slices, split: str = "test", hd95: bool = False, progress: bool = False) -> dict:
        """Per-volume 3D Dice per structure on one site's split (SupervisedTrainer's report)."""
        return evaluate_site(self.predict_slices, site_slices, self.structures, split, hd95=hd95, progress=progress)

    # ---- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, **meta) -> dict:
        """BaseTrainer's record plus the frozen generator, the source branch and the conditions
        (the target key stays in the site's own checkpoint)."""
        branch = None if self.source_branch is None else \
            {k: v.detach().cpu().clone() for k, v in self.source_branch.state_dict().items()}
        return {**super().checkpoint(**meta), "source_branch": branch, "conditions": dict(self.conditions),
                "generator": {k: v.detach().cpu().clone() for k, v in self.generator.state_dict().items()}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, method, device: str = "auto", **train_overrides) -> "AdaptationTrainer":
        trainer = cls(ckpt["structures"], method, network=ckpt["network"], device=device,
                      train=AdaptationConfig.from_dict({**ckpt.get("train", {}), **train_overrides}),
                      preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]), domains=ckpt.get("domains", ()))
        trainer.load_generator(ckpt["generator"])
        trainer.set_weights(ckpt["model"])
        if ckpt.get("source_branch") is not None:
            trainer.set_source_branch(ckpt["source_branch"])
        trainer.conditions, trainer.meta = dict(ckpt.get("conditions") or {}), ckpt.get("meta", {})
        return trainer

    @classmethod
    def from_job_args(cls, args: dict, method, device: str = "auto") -> "AdaptationTrainer":
        """The trainer a job's site arguments describe (``structures``, ``model.args`` = the
        generator's settings and widths, ``train``, ``preprocess``, ``method``; the generator from
        ``factory_checkpoint``, a phase-1 GAN checkpoint, if given)."""
        train = AdaptationConfig.from_dict({**args.get("train", {}), "method": args.get("method", "")})
        network = dict(args.get("model", {}).get("args") or {})
        if int(network.pop("n_classes", len(args["structures"]) + 1)) != len(args["structures"]) + 1:
            raise ValueError(f"model n_classes differs from {len(args['structures'])} structures + background")
        generator = load_factory_generator(args["factory_checkpoint"])[0] if args.get("factory_checkpoint") else None
        if generator is not None:
            network = {k: v for k, v in network.items() if k in WIDTH_KEYS}
        size = (generator.cfg if generator is not None else StyleGANConfig.from_dict(
            {k: v for k, v in network.items() if k not in WIDTH_KEYS + ("init_seed",)})).image_size
        return cls(args["structures"], method, network=network, train=train, generator=generator, device=device,
                   preprocess=PreprocessConfig.from_dict({"size": size, **(args.get("preprocess") or {})}))


__all__ = ["AdaptationConfig", "AdaptationTrainer", "load_factory_generator", "CHECKPOINT_FORMAT"]
