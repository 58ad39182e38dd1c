"""Server components of fedxmodal jobs: NVFlare 2.9 FedAvg + PTFileModelPersistor +
IntimeModelSelector, extended only by what they lack -- resuming an interrupted job.

What the built-ins already do (and we keep):

* ``FedAvg`` (nvflare.app_common.workflows.fedavg) averages the sites' weights (or diffs), weighted
  by ``FLModel.meta["NUM_STEPS_CURRENT_ROUND"]`` -- our sites put their number of training slices
  there -- and, without ``stop_cond``, persists the global model EVERY round.
* ``PTFileModelPersistor`` writes ``FL_global_model.pt`` (every round) and, when the selector
  fires ``GLOBAL_BEST_MODEL_AVAILABLE``, ``best_FL_global_model.pt`` into the run's app folder;
  ``PTFileModelLocator`` serves both to ``CrossSiteModelEval``.
* ``IntimeModelSelector`` averages the sites' pre-training validation metric of the global model
  (``FLModel.metrics`` of a train result = DXO meta ``initial_metrics``) and fires
  ``GLOBAL_BEST_MODEL_AVAILABLE`` when it improves.

What they lack: a new run of a job starts from scratch -- the run folder of the previous run is
gone (the simulator wipes its workspace; a resubmitted job gets a new job id and folder) and
``FedAvg`` always starts at ``start_round``. So:

* :class:`ResumablePTFileModelPersistor` mirrors the global model, the best model and a small
  state (last completed round, best metric) after every round into a checkpoint folder that
  OUTLIVES the run: ``<checkpoint_dir>/<job name>/``. ``checkpoint_dir`` is a server-local
  setting: ``$FEDXMODAL_CHECKPOINT_DIR`` if set, else the job's ``checkpoint_dir`` argument
  (default ``fedxmodal_checkpoints``), relative paths being relative to the server's workspace
  root. When a run starts and that folder holds an unfinished run of the same job, the persistor
  loads its global model (and restores its best model) instead of the initial one. A FINISHED
  run (last round >= num_rounds - 1) is moved aside to ``<job name>.done-<time>`` and the job
  starts fresh; raising ``num_rounds`` and resubmitting therefore continues training.
* :class:`ResumableFedAvg` starts at the round after the checkpoint's and runs only the rounds
  left (``total_rounds`` sent to the sites stays the configured total).
* :class:`ResumableIntimeModelSelector` restores the best metric, so a resumed run does not
  overwrite the best model with a worse one.

The state the three share travels in the FLContext property :data:`RESUME_STATE_PROP`.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from typing import Dict, Optional

import torch

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import ModelLearnable
from nvflare.app_common.app_constant import AppConstants, DefaultCheckpointFileName
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedxmodal.utils import write_json_atomic

RESUME_STATE_PROP = "fedxmodal.resume_state"
STATE_KEY = "fedxmodal_state"  # key of the state inside the saved checkpoint dict
STATE_FILENAME = "fedxmodal_state.json"  # human-readable copy next to the checkpoint
ENV_CHECKPOINT_DIR = "FEDXMODAL_CHECKPOINT_DIR"

__all__ = [
    "ENV_CHECKPOINT_DIR",
    "RESUME_STATE_PROP",
    "ResumableFedAvg",
    "ResumableIntimeModelSelector",
    "ResumablePTFileModelPersistor",
]


def _atomic_copy(src: str, dst: str) -> None:
    tmp = f"{dst}.{uuid.uuid4().hex}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class ResumablePTFileModelPersistor(PTFileModelPersistor):
    # written to the job config even when equal to the default (the exporter omits defaults)
    _always_serialize_args = ("model", "checkpoint_dir", "resume")

    def __init__(
        self,
        model=None,
        checkpoint_dir: str = "fedxmodal_checkpoints",
        resume: bool = True,
        global_model_file_name: str = DefaultCheckpointFileName.GLOBAL_MODEL,
        best_global_model_file_name: str = DefaultCheckpointFileName.BEST_GLOBAL_MODEL,
        source_ckpt_file_full_name: Optional[str] = None,
        allow_numpy_conversion: bool = True,
    ):
        """PTFileModelPersistor that also keeps a resumable checkpoint outside the run folder.

        Args:
            model: the model, as ``{"path": "pkg.Class", "args": {...}}`` (or a module / component id).
            checkpoint_dir: folder for resumable checkpoints (a sub-folder per job name). Relative
                paths are relative to the server workspace root. ``$FEDXMODAL_CHECKPOINT_DIR`` on
                the server overrides it. Empty string: no checkpoint folder, no resume.
            resume: continue an unfinished run found in the checkpoint folder.
            global_model_file_name, best_global_model_file_name, source_ckpt_file_full_name,
            allow_numpy_conversion: as PTFileModelPersistor.
        """
        super().__init__(
            model=model,
            global_model_file_name=global_model_file_name,
            best_global_model_file_name=best_global_model_file_name,
            source_ckpt_file_full_name=source_ckpt_file_full_name,
            allow_numpy_conversion=allow_numpy_conversion,
        )
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self._ckpt_dir: Optional[str] = None
        self._best: Optional[Dict] = None  # {"metric": selector's value, "round": r, "raw": value}
        self._resumed_from: Optional[Dict] = None
        self._num_rounds: Optional[int] = None

    # ---------------------------------------------------------------- setup
    def handle_event(self, event: str, fl_ctx: FLContext):
        super().handle_event(event, fl_ctx)
        if event == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            info = fl_ctx.get_prop(AppConstants.METRICS_SELECTION_INFO) or {}
            raw = None
            if isinstance(info.get("best_metrics"), dict):
                raw = next(iter(info["best_metrics"].values()), None)
            self._best = {
                "metric": fl_ctx.get_prop(AppConstants.VALIDATION_RESULT),
                "raw": raw,
                "round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
            }
            if self._ckpt_dir:
                _atomic_copy(self._best_ckpt_save_path, os.path.join(self._ckpt_dir, self.best_global_model_file_name))

    def _resolve_ckpt_dir(self, fl_ctx: FLContext) -> Optional[str]:
        base = os.environ.get(ENV_CHECKPOINT_DIR) or self.checkpoint_dir
        if not base:
            return None
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            root = fl_ctx.get_engine().get_workspace().get_root_dir()
            base = os.path.join(root, base)
        meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        job_name = meta.get("name") or fl_ctx.get_job_id() or "job"
        path = os.path.join(base, job_name)
        os.makedirs(path, exist_ok=True)
        return path

    # ---------------------------------------------------------------- load
    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        self._num_rounds = fl_ctx.get_prop(AppConstants.NUM_ROUNDS)  # set by FedAvg.run() before loading
        self._ckpt_dir = self._resolve_ckpt_dir(fl_ctx)
        state = None
        if self._ckpt_dir:
            state = self._find_resumable_state(fl_ctx)
        if state is None:
            return super().load_model(fl_ctx)

        ckpt = os.path.join(self._ckpt_dir, self.global_model_file_name)
        saved_preload, self.ckpt_preload_path = self.ckpt_preload_path, ckpt
        saved_source, self.source_ckpt_file_full_name = self.source_ckpt_file_full_name, None
        try:
            ml = super().load_model(fl_ctx)
        finally:
            self.ckpt_preload_path, self.source_ckpt_file_full_name = saved_preload, saved_source
        best_src = os.path.join(self._ckpt_dir, self.best_global_model_file_name)
        if os.path.isfile(best_src):
            _atomic_copy(best_src, self._best_ckpt_save_path)
        self._best = state.get("best")
        self._resumed_from = state
        fl_ctx.set_prop(RESUME_STATE_PROP, state, private=True, sticky=False)
        self.log_info(
            fl_ctx,
            f"RESUMING job from {ckpt}: last completed round {state['last_round']}, best {state.get('best')}",
        )
        return ml

    def _find_resumable_state(self, fl_ctx: FLContext) -> Optional[Dict]:
        ckpt = os.path.join(self._ckpt_dir, self.global_model_file_name)
        if not os.path.isfile(ckpt):
            return None
        try:
            data = torch.load(ckpt, map_location="cpu", weights_only=True)
            state = data.get(STATE_KEY) if isinstance(data, dict) else None
        except Exception as e:
            self.log_warning(fl_ctx, f"cannot read checkpoint {ckpt} ({e}); starting fresh")
            state = None
        if not state or "last_round" not in state:
            self.log_warning(fl_ctx, f"{ckpt} has no fedxmodal state; starting fresh")
            return None
        num_rounds = self._num_rounds
        finished = num_rounds is not None and int(state["last_round"]) >= int(num_rounds) - 1
        if not self.resume or finished:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = f"{self._ckpt_dir}.{'done' if finished else 'old'}-{stamp}-{uuid.uuid4().hex[:6]}"
            os.replace(self._ckpt_dir, aside)
            os.makedirs(self._ckpt_dir, exist_ok=True)
            self.log_info(
                fl_ctx,
                f"checkpoint of a {'finished' if finished else 'previous'} run moved to {aside}; starting fresh",
            )
            return None
        return state

    # ---------------------------------------------------------------- save
    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext):
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        state = {
            "last_round": int(rnd) if rnd is not None else None,
            "num_rounds": self._num_rounds,
            "best": self._best,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        pm = self._get_persistence_manager(fl_ctx)
        pm.other_props[STATE_KEY] = state  # saved inside the checkpoint: weights and round are atomic
        super().save_model(ml, fl_ctx)
        if self._ckpt_dir and rnd is not None:
            _atomic_copy(self._ckpt_save_path, os.path.join(self._ckpt_dir, self.global_model_file_name))
            write_json_atomic(os.path.join(self._ckpt_dir, STATE_FILENAME), state, sort_keys=True)


class ResumableIntimeModelSelector(IntimeModelSelector):
    _always_serialize_args = ("key_metric", "negate_key_metric", "weigh_by_local_iter")

    def __init__(
        self,
        weigh_by_local_iter: bool = False,
        aggregation_weights=None,
        validation_metric_name: str = "initial_metrics",
        key_metric: str = "dice",
        negate_key_metric: bool = False,
    ):
        """IntimeModelSelector that restores the best metric of a resumed run (see module doc)."""
        super().__init__(
            weigh_by_local_iter=weigh_by_local_iter,
            aggregation_weights=aggregation_weights,
            validation_metric_name=validation_metric_name,
            key_metric=key_metric,
            negate_key_metric=negate_key_metric,
        )

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.INITIAL_MODEL_LOADED:
            state = fl_ctx.get_prop(RESUME_STATE_PROP)
            best = (state or {}).get("best") or {}
            if best.get("metric") is not None:
                self.best_val_metric = float(best["metric"])
                self.best_raw_val_metric = best.get("raw")
                self.log_info(fl_ctx, f"restored best {self.key_metric} {best} of the resumed run")


def merge_partial_update(global_params: Dict, update: Dict) -> Dict:
    """A FULL aggregate that covers only some tensors (FedBN leaves BatchNorm out) replaces those;
    the global model keeps the rest as they were."""
    return {**{k: v for k, v in global_params.items() if k not in update}, **update}


class ResumableFedAvg(FedAvg):
    _always_serialize_args = ("num_clients", "num_rounds", "persistor_id", "task_check_period")

    def __init__(
        self,
        num_clients: Optional[int] = None,
        num_rounds: int = 5,
        persistor_id: str = AppConstants.DEFAULT_PERSISTOR_ID,
        task_check_period: float = 0.5,
        exclude_vars: Optional[str] = None,
        aggregation_weights: Optional[Dict[str, float]] = None,
        ignore_result_error: Optional[bool] = None,
        aggregator=None,
        fedprox_mu: Optional[float] = None,
        site_payloads=None,
        sample_seed: Optional[int] = None,
    ):
        """NVFlare's FedAvg (weighted by NUM_STEPS_CURRENT_ROUND, model persisted every round)
        that continues an interrupted run from the persistor's checkpoint (see module doc), and
        optionally sends every site its own payload in a round (``site_payloads``).

        Args:
            num_clients: sites sampled per round; None: every connected site, every round.
            num_rounds: TOTAL number of rounds of the job (a resumed run runs only those left).
            persistor_id: id of the (Resumable)PTFileModelPersistor component.
            task_check_period: how often the controller checks its tasks (s); lower = less latency.
            exclude_vars, aggregation_weights, ignore_result_error: as FedAvg.
            aggregator: a ModelAggregator (e.g. fedxmodal.methods.dsbn.aggregator.FedBNAggregator) instead of
                the built-in weighted average. An aggregate that covers only some tensors updates
                only those; the global model keeps the rest (FedBN's site-local BatchNorm).
            fedprox_mu: NVFlare's FedProx contract: the coefficient sent to the sites in the model's
                meta (``fedprox_mu``), read there with ``nvflare.app_common.utils.fedprox_utils``.
            site_payloads: an object (a method's server part, e.g.
                ``fedxmodal.methods.fedda.workflow.FedDAPayloads``) that turns the round's global
                model into one payload per site (``payloads(round, sites, model) -> {site: FLModel}``),
                sees every result before it is aggregated (``accept(result) -> result``: it may take
                entries out) and the new global model after each round (``round_done(round, model)``).
                The sites still train in parallel; the round's error policy is FedAvg's.
            sample_seed: with ``num_clients`` below the connected sites, draw each round's sites
                from this seed and the round number (a seed fixes the run; NVFlare's own draw is
                unseeded). None: NVFlare's draw.
        """
        super().__init__(
            num_clients=num_clients,
            num_rounds=num_rounds,
            persistor_id=persistor_id,
            task_check_period=task_check_period,
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            ignore_result_error=ignore_result_error,
            aggregator=aggregator,
            fedprox_mu=fedprox_mu,
        )
        self.ignore_result_error = ignore_result_error
        self.site_payloads = site_payloads
        self._held_results: list = []  # this round's results, until every site has answered
        self._deliver = None
        self.sample_seed = sample_seed
        self._total_rounds = num_rounds

    def sample_clients(self, num_clients=None):
        if self.sample_seed is None:
            return super().sample_clients(num_clients)
        clients = sorted(c.name for c in self.engine.get_clients())
        if num_clients and num_clients < len(clients):
            # a string seed is hashed the same way in every process (unlike hash())
            clients = sorted(random.Random(f"{self.sample_seed}:{self.current_round}").sample(clients, num_clients))
        self.info(f"round {self.current_round}: sampled sites {clients} (seed {self.sample_seed})")
        return clients

    def load_model(self) -> FLModel:
        model = super().load_model()
        state = self.fl_ctx.get_prop(RESUME_STATE_PROP)
        if state and state.get("last_round") is not None:
            self.start_round = int(state["last_round"]) + 1
            self.num_rounds = max(0, self._total_rounds - self.start_round)
            self.info(
                f"Resuming at round {self.start_round} of {self._total_rounds} ({self.num_rounds} round(s) left)."
            )
        return model

    def update_model(self, model, aggr_result):
        if aggr_result.params_type == ParamsType.FULL and model.params and aggr_result.params:
            aggr_result.params = merge_partial_update(model.params, aggr_result.params)
        model = super().update_model(model, aggr_result)
        if self.site_payloads is not None:
            self.site_payloads.round_done(self.current_round, model)
        return model

    # The round's results in site-name order: NVFlare adds each as it arrives and float addition is
    # not associative, so with 3+ sites the model would follow the machine's load. Held until all
    # sites answered, then handed on (site_payloads.accept, the weighted sum or a method's
    # aggregator, the metrics' average) sorted by site name.
    def _in_site_order(self, deliver):
        def hold(result):
            if not result.params:  # as FedAvg: an empty result is skipped, not aggregated
                return deliver(result)
            self._held_results.append(result)
            self._deliver = deliver
            return True

        return hold

    def _get_aggregated_result(self) -> FLModel:
        held, self._held_results = self._held_results, []
        self.info(f"round {self.current_round}: aggregating {len(held)} results in site-name order")
        for result in sorted(held, key=lambda r: str((r.meta or {}).get("client_name", ""))):
            self._deliver(result)
        return super()._get_aggregated_result()

    def send_model(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None):
        if data is not None:
            data.total_rounds = self._total_rounds  # FedAvg.run() sets the rounds *left*
        if callback is not None and task_name == self.task_name:
            parts, deliver = self.site_payloads, callback  # (the lambda must see neither rebound)
            callback = self._in_site_order(deliver if parts is None else
                                           lambda result: deliver(parts.accept(result)))
        if self.site_payloads is None or task_name != self.task_name or data is None or callback is None:
            if data is not None and data.params:
                self.info(f"round {self.current_round}: {task_name} payload_bytes={_params_bytes(data.params)} per site")
            return super().send_model(task_name=task_name, data=data, targets=targets, min_responses=min_responses,
                                      timeout=timeout, callback=callback)
        sites = [getattr(t, "name", t) for t in (targets or self.sample_clients(self.num_clients))]
        payloads = self.site_payloads.payloads(self.current_round, sites, data)

        failed = set()
        for site in sites:
            payload = payloads[site]
            payload.total_rounds = self._total_rounds
            self.info(f"round {self.current_round}: {task_name} payload to {site}: "
                      f"payload_bytes={_params_bytes(payload.params)}")
            super().send_model(task_name=task_name, data=payload, targets=[site], timeout=timeout, callback=callback)
            failed |= self._current_failed_clients  # each send resets the controller's per-task state
        # the round's error policy counts all its sites, as one broadcast would
        self._current_min_responses = min_responses or len(sites)
        self._current_num_targets = len(sites)
        self._current_failed_clients = failed


def _params_bytes(params) -> int:
    return int(sum(getattr(v, "nbytes", 0) for v in (params or {}).values()))
