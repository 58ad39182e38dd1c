"""The data factory's phase 2 as one NVFlare server workflow (jobs/factory_adapt).

1. The server loads the factory's global model (the job's ``factory_model`` or
   ``$FEDXMODAL_FACTORY_MODEL``: phase 1's ``FL_global_model.pt`` or a ``factory_model.pt``);
   only its EMA generator travels (``generator_ema.*``).
2. ``train_source`` to the source site: the generator; back: the source branch (E_s + S_s, an
   InversionSegNet state dict) and the source's validation Dice. If the source fails (no labels,
   a wrong setting, a crash) the job stops, naming the site and the reason.
3. ``adapt_target`` to every target (``target_sites``, or every other connected site) at once:
   the generator and the source branch; back: site-level test Dice only (each target keeps its
   adapted model). A target that fails is reported (its reason, or "no result") in the server log
   and in ``adaptation_results.json`` (the server's app folder) and the others go on; the job
   fails only if every target failed.

The server relays and keeps nothing but the results file.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedxmodal.utils import as_numpy

from .adaptation import (ADAPT_TARGET, ERROR_META, FAILED_METRIC, GENERATOR_PREFIX, SOURCE_PREFIX, TRAIN_SOURCE,
                         load_factory_model)

__all__ = ["FactoryAdaptation", "RESULTS_FILE"]
RESULTS_FILE = "adaptation_results.json"


class FactoryAdaptation(ModelController):
    _always_serialize_args = ("model_args", "sites", "source_site", "target_sites", "factory_model", "task_check_period")

    def __init__(self, model_args=None, sites=(), source_site: str = "", target_sites=(), factory_model: str = "",
                 timeout: int = 0, task_check_period: float = 0.1):
        """Args:
        model_args: the job's model args (the generator's settings, n_classes, widths; a plain
            dict: NVFlare would build a {"path", "args"} spec into the object).
        sites: the phase-1 sites in embedding order ([]: the factory checkpoint's).
        source_site: the labelled source. target_sites: [] = every other connected site.
        factory_model: the factory's global model on the server ("" -> $FEDXMODAL_FACTORY_MODEL).
        timeout: seconds to wait for a task (0: no limit).
        """
        # no persistor (nothing is aggregated); a failed target is reported, not fatal
        super().__init__(persistor_id="", task_check_period=task_check_period, ignore_result_error=True)
        self.model_args, self.sites, self.source_site = dict(model_args or {}), list(sites), source_site
        self.target_sites, self.factory_model = list(target_sites), factory_model
        self.timeout, self.task_check_period = timeout, task_check_period

    def _ask(self, task: str, params: dict, meta: dict, targets: list) -> dict:
        data = FLModel(params=params, params_type=ParamsType.FULL, meta=dict(meta))
        replies = self.send_model_and_wait(task_name=task, data=data, targets=targets, timeout=self.timeout)
        return {r.meta.get("client_name"): r for r in replies}

    @staticmethod
    def _failure(reply) -> str | None:
        if reply is None:
            return "no result (the task failed at the site; see its log)"
        if (reply.metrics or {}).get(FAILED_METRIC):
            return str((reply.meta or {}).get(ERROR_META, "failed (see the site's log)"))
        return None

    def run(self):
        try:
            generator, sites = load_factory_model(self.factory_model, self.model_args, self.sites)
        except (OSError, ValueError) as exc:
            self.panic(f"factory adaptation: {exc}")
            return
        connected, source = self.sample_clients(), self.source_site
        targets = list(self.target_sites) or [c for c in connected if c != source]
        problems = [f"source site {source!r} is not connected ({connected})"] if source not in connected else []
        problems += [f"source site {source!r} is not a phase-1 site {list(sites)}"] if source not in sites else []
        problems += [f"target site(s) {sorted(set(targets) - set(connected))} not connected"] \
            if set(targets) - set(connected) else []
        problems += ["no target site"] if not targets else []
        problems += [f"the source {source!r} is also a target"] if source in targets else []
        if problems:
            self.panic("factory adaptation: " + "; ".join(problems))
            return
        meta = {"sites": list(sites), "source_site": source}
        gen = {GENERATOR_PREFIX + k: as_numpy(v) for k, v in generator.state_dict().items()}
        self.info(f"factory adaptation: source {source}, targets {targets}, phase-1 sites {list(sites)}; "
                  f"sending the EMA generator ({len(gen)} tensors)")
        reply = self._ask(TRAIN_SOURCE, gen, meta, [source]).get(source)
        failure = self._failure(reply) or (None if reply.params else "no source branch in the result")
        if failure:
            self.panic(f"factory adaptation: source site {source} failed {TRAIN_SOURCE}: {failure}")
            return
        self.info(f"source branch from {source}: {len(reply.params)} tensors; validation {reply.metrics}")
        branch = {SOURCE_PREFIX + k: as_numpy(v) for k, v in reply.params.items()}
        replies = self._ask(ADAPT_TARGET, {**gen, **branch}, meta, targets)
        results = {"source_site": source, "sites": list(sites), "source": {"metrics": dict(reply.metrics or {})},
                   "targets": {}}
        for name in targets:
            failure = self._failure(replies.get(name))
            if failure:
                self.error(f"target site {name} failed {ADAPT_TARGET}: {failure}")
                results["targets"][name] = {"failed": True, "error": failure}
            else:
                metrics = {k: v for k, v in (replies[name].metrics or {}).items() if k != FAILED_METRIC}
                self.info(f"target site {name} adapted: test {metrics}")
                results["targets"][name] = {"failed": False, "metrics": metrics}
        out = Path(self.get_app_dir()) / RESULTS_FILE
        out.write_text(json.dumps(results, indent=1, sort_keys=True))
        self.info(f"factory adaptation results in {out}")
        if all(r["failed"] for r in results["targets"].values()):
            self.panic(f"factory adaptation: every target failed: {sorted(results['targets'])}")
