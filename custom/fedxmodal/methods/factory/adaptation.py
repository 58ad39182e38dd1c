"""The data factory's phase 2 (Galati et al., MICCAI 2024): local adaptation around the
frozen phase-1 generator, without NVFlare.

A labelled *source* site trains an inversion encoder E_s and a segmentation head S_s on the
generator's features; a *target* site, with three labelled mid-slices (one from each of three
volumes, :func:`pick_three_slices`) and the rest unlabelled, trains its own E_t / S_t with
reconstruction, a cycle through the source domain, the factory's source-like samples labelled by
the frozen source branch, and its few labels (:mod:`.trainer`). What passes
from the source to the target is the source branch's weights, never a source image.

:func:`adapt_locally` runs both on one host; ``jobs/factory_adapt`` splits the same steps between
the sites through NVFlare (:mod:`.adapt_workflow`, :mod:`.adapt_site`, ``fl/site.py``).
The method's regime is ``local`` only: the supervised ``compare`` grid, which compares FedAvg
training, leaves it out.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path

import torch

from ...data.preprocess import PreprocessConfig
from ...data.slices import SiteSlices
from .trainer import AdaptationConfig, AdaptationTrainer
from ...engine.gan import load_factory_generator
from ...networks.gan_inversion import InversionSegNet
from ...networks.stylegan import StyleGANConfig, StyleGenerator
from ...utils import instantiate
from ..site_runners import TaskSiteRunner
from ..base import MethodBase, ServerParts
from .domain_key import DomainKeyEncoder, domain_key
from .site_data import site_slices, slice_zbins, to_unit_range

# The federated phase 2 (jobs/factory_adapt): its two tasks, what travels with them, and the
# server's factory model (methods/factory/adapt_workflow.py, methods/factory/adapt_site.py).
TRAIN_SOURCE, ADAPT_TARGET = "train_source", "adapt_target"
GENERATOR_PREFIX, SOURCE_PREFIX = "generator_ema.", "source_branch."
FAILED_METRIC, ERROR_META = "failed", "error"
SITE_METRICS = ("dice", "dice_[a-z0-9_]+", "n_volumes", "steps", FAILED_METRIC)
FACTORY_MODEL_ENV = "FEDXMODAL_FACTORY_MODEL"


def pick_three_slices(volumes, n: int = 3, seed: int = 0, site: str = "", allow_fewer: bool = False) -> list:
    """The few labelled target slices: one mid-slice from each of ``n`` different volumes.

    A volume's mid-slice is the middle of its foreground range (first to last slice with any
    label); where that slice has no foreground (a gap), the foreground slice nearest to it.
    Volumes without a label or without foreground are skipped; ``n`` of the others are drawn
    with ``seed``.

    Args:
        volumes: objects with ``label`` (Z, S, S) class indices or None (``PreparedVolume``).
        site: the site's name, for the error.
        allow_fewer: take as many as exist when fewer than ``n`` volumes have foreground
            (still at least one); otherwise that is an error.
    Returns:
        [(volume index, slice index)], sorted by volume.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    candidates = []
    for i, vol in enumerate(volumes):
        if vol.label is None:
            continue
        fg = torch.nonzero(torch.as_tensor(vol.label).flatten(1).amax(1) > 0).flatten()
        if len(fg):
            mid = (int(fg[0]) + int(fg[-1])) // 2
            candidates.append((i, int(fg[(fg - mid).abs().argmin()])))
    if not candidates or (len(candidates) < n and not allow_fewer):
        raise ValueError(f"site {site!r}: {len(candidates)} labelled volume(s) with foreground, {n} needed "
                         f"(one labelled mid-slice from each of {n} volumes)")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(candidates[int(j)] for j in order)


def labelled_target_slices(data: SiteSlices, n: int = 3, seed: int = 0, allow_fewer: bool = False) -> tuple[list, list]:
    """A target site's few labelled slices, as phase 2 picks them (:meth:`AdaptationMethod.target_batches`,
    and the baselines fine-tuned on the same slices, ``experiments/factory_baselines.py``).

    Returns:
        (the site's training volumes that have slices, ``PreparedVolume`` with ``image`` (Z, 1, S, S)
        and ``label`` (Z, S, S) or None; :func:`pick_three_slices`'s [(volume index, slice index)]
        among them).
    """
    volumes = [v for v in data.volumes("training") if len(v.image)]
    return volumes, pick_three_slices(volumes, n, seed, site=data.name, allow_fewer=allow_fewer)


class SiteBatches:
    """A site's slices in the generator's range with their conditions; calling it draws a random
    batch (a ``next_batch`` for the trainer).

    Args:
        images: (N, 1, S, S) in [-1, 1]; zbins: (N,) long; key: (key_dim,); labels: (N, S, S) or None.
    """

    def __init__(self, images, zbins, site_index: int, key, labels=None, batch_size: int = 8, seed: int = 0):
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} slices but {labels.shape[0]} labels")
        self.images, self.zbins, self.labels, self.key = images, zbins.long(), labels, key.float()
        self.site_index, self.batch_size = int(site_index), int(batch_size)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> dict:
        """The slices ``idx``: {"images", "site", "key", "zbin"[, "labels" (n, S, S) long]}."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        n = len(idx)
        out = {"images": self.images[idx], "site": torch.full((n,), self.site_index, dtype=torch.long),
               "key": self.key.expand(n, -1).clone(), "zbin": self.zbins[idx]}
        if self.labels is not None:
            out["labels"] = self.labels[idx].long()
        return out

    def __call__(self) -> dict:
        return self.take(torch.randint(0, len(self), (self.batch_size,), generator=self.gen))


class AdaptationMethod(MethodBase):
    """Args:
    n_labelled: labelled target mid-slices (the paper: 3). allow_fewer: accept fewer volumes.
    sites: the phase-1 sites in the generator's embedding order ([]: the factory checkpoint's).
    source_site, target_sites ([]: every other connected site), factory_model (the server's
    file; "" -> ``$FEDXMODAL_FACTORY_MODEL``): the federated job's settings (server side).
    key_samples: generated slices per phase-1 site when a late site picks its condition.
    """

    name = "data_factory_adapt"
    label = "data factory, phase 2 (adaptation, 3 target labels)"
    trainer = AdaptationTrainer
    needs_labels = True
    regimes = ("local",)  # the supervised compare grid's federated FedAvg does not apply
    site_runner = TaskSiteRunner  # jobs/factory_adapt: the site serves the method's own two tasks
    site_parts = "fedxmodal.methods.factory.adapt_site.AdaptationSiteParts"

    def __init__(self, n_labelled: int = 3, allow_fewer: bool = False, sites=(), source_site: str = "",
                 target_sites=(), factory_model: str = "", key_samples: int = 16):
        self.n_labelled, self.allow_fewer = int(n_labelled), bool(allow_fewer)
        self.sites, self.source_site, self.target_sites = tuple(sites), str(source_site), tuple(target_sites)
        self.factory_model, self.key_samples = str(factory_model), int(key_samples)

    @classmethod
    def server_parts(cls, min_clients: int, method_args: dict | None = None) -> ServerParts:
        """One workflow, the whole protocol (recipes/adaptation.py adds the job's ``model_args``)."""
        a = dict(method_args or {})
        args = {"sites": list(a.get("sites", [])), "source_site": a.get("source_site", ""),
                "target_sites": list(a.get("target_sites", [])), "factory_model": a.get("factory_model", "")}
        return ServerParts(pre_workflows=({"path": "fedxmodal.methods.factory.adapt_workflow.FactoryAdaptation",
                                           "args": args},))

    @classmethod
    def guard_declarations(cls, image_size: int, method_args: dict | None = None, model: dict | None = None) -> dict:
        """``train_source``: the source branch (the job model's state-dict names and shapes) and
        metrics; ``adapt_target``: metrics only; a failed task's short reason (meta ``error``)."""
        if model is None:
            raise ValueError("the adaptation job's guard needs the job's model (the InversionSegNet spec)")
        shapes = {k: list(v.shape) for k, v in instantiate(model).state_dict().items()}
        return {"extra_tasks": {TRAIN_SOURCE: {"params": shapes, "metrics": True}, ADAPT_TARGET: {"metrics": True}},
                "metrics": list(SITE_METRICS), "meta_keys": [ERROR_META]}

    def build_network(self, n_classes: int, encoder_width: int = 32, head_width: int = 32, **gan) -> InversionSegNet:
        """E + S for a generator of ``gan`` (:class:`StyleGANConfig` fields)."""
        return InversionSegNet(StyleGANConfig.from_dict(gan), n_classes, encoder_width, head_width)

    def volume_inputs(self, images, n_zbins: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A preprocessed volume (Z, 1, S, S) -> its slices in [-1, 1] (as phase 1) and their position bins (Z,)."""
        x = images.as_subclass(torch.Tensor) if isinstance(images, torch.Tensor) else torch.as_tensor(images)
        return to_unit_range(x), slice_zbins(len(x), n_zbins)

    @staticmethod
    def _conditioned(data: SiteSlices, site_index: int, cfg: StyleGANConfig, seed: int):
        # the key from the site's training slices, as in phase 1
        return site_slices(data, "training", site_index, cfg.n_zbins, key_dim=cfg.key_dim, seed=seed)

    def source_batches(self, data: SiteSlices, site_index: int, cfg: StyleGANConfig, batch_size: int = 8,
                       seed: int = 0) -> SiteBatches:
        """Labelled batches of a source site's training split (every case must be labelled)."""
        data.require_labels("training")
        cs = self._conditioned(data, site_index, cfg, seed)
        labels = torch.cat([v.label for v in data.volumes("training") if len(v.image)])
        return SiteBatches(cs.images, cs.zbins, site_index, cs.key, labels.long(), batch_size, seed)

    def target_batches(self, data: SiteSlices, site_index: int, cfg: StyleGANConfig, batch_size: int = 8,
                       seed: int = 0) -> tuple[SiteBatches, dict, list]:
        """A target site's unlabelled batches (its training split, labels unread), the labelled
        batch of its ``n_labelled`` mid-slices and their (volume, slice) picks."""
        cs = self._conditioned(data, site_index, cfg, seed)
        volumes, picks = labelled_target_slices(data, self.n_labelled, seed, self.allow_fewer)
        starts = torch.tensor([0] + [len(v.image) for v in volumes]).cumsum(0)
        idx = [int(starts[v]) + z for v, z in picks]
        unlabelled = SiteBatches(cs.images, cs.zbins, site_index, cs.key, batch_size=batch_size, seed=seed)
        labelled = {**unlabelled.take(idx), "labels": torch.stack([volumes[v].label[z] for v, z in picks]).long()}
        return unlabelled, labelled, picks


    def site_condition(self, data: SiteSlices, generator, name: str | None = None, seed: int = 0,
                       device="cpu") -> tuple[int, dict]:
        """The row of the generator's site embedding a site conditions on: its own if it was in
        phase 1 (``sites``); a late site has none and takes the phase-1 site whose generated
        slices look most like its own (:func:`nearest_condition` with its domain key). Returns
        (row, {"site": the phase-1 site chosen, "late": bool, "distances": {site: key distance}}).
        ``name``: the site's name among ``sites`` (default: its dataset's name)."""
        name = name or data.name  # in a job: the site's NVFlare name, as in phase 1
        if name in self.sites:
            return self.sites.index(name), {"site": name, "late": False, "distances": {}}
        key = self._conditioned(data, 0, generator.cfg, seed).key
        row, dist = nearest_condition(generator, key, n=self.key_samples, seed=seed, device=device)
        names = self.sites or tuple(f"row {i}" for i in range(len(dist)))
        return row, {"site": names[row], "late": True, "distances": dict(zip(names, dist))}


@torch.no_grad()
def condition_keys(generator, n: int = 16, seed: int = 0, device="cpu") -> torch.Tensor:
    """(n_sites, key_dim): the domain key (phase 1's :class:`DomainKeyEncoder`, the same at every
    site) of ``n`` generated slices per row of the site embedding, key dropped, slice positions
    spread over the volume, the same z for every row."""
    cfg = generator.cfg
    z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    zbins = slice_zbins(n, cfg.n_zbins).to(device)
    no_key = torch.zeros(n, cfg.key_dim, device=device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    encoder, keys = DomainKeyEncoder(cfg.key_dim), []
    for row in range(cfg.n_sites):
        w = generator.mapping(z, torch.full((n,), row, dtype=torch.long, device=device), no_key, zbins, key_keep=keep)
        x = generator.synthesis(w[:, None].repeat(1, generator.num_ws, 1), noise_mode="const")
        keys.append(domain_key(encoder, x.float().cpu().clamp(-1, 1)))
    return torch.stack(keys)


def nearest_condition(generator, key, n: int = 16, seed: int = 0, device="cpu") -> tuple[int, list[float]]:
    """The row whose generated slices' domain key is nearest (L2) to ``key`` (a late site's own,
    from its training slices), and every row's distance."""
    dist = (condition_keys(generator, n, seed, device) - torch.as_tensor(key).float().cpu()[None]).norm(dim=1)
    return int(dist.argmin()), [float(d) for d in dist]


def site_dice(evaluation: dict) -> dict[str, float]:
    """Site-level figures of an ``evaluate`` report: mean Dice, per structure, n_volumes (no per-volume value)."""
    s = evaluation["summary"]
    out = {"dice": 0.0 if math.isnan(s["mean_dice"]) else float(s["mean_dice"]), "n_volumes": float(s["n_volumes"])}
    out.update({f"dice_{k}": float(v) for k, v in s["dice"].items() if not math.isnan(v)})
    return out


def factory_model_path(setting: str = "") -> Path:
    """The server's factory model: the job's ``factory_model`` or ``$FEDXMODAL_FACTORY_MODEL``."""
    path = Path(os.path.expanduser(setting or os.environ.get(FACTORY_MODEL_ENV, "")))
    if not str(path) or str(path) == "." or not path.is_file():
        raise FileNotFoundError(f"the factory's global model {str(path) if str(path) not in ('', '.') else '(not set)'} "
                                f"is not a file: set it with the job's factory_model (method_args in "
                                f"jobs/specs/factory_adapt.json) or ${FACTORY_MODEL_ENV} on the server, to phase 1's "
                                "FL_global_model.pt or a factory_model.pt checkpoint")
    return path


def load_factory_model(setting: str, model_args: dict, sites=()) -> tuple[StyleGenerator, tuple]:
    """The phase-1 EMA generator for the job whose model args (the generator's settings) are
    ``model_args``, and the phase-1 sites in embedding order. The file: a ``factory_model.pt``
    (GAN trainer checkpoint, with its sites) or the phase-1 server's ``FL_global_model.pt``
    (``{"model": state dict}``: the job's settings and ``sites`` describe it)."""
    path = factory_model_path(setting)
    names = {f.name for f in fields(StyleGANConfig)}
    cfg = StyleGANConfig.from_dict({k: v for k, v in dict(model_args or {}).items() if k in names})
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict) and "format" in ckpt:
        generator, record = load_factory_generator(path)
        known = tuple(record.get("train", {}).get("method_args", {}).get("sites", ()))
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = {k[len(GENERATOR_PREFIX):]: torch.as_tensor(v) for k, v in ckpt["model"].items()
                 if k.startswith(GENERATOR_PREFIX)}
        if not state:
            raise ValueError(f"{path}: no {GENERATOR_PREFIX}* weights: not a data-factory model")
        generator, known = StyleGenerator(cfg), ()
        try:
            generator.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: the generator does not fit the job's model args: {str(exc)[:300]}") from None
    else:
        raise ValueError(f"{path}: neither a factory checkpoint nor an NVFlare global model")
    if generator.cfg != cfg:
        diff = {k: (v, getattr(cfg, k)) for k, v in generator.cfg.to_dict().items() if getattr(cfg, k) != v}
        raise ValueError(f"{path}: generator settings differ from the job's model args (file, job): {diff}")
    sites = tuple(sites) or known
    if known and sites != known:
        raise ValueError(f"{path}: phase-1 sites {list(known)}, the job says {list(sites)}")
    if len(sites) != cfg.n_sites:
        raise ValueError(f"{path}: {cfg.n_sites} phase-1 sites in the generator, the job names {list(sites)} "
                         "(method_args.sites, in phase 1's order)")
    return generator.eval(), sites


def adapt_locally(factory, source_site_dir, target_site_dir, structures, out_dir, *, sites=None,
                  source_steps: int = 200, target_steps: int = 200, batch_size: int = 8, lr: float = 1e-3,
                  encoder_width: int = 32, head_width: int = 32, n_labelled: int = 3, allow_fewer: bool = False,
                  preprocess: PreprocessConfig | None = None, amp: bool = True, seed: int = 0,
                  device: str = "auto", progress: bool = False) -> dict:
    """Phase 2 on one host: train the source branch, then adapt the target with it; save both.

    Args:
        factory: the phase-1 factory (a GAN checkpoint path, a ``GanTrainer`` or a ``FactoryGAN``).
        source_site_dir, target_site_dir: site folders (dataset.json); the source fully labelled.
        structures: the structures to segment.
        out_dir: receives ``source.pt`` and ``target.pt`` (trainer checkpoints: ``load_trainer``).
        sites: the phase-1 sites in the generator's embedding order (default: the checkpoint's
            ``method_args.sites``); the two sites' dataset names must be among them.
        preprocess: default: the factory trainer's (slices of the generator's size).
    Returns:
        {"source_checkpoint", "target_checkpoint", "source_fit", "target_fit", "labelled_slices"}.
    """
    generator, record = load_factory_generator(factory)
    sites = tuple(sites or record.get("train", {}).get("method_args", {}).get("sites", ()))
    preprocess = preprocess or PreprocessConfig.from_dict(record.get("preprocess") or
                                                          {"size": generator.cfg.image_size})
    source, target = (SiteSlices(d, structures, preprocess, progress=progress)
                      for d in (source_site_dir, target_site_dir))
    missing = [s.name for s in (source, target) if s.name not in sites]
    if missing:
        raise ValueError(f"site(s) {missing} are not among the factory's sites {list(sites)} (pass sites=...)")
    method = AdaptationMethod(n_labelled, allow_fewer)
    train = AdaptationConfig(method=AdaptationMethod.name, method_args={"n_labelled": n_labelled,
                                                                        "allow_fewer": allow_fewer},
                             batch_size=batch_size, lr=lr, amp=amp, seed=seed)
    network, out_dir = {"encoder_width": encoder_width, "head_width": head_width}, Path(out_dir)

    def trainer(site):
        return AdaptationTrainer(structures, method, network=network, train=train, preprocess=preprocess,
                                 device=device, generator=generator, domains=(site.name,))

    src_index, tgt_index = sites.index(source.name), sites.index(target.name)
    # both sites' data first: a target without its few labels fails before any training
    source_batches = method.source_batches(source, src_index, generator.cfg, batch_size, seed)
    batches, labelled, picks = method.target_batches(target, tgt_index, generator.cfg, batch_size, seed)
    src = trainer(source)
    src_fit = src.fit_source(source_batches, source_steps, progress=progress)
    src_path = src.save(out_dir / "source.pt", role="source", site=source.name)
    tgt = trainer(target)
    tgt.set_source_branch(src)  # the only thing the target receives from the source
    tgt_fit = tgt.fit_target(batches, target_steps, source_site=src_index, labelled=labelled, progress=progress)
    tgt_path = tgt.save(out_dir / "target.pt", role="target", site=target.name, source=source.name,
                        labelled_slices=[list(p) for p in picks])
    return {"source_checkpoint": src_path, "target_checkpoint": tgt_path, "source_fit": src_fit,
            "target_fit": tgt_fit, "labelled_slices": picks}
