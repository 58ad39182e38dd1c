"""The episodic trainer: self-supervised few-shot training without labels, and one-shot evaluation.

A training step draws a batch of episodes (support image + mask, query image + mask, e.g. one
superpixel under two augmentations) and backpropagates the method's episode loss; no label is read.
Evaluation is one-shot: a labelled *support* volume segments *query* volumes, with the method's
own protocol. The trainer is given its method object, which brings (see
:class:`fedxmodal.methods.base.EpisodicMethod`):

* ``build_network(**network)`` -> the feature network (the weights a federation averages);
* ``episode_sampler(site_slices_list, split, seed)`` -> an object with ``batch(B)`` (the site's
  pseudo-labels stay in the site's memory and cache);
* ``episode_loss(model, batch)`` -> ``{"loss": scalar, <term>: scalar, ..., "logits": (B, 2, H, W)}``;
* ``evaluate_oneshot(model, support, queries, organs)`` and ``segment_with_support(model,
  support_images, support_organ, query_images, structure)``.

Supports are chosen here, generically, from a site's labelled volumes (:func:`pick_supports`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.preprocess import PreprocessConfig
from .base import BaseTrainer, SettingsDict

CHECKPOINT_FORMAT = "fedxmodal-episodic/1"
SUPPORT_SPLITS = ("validation", "training", "test")  # where a site's support volume is looked for, in order


@dataclass
class EpisodicConfig(SettingsDict):
    """Optimisation of an episodic method. SSL-ALPNet: SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
    one episode per step. ``steps``: optimisation steps per ``fit`` (per round in a federation);
    ``batch_size``: episodes per step; ``val_episodes``: fixed episodes for the episode metrics
    (validation where a site has no labelled volume); ``seed`` seeds the episode sampler."""

    strict = False  # checkpoints of other versions: unknown keys are dropped
    method: str = ""
    method_args: dict = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    val_episodes: int = 16
    amp: bool = True  # mixed precision where the device has it (CUDA float16, CPU bfloat16); False: float32
    seed: int = 0


def pick_supports(candidates, structures) -> dict:
    """For each structure, the first candidate volume that contains it.

    Args:
        candidates: ``[(case_id, images (Z, 1, S, S), labels (Z, S, S))]`` labelled volumes, in
            order of preference.
        structures: names; class index = position + 1.

    Returns:
        ``{structure: (case_id, images, labels)}`` (structures no candidate contains are absent).
    """
    out = {}
    for c, name in enumerate(structures, start=1):
        for case_id, images, labels in candidates:
            if bool((labels == c).any()):
                out[name] = (case_id, images, labels)
                break
    return out


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor costs ~0.5 ms per operation in the prototype code)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def volume_tensors(vol) -> tuple:
    """(case_id, images (Z, 1, S, S) float, labels (Z, S, S) long) of a labelled PreparedVolume."""
    return vol.case.case_id, _plain(vol.image).float(), _plain(vol.label).long()


def labelled_volumes(site_slices, splits) -> list:
    """``[(case_id, images, labels)]`` of the labelled volumes of ``splits`` (empty splits skipped)."""
    out = []
    for split in splits:
        if not site_slices.site.split(split) or len(site_slices.site.unlabelled(split)) == len(site_slices.site.split(split)):
            continue
        out += [volume_tensors(v) for v in site_slices.volumes(split) if v.label is not None]
    return out


class EpisodicTrainer(BaseTrainer):
    """A feature network, its SGD optimizer and the method's episode loss; one-shot evaluation.

    Args:
        structures: the structures one-shot evaluation scores (class c > 0 is ``structures[c-1]``).
        method: the method object (see the module docstring).
        network: keyword arguments of ``method.build_network`` (the job's model ``args``).
        train: :class:`EpisodicConfig`.
        preprocess: how volumes become slices.
        model, optimizer: use these instead of building them (tests, baselines such as raw
            intensities, which have no parameters: no optimizer is then built).
    """

    checkpoint_format = CHECKPOINT_FORMAT

    def __init__(self, structures, method, network: dict | None = None, train: EpisodicConfig | None = None,
                 preprocess: PreprocessConfig | None = None, device: str = "auto", writer=None, domains=(),
                 model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None):
        self.train_config = train or EpisodicConfig()
        super().__init__(device=device, amp=self.train_config.amp, writer=writer)
        self.structures = tuple(structures)
        self.domains = tuple(domains)
        self.network = dict(network or {})
        self.preprocess = preprocess or PreprocessConfig()
        self.method = method
        self.model = (model if model is not None else method.build_network(**self.network)).to(self.device)
        tc = self.train_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer is not None or params:
            self.add_optimizer("model", optimizer or torch.optim.SGD(
                params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay))

    # ---- episodes -------------------------------------------------------------------------
    def sampler(self, sites, split: str = "training", seed: int | None = None):
        """The method's episode sampler over one or several sites' ``split`` (pooled)."""
        sites = list(sites) if isinstance(sites, (list, tuple)) else [sites]
        return self.method.episode_sampler(sites, split, seed=self.train_config.seed if seed is None else seed)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def start_fit(self) -> None:
        if "model" not in self.optimizers:
            raise ValueError("this network has no trainable parameters")
        super().start_fit()

    def iteration(self, batch: dict, index: int, n_batches: int) -> tuple[dict, int]:
        """One step on a batch of episodes (the method's sampler): the method's episode loss terms."""
        batch = self._to_device(batch)
        with self.autocast():
            out = self.method.episode_loss(self.model, batch)
        self.optimizer_step(out["loss"].float(), "model")
        return {k: float(v.detach()) for k, v in out.items() if k != "logits"}, int(batch["query_image"].shape[0])

    @torch.no_grad()
    def episode_metrics(self, batches: list) -> dict:
        """Mean episode loss and mean query Dice (prediction vs the query's pseudo-label) over
        fixed ``batches``: the validation of a site without a labelled volume."""
        self.model.eval()
        losses, dices = [], []
        for batch in batches:
            batch = self._to_device(batch)
            with self.autocast():
                out = self.method.episode_loss(self.model, batch)
            losses.append(float(out["loss"]))
            pred = out["logits"].float().argmax(1)
            target = batch["query_mask"][:, 0] > 0.5
            for p, t in zip(pred.bool(), target):
                denom = int(p.sum() + t.sum())
                dices.append(2 * int((p & t).sum()) / denom if denom else 1.0)
        return {"episode_loss": float(np.mean(losses)) if losses else math.nan,
                "episode_dice": float(np.mean(dices)) if dices else math.nan}

    # ---- one-shot evaluation ---------------------------------------------------------------
    def evaluate(self, query_site, split: str = "test", support_site=None, support_splits=SUPPORT_SPLITS,
                 use_priors: bool = True, progress: bool = False) -> dict:
        """One-shot Dice of every structure on ``query_site``'s ``split``, each structure segmented
        from ONE labelled support volume: the first volume of ``support_site`` (default: the query
        site) in ``support_splits`` order that contains it. The support volume itself is never a
        query; if it is the only labelled volume holding the structure, it is its own query and the
        result is flagged ``self_support`` (an optimistic check, not the protocol).

        Returns ``{"site", "modality", "split", "support_site", "supports": {structure: case},
        "self_support": [structures], "result": {structure: method result}, "summary"}``; summary:
        ``mean_dice`` (the protocol's in-range Dice, mean over structures), ``dice`` per structure,
        and the same for every setting the method reports (e.g. ``whole_volume``, ``*_prior``)."""
        support_site = support_site or query_site
        supports = pick_supports(labelled_volumes(support_site, support_splits), self.structures)
        queries = [volume_tensors(v) for v in query_site.volumes(split) if v.label is not None]
        result, self_support, used = {}, [], {}
        for c, name in enumerate(self.structures, start=1):
            if name not in supports:
                continue
            case_id, s_img, s_lab = supports[name]
            same_site = support_site is query_site
            q = [(i, lab) for cid, i, lab in queries if not (same_site and cid == case_id) and bool((lab == c).any())]
            if not q:
                if not bool((s_lab == c).any()) or not same_site:
                    continue
                q = [(s_img, s_lab)]
                self_support.append(name)
            res = self.method.evaluate_oneshot(self.model, (s_img, s_lab), q, {name: c}, use_priors=use_priors)
            result[name] = res
            used[name] = case_id
        settings = sorted({s for r in result.values() for s in r["mean"][next(iter(r["mean"]))]})
        summary = {"n_volumes": len(queries), "settings": {}}
        for s in settings:
            per = {name: float(r["mean"][name][s]) for name, r in result.items()}
            vals = [v for v in per.values() if not math.isnan(v)]
            summary["settings"][s] = {"dice": per, "mean_dice": float(np.mean(vals)) if vals else math.nan}
        main = summary["settings"].get("in_range", {"dice": {}, "mean_dice": math.nan})
        summary.update(dice=main["dice"], mean_dice=main["mean_dice"])
        return {"site": query_site.name, "modality": query_site.modality, "split": split,
                "support_site": support_site.name, "supports": used, "self_support": self_support,
                "result": result, "summary": summary}

    def segment_with_support(self, support_images: torch.Tensor, support_organ: torch.Tensor,
                             query_images: torch.Tensor, structure: str | None = None,
                             use_prior: bool = False) -> torch.Tensor:
        """(Zs, 1, S, S) support slices + (Zs, S, S) bool organ -> (Zq, S, S) bool mask of the
        query slices (no ground truth used)."""
        return self.method.segment_with_support(self.model, support_images, support_organ.bool(), query_images,
                                                structure=structure, use_prior=use_prior)

    # ---- checkpoints: BaseTrainer.checkpoint / from_checkpoint (network settings kept as a dict) ---
    config_class = EpisodicConfig

    @classmethod
    def from_job_args(cls, args: dict, method, device: str = "auto") -> "EpisodicTrainer":
        """The trainer a job's site arguments describe (``structures``, ``model`` = the network's
        ``{"path", "args"}``, ``train``, ``preprocess``, ``method``)."""
        train = EpisodicConfig.from_dict({**args.get("train", {}), "method": args.get("method", "")})
        return cls(args["structures"], method, network=dict(args.get("model", {}).get("args") or {}), train=train,
                   preprocess=PreprocessConfig.from_dict(args.get("preprocess")), device=device)
