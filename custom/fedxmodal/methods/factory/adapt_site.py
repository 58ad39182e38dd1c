"""The data factory's phase 2 at a site (jobs/factory_adapt): the two tasks of
:class:`~fedxmodal.methods.factory.adapt_workflow.FactoryAdaptation`, served by the generic
``fl/site.py``.

* ``train_source`` (the source site): receives the factory's EMA generator (``generator_ema.*``),
  trains E_s + S_s on its labelled training slices (``fit_source``), evaluates on its validation
  split and returns the source branch (the InversionSegNet state dict) with site-level Dice;
  keeps ``<state dir>/<site>/factory_adapt/source.pt``.
* ``adapt_target`` (every target site): receives the generator and the source branch
  (``source_branch.*``), picks its three labelled mid-slices, adapts (``fit_target``), evaluates
  on its own test split, keeps ``<state dir>/<site>/factory_adapt/target.pt`` (the model for
  ``segment``) and returns site-level Dice only.

A site that was not in phase 1 has no row in the site embedding: it conditions on the phase-1
site whose generated slices look most like its own (the method's ``site_condition``), and logs
the choice. A task that fails replies ``{"failed": 1}`` with a short reason (meta ``error``; the
message of a data / setting error -- without the site's file paths -- else only the exception's
type) instead of crashing the site: the server stops the job for the source, reports the target
and goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from nvflare.client import FLModel, ParamsType

from ...data.errors import DataError
from ..base import SiteParts
from .adaptation import (ADAPT_TARGET, ERROR_META, FAILED_METRIC, GENERATOR_PREFIX, SOURCE_PREFIX, TRAIN_SOURCE,
                         site_dice)

log = logging.getLogger(__name__)
STATE_FOLDER = "factory_adapt"


def _take(params: dict, prefix: str) -> dict:
    return {k[len(prefix):]: torch.as_tensor(v) for k, v in (params or {}).items() if k.startswith(prefix)}


class AdaptationSiteParts(SiteParts):
    """The two task handlers on the site's volumes (``data.slices``; labels are read at the site,
    never sent)."""

    def __init__(self, trainer, data, site_name, state_dir=None):
        super().__init__(trainer, data, site_name, state_dir=state_dir)
        self.slices, self.method = data.slices, trainer.method

    def task_handlers(self) -> dict:
        return {TRAIN_SOURCE: self._replying(self.train_source), ADAPT_TARGET: self._replying(self.adapt_target)}

    # ---- helpers
    def _replying(self, task):
        def handler(model):
            try:
                return task(model)
            except Exception as exc:  # the site stays up; the server hears why, briefly
                known = isinstance(exc, (ValueError, FileNotFoundError, KeyError))
                # a data error's problem without its file path (the site's paths stay at the site)
                reason = exc.problem if isinstance(exc, DataError) else str(exc) if known else type(exc).__name__
                if self.site_name not in reason:
                    reason = f"site {self.site_name!r}: {reason}"
                log.error("[%s] %s failed: %s", self.site_name, task.__name__, exc, exc_info=not known)
                return FLModel(metrics={FAILED_METRIC: 1.0}, meta={ERROR_META: reason[:240]})
        return handler

    def _path(self, name: str) -> Path | None:
        return None if self.state_dir is None else Path(self.state_dir) / self.site_name / STATE_FOLDER / name

    def _settings(self, model) -> tuple[tuple, str]:
        meta = model.meta or {}
        sites, source = tuple(meta.get("sites") or self.method.sites), meta.get("source_site") or self.method.source_site
        self.method.sites = sites
        if source not in sites:
            raise ValueError(f"the source site {source!r} is not among the phase-1 sites {list(sites)}")
        generator = _take(model.params, GENERATOR_PREFIX)
        try:
            self.trainer.load_generator(generator)
        except RuntimeError as exc:
            raise ValueError(f"the factory's generator does not fit this job's model args: {str(exc)[:160]}") from None
        return sites, source

    # ---- the tasks
    def train_source(self, model) -> FLModel:
        sites, _ = self._settings(model)
        tr, tc = self.trainer, self.trainer.train_config
        if self.site_name not in sites:
            raise ValueError(f"the source must be a phase-1 site {list(sites)} (its row in the generator)")
        batches = self.method.source_batches(self.slices, sites.index(self.site_name), tr.cfg, tc.batch_size, tc.seed)
        fit = tr.fit_source(batches)
        metrics = {**site_dice(tr.evaluate(self.slices, "validation")), "steps": float(fit["steps"])}
        log.info("[%s] source branch trained (%d steps, %d labelled slices): validation %s", self.site_name,
                 fit["steps"], len(batches), metrics)
        if self._path("source.pt"):
            tr.save(self._path("source.pt"), role="source", site=self.site_name)
        params = {k: v.detach().cpu().float().contiguous() for k, v in tr.model.state_dict().items()}
        return FLModel(params=params, params_type=ParamsType.FULL, metrics=metrics)

    def adapt_target(self, model) -> FLModel:
        sites, source = self._settings(model)
        tr, tc = self.trainer, self.trainer.train_config
        branch = _take(model.params, SOURCE_PREFIX)
        if not branch:
            raise ValueError("no source branch in the adapt_target payload")
        tr.set_source_branch(branch)
        row, how = self.method.site_condition(self.slices, tr.generator, self.site_name, tc.seed, tr.device)
        if how["late"]:
            log.info("[%s] not a phase-1 site: conditioning on %s (row %d), the phase-1 site whose generated "
                     "slices' domain key is nearest to this site's (distances %s)", self.site_name, how["site"], row,
                     {k: round(v, 3) for k, v in how["distances"].items()})
        batches, labelled, picks = self.method.target_batches(self.slices, row, tr.cfg, tc.batch_size, tc.seed)
        fit = tr.fit_target(batches, source_site=sites.index(source), labelled=labelled)
        metrics = {**site_dice(tr.evaluate(self.slices, "test")), "steps": float(fit["steps"])}
        if self._path("target.pt"):
            tr.save(self._path("target.pt"), role="target", site=self.site_name, source=source,
                    condition_site=how["site"], labelled_slices=[list(p) for p in picks])
        log.info("[%s] adapted with %s's source branch (%d steps, labelled slices %s): test %s; model in %s",
                 self.site_name, source, fit["steps"], picks, metrics, self._path("target.pt"))
        return FLModel(metrics=metrics)
