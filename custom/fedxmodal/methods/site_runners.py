"""What runs at a site, by training style: the train / validate / evaluate callables that the one
site script (``fedxmodal.fl.site``) hands to NVFlare's Client API loop. A method's base names
its runner (``MethodBase.site_runner``); a runner knows the trainer's style, never a method.

Every runner is built from the site's trainer and its :class:`~fedxmodal.data.slices.SiteSlices`,
loads what its style trains on once (labelled slices in memory, an episode sampler, conditioned
GAN batches) and exposes it as :class:`SiteData`, the one type a method's ``SiteParts`` receives.
No NVFlare import here: tests drive runners without a federation.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from ..data.slices import SiteSlices
from ..engine.base import SliceData

log = logging.getLogger("fedxmodal.site")


@dataclass
class SiteData:
    """What a site trains on. ``slices``: its folder's volumes per split; ``training``: the
    labelled training slices in memory ((N, 1, S, S) images, (N, S, S) labels) for the styles that
    train on them, else None. Nothing of it leaves the site."""

    slices: SiteSlices
    training: SliceData | None = None


def aggregate_metrics(evaluation: dict, prefix: str = "dice") -> dict[str, float]:
    """Site-level means of a Dice evaluation (no per-volume value leaves the site); absent
    structures dropped."""
    summary = evaluation["summary"]
    out = {prefix: float(summary["mean_dice"]), "n_volumes": float(summary["n_volumes"])}
    out.update({f"{prefix}_{k}": float(v) for k, v in summary["dice"].items() if not math.isnan(v)})
    if math.isnan(out[prefix]):
        out[prefix] = 0.0
    return out


class SiteRunner:
    """The base: ``train(info)`` (one round's local training), ``validate()`` (the received model
    on the validation split: site-level metrics with the job's key metric), ``evaluate()`` (the
    same on the test split), ``n_train_items`` (FedAvg's weight) and ``data`` (:class:`SiteData`).

    Args:
        trainer: the site's trainer (``fedxmodal.methods.trainer_from_job_args``).
        slices: the site's data.
        site_name: its NVFlare name.
        seed: the site's seed (``fedxmodal.fl.client_loop.init_site``).
        args: the job's site arguments (``local_epochs``, ...).
        state_dir: a folder at the site that outlives a run.
    """

    needs_state_dir = False  # True: the site script gives it a folder even where the site configured none

    def __init__(self, trainer, slices: SiteSlices, site_name: str, seed: int, args: dict, state_dir=None):
        self.trainer, self.site_name, self.seed, self.args, self.state_dir = trainer, site_name, seed, args, state_dir
        self.data = SiteData(slices)
        self.last_fit: dict = {}  # the trainer's summary of the last round's fit (for SiteParts.after_training)

    @property
    def n_train_items(self) -> int:
        return 0

    def describe(self) -> str:
        """One line for the site's log: what it trains on, per round."""
        return ""

    def train(self, info) -> dict:
        """One round's local training; returns its training metrics (and keeps ``last_fit``)."""
        raise NotImplementedError

    def validate(self) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError


class SupervisedSiteRunner(SiteRunner):
    """Labelled slices in memory, ``local_epochs`` epochs a round; Dice on the site's volumes."""

    def __init__(self, trainer, slices, site_name, seed, args, state_dir=None):
        super().__init__(trainer, slices, site_name, seed, args, state_dir)
        images, labels = slices.slices("training", foreground_only=trainer.train_config.foreground_only)
        slices.volumes("validation")
        slices.volumes("test")
        self.data.training = SliceData(images, labels)
        trainer.method.prepare([images])

    @property
    def n_train_items(self) -> int:
        return len(self.data.training)

    def describe(self) -> str:
        return f"{len(self.data.training)} training slices, {int(self.args['local_epochs'])} epoch(s) a round"

    def train(self, info) -> dict:
        epochs = int(self.args["local_epochs"])
        # the whole job's epochs, for schedules (FedDA's adversarial ramp)
        self.trainer.plan((info.total_rounds or 0) * epochs, epochs_done=info.current_round * epochs)
        res = self.last_fit = self.trainer.fit(self.data.training, epochs=epochs, should_stop=info.should_stop,
                                               desc=f"{self.site_name} round {info.current_round}")
        return {"loss": res["loss"], "slices_per_s": res["samples"] / max(res["seconds"], 1e-9),
                "seconds": res["seconds"]}

    def validate(self) -> dict:
        return aggregate_metrics(self.trainer.evaluate(self.data.slices, "validation"))

    def evaluate(self) -> dict:
        return aggregate_metrics(self.trainer.evaluate(self.data.slices, "test"))


def has_labelled(data: SiteSlices, split: str) -> bool:
    cases = data.site.split(split)
    return bool(cases) and len(data.site.unlabelled(split)) < len(cases)


def oneshot_metrics(evaluation: dict) -> dict[str, float]:
    """Site-level means of a one-shot evaluation (no per-volume value leaves the site)."""
    s = evaluation["summary"]
    out = {"dice": float(s["mean_dice"]), "n_volumes": float(s["n_volumes"]), "oneshot": 1.0,
           "self_support": float(len(evaluation["self_support"]))}
    out.update({f"dice_{k}": float(v) for k, v in s["dice"].items() if not math.isnan(v)})
    whole = s["settings"].get("whole_volume", {}).get("mean_dice", math.nan)
    if not math.isnan(whole):
        out["whole_volume_dice"] = float(whole)
    return out


class EpisodicSiteRunner(SiteRunner):
    """Self-supervised episodes (the method's pseudo-labels, computed once and cached at the site),
    ``steps`` steps a round. Validation: the site's own one-shot Dice (``dice``, ``oneshot`` = 1)
    where its split holds a labelled volume, else the episode metrics on fixed seeded episodes
    (``dice`` = ``episode_dice``, ``oneshot`` = 0)."""

    def __init__(self, trainer, slices, site_name, seed, args, state_dir=None):
        super().__init__(trainer, slices, site_name, seed, args, state_dir)
        tc = trainer.train_config
        self.sampler = trainer.sampler(slices, "training", seed=seed)  # superpixels: computed or read from the cache
        fixed = self.sampler.with_seed(seed + 1)  # the same slices and superpixels, other episodes
        n_val = max(1, math.ceil(tc.val_episodes / tc.batch_size))
        self.val_batches = [fixed.batch(tc.batch_size) for _ in range(n_val)]

    @property
    def n_train_items(self) -> int:
        return len(self.sampler)

    def describe(self) -> str:
        tc = self.trainer.train_config
        how = "one-shot Dice" if has_labelled(self.data.slices, "validation") else "episode metrics"
        return (f"{len(self.sampler)} training slices with pseudo-labels, {tc.steps} steps x {tc.batch_size} "
                f"episodes a round, validation: {how}")

    def train(self, info) -> dict:
        res = self.last_fit = self.trainer.fit(lambda: self.sampler.batch(self.trainer.train_config.batch_size),
                                               desc=f"{self.site_name} round {info.current_round}",
                                               should_stop=info.should_stop)
        return {"loss": res["loss"], "episodes_per_s": res["samples"] / max(res["seconds"], 1e-9)}

    def _metrics(self, split: str) -> dict[str, float]:
        episodes = self.trainer.episode_metrics(self.val_batches)
        if has_labelled(self.data.slices, split):
            out = oneshot_metrics(self.trainer.evaluate(self.data.slices, split))
            if not math.isnan(out["dice"]):
                return {**out, **episodes}
        return {"dice": episodes["episode_dice"], "oneshot": 0.0, **episodes}

    def validate(self) -> dict[str, float]:
        return self._metrics("validation")

    def evaluate(self) -> dict[str, float]:
        return self._metrics("test")


def local_writer(folder):
    """A TensorBoard writer in the site's own folder (images stay at the site), or None."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except Exception as exc:  # TensorBoard missing: pictures as PNG only
        log.warning(f"no local TensorBoard for the sample grids ({exc}); PNG files only")
        return None


class GanSiteRunner(SiteRunner):
    """The method's conditioned slices (``site_data``), ``steps`` G+D steps a round, sample grids in
    ``<state dir>/<site>/pictures`` (PNG and a local TensorBoard: generated images do not travel
    with the metrics); validation: the method's quality figures."""

    needs_state_dir = True

    def __init__(self, trainer, slices, site_name, seed, args, state_dir=None):
        super().__init__(trainer, slices, site_name, seed, args, state_dir)
        self.method = trainer.method
        self.splits = self.method.site_data(trainer, slices, site_name, seed=seed)
        self.pictures_dir = os.path.join(state_dir, site_name, "pictures") if state_dir else None
        self.writer = local_writer(os.path.join(self.pictures_dir, "tb")) if self.pictures_dir else None

    @property
    def n_train_items(self) -> int:
        return len(self.splits["training"])

    def describe(self) -> str:
        tc = self.trainer.train_config
        return (f"{self.n_train_items} training slices, {tc.steps} G+D steps x {tc.batch_size} slices a round, "
                f"pictures in {self.pictures_dir}")

    def train(self, info) -> dict:
        tc = self.trainer.train_config
        res = self.last_fit = self.trainer.fit(lambda: self.splits["training"].batch(tc.batch_size),
                                               should_stop=info.should_stop)
        if self.pictures_dir:
            self.method.site_pictures(self.trainer, self.splits, self.pictures_dir, info.current_round,
                                      total_rounds=info.total_rounds, writer=self.writer)
        return {**res["means"], "steps": res["steps"], "samples": res["samples"], "seconds": res["seconds"]}

    def validate(self) -> dict:
        return self.method.quality_metrics(self.trainer, self.splits, "validation")

    def evaluate(self) -> dict:
        return self.method.quality_metrics(self.trainer, self.splits, "test")


class TaskSiteRunner(SiteRunner):
    """A site that only serves its method's own tasks (``SiteParts.task_handlers``): the adaptation
    jobs send no train / validate / evaluate task."""

    needs_state_dir = True

    def describe(self) -> str:
        tc = self.trainer.train_config
        return f"the method's own tasks, {tc.steps} steps x {tc.batch_size} slices per fit"

    def _no_such_task(self, *_):
        raise RuntimeError("this job sends only the method's own tasks (no train / validate / evaluate)")

    train = validate = evaluate = _no_such_task
