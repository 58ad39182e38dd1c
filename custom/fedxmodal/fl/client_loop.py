"""The generic site side of a fedxmodal job: NVFlare's Client API loop around plain callables.

A method (FedGIN, FedDA, FedBN, ...) supplies *what* to do -- train E local epochs, validate,
evaluate, get/set weights -- and :func:`run_client` does the FL protocol:

* ``train`` task: load the global model, validate it on the local validation split BEFORE
  training (these metrics go back in ``FLModel.metrics``; the server's model selector picks the
  best global model by the key metric, e.g. ``dice``), train, send the weights with
  ``FLModel.meta["NUM_STEPS_CURRENT_ROUND"] = n_train_items`` (the weight NVFlare's FedAvg
  averages with). Diffs instead of weights are a job setting (``params_transfer_type="DIFF"``):
  the Client API computes them, the script always returns full weights.
* ``validate`` task (cross-site evaluation): load the given model (the global model or another
  site's local model), evaluate it on the local test split, send the metrics.
* ``submit_model`` task (cross-site evaluation): send this site's local model (the weights after
  its last local training).

Metrics are streamed to TensorBoard through NVFlare (they land in the server's
``tb_events/<site>/``). An abort or stop of the job ends the loop cleanly; long training loops
can poll :attr:`RoundInfo.should_stop` between batches.

The knobs of a job reach the script as ``--key=value`` arguments (``fl/client_args.py``).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

from fedxmodal.data.errors import DataError
from fedxmodal.engine.base import seed_everything  # the one seeding function (re-exported)

logger = logging.getLogger(__name__)

ENV_NUM_THREADS = "FEDXMODAL_NUM_THREADS"
NUM_STEPS_KEY = "NUM_STEPS_CURRENT_ROUND"  # nvflare.apis.fl_constant.FLMetaKey.NUM_STEPS_CURRENT_ROUND

__all__ = [
    "RoundInfo",
    "SiteContext",
    "init_site",
    "run_client",
    "seed_everything",
    "set_num_threads",
    "set_poll_interval",
    "site_trainer",
]


# --------------------------------------------------------------------------------------------
# site setup
# --------------------------------------------------------------------------------------------
def set_num_threads(num_threads: int = 0) -> int:
    """Limit torch's CPU threads so sites sharing a machine do not oversubscribe it.

    ``FEDXMODAL_NUM_THREADS`` (a property of the machine, set at the site) wins over the job's
    ``num_threads``; 0 means leave torch's default. Returns the thread count in effect.
    """
    import torch

    env = os.environ.get(ENV_NUM_THREADS)
    if env:
        num_threads = int(env)
    if num_threads and num_threads > 0:
        torch.set_num_threads(num_threads)
        try:
            torch.set_num_interop_threads(num_threads)
        except RuntimeError:  # only settable before the first parallel work
            pass
    return torch.get_num_threads()


@dataclass
class SiteContext:
    """What :func:`init_site` set up."""

    site_name: str
    seed: int
    num_threads: int
    writer: Any = None  # nvflare.client.tracking.SummaryWriter


def set_poll_interval(poll_interval: Optional[float], api_context=None) -> bool:
    """Make the in-process Client API poll for tasks and results every ``poll_interval`` s.

    NVFlare 2.9 hard-codes 0.5 s (``in_process_backend._RESULT_POLL_INTERVAL``) both for the
    script waiting for its next task and for the executor waiting for the script's result: about
    0.5 s of latency per round, negligible for real rounds (minutes), most of a toy round. This
    sets NVFlare internals, so it is best-effort: returns False (and changes nothing) where they
    are not as expected (external-process mode, another NVFlare version).
    """
    if not poll_interval or poll_interval <= 0:
        return False
    try:
        from nvflare.app_common.executors.client_api import in_process_backend
        from nvflare.client.in_process.api import InProcessClientAPI

        api = getattr(api_context, "api", None)
        if not isinstance(api, InProcessClientAPI) or not hasattr(in_process_backend, "_RESULT_POLL_INTERVAL"):
            return False
        api.result_check_interval = float(poll_interval)
        in_process_backend._RESULT_POLL_INTERVAL = float(poll_interval)
        return True
    except Exception:  # pragma: no cover - other NVFlare versions
        return False


def init_site(
    seed: int = 0, num_threads: int = 0, poll_interval: Optional[float] = None, per_site_seed: bool = True
) -> SiteContext:
    """``flare.init()``, then seed (``seed`` + a stable per-site offset), limit torch threads and
    (optionally, see :func:`set_poll_interval`) shorten the Client API's polling.

    Call it first in a client script, before building the model or the data loaders.
    """
    import nvflare.client as flare
    from nvflare.client.tracking import SummaryWriter

    api_context = flare.init()
    set_poll_interval(poll_interval, api_context)
    site_name = flare.get_site_name()
    site_seed = seed + (zlib.crc32(site_name.encode()) % 100_000 if per_site_seed else 0)
    seed_everything(site_seed)
    threads = set_num_threads(num_threads)
    try:
        import fedxmodal

        origin = os.path.dirname(os.path.abspath(fedxmodal.__file__))
    except ImportError:  # pragma: no cover
        origin = "?"
    logger.info(f"[{site_name}] seed={site_seed} torch_threads={threads} fedxmodal from {origin}")
    return SiteContext(site_name=site_name, seed=site_seed, num_threads=threads, writer=SummaryWriter())


def site_trainer(args: Mapping[str, Any], site: SiteContext):
    """The (untrained) trainer a job's site arguments describe, seeded with the site's seed, with
    ``local_steps`` (when given) as its steps per round and the site's TensorBoard writer."""
    from fedxmodal.methods import trainer_from_job_args

    train = {**args["train"], "seed": site.seed}
    if args.get("local_steps"):
        train["steps"] = int(args["local_steps"])
    trainer = trainer_from_job_args({**args, "train": train}, device=args["device"])
    trainer.writer = site.writer
    return trainer


@contextmanager
def site_data_or_stop(site_name: str):
    """Around a site's data loading: a ``DataError`` (or a ``ValueError`` of a method that cannot
    use the data) becomes one ``RuntimeError`` naming the site and the file, so that the site stops
    loudly instead of training on part of its data, and the server reports it."""
    try:
        yield
    except (DataError, ValueError) as exc:
        raise RuntimeError(f"site {site_name}: bad data: {exc}") from None


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
@dataclass
class RoundInfo:
    """Handed to ``train_fn`` each round."""

    current_round: int
    total_rounds: Optional[int]
    site_name: str
    writer: Any  # SummaryWriter (add_scalar(tag, value, global_step))
    should_stop: Callable[[], bool]  # True once the job is aborted/stopped: return early
    global_metrics: Dict[str, float] = field(default_factory=dict)  # pre-training validation metrics


def _job_should_stop() -> bool:
    import nvflare.client as flare

    try:
        return not flare.is_running()
    except Exception:  # abort raises inside the Client API
        return True


def _copy_weights(weights: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in weights.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().clone()
        elif hasattr(v, "copy"):
            v = v.copy()
        out[k] = v
    return out


def _plain_metrics(metrics: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """numpy / 0-d torch scalars -> python numbers (NVFlare writes metrics to JSON)."""
    out = {}
    for k, v in dict(metrics or {}).items():
        size = v.numel() if callable(getattr(v, "numel", None)) else getattr(v, "size", None)
        if hasattr(v, "item") and size == 1:
            v = v.item()
        out[str(k)] = v
    return out


def _log_metrics(writer, prefix: str, metrics: Optional[Mapping[str, Any]], step: int) -> None:
    if writer is None or not metrics:
        return
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            writer.add_scalar(f"{prefix}/{k}", float(v), global_step=step)


def run_client(
    train_fn: Callable[[RoundInfo], Optional[Mapping[str, float]]],
    validate_fn: Callable[[], Mapping[str, float]],
    evaluate_fn: Callable[[], Mapping[str, float]],
    get_weights: Callable[[], Mapping[str, Any]],
    set_weights: Callable[[Mapping[str, Any]], None],
    n_train_items: Union[int, Callable[[], int]],
    *,
    key_metric: str = "dice",
    site: Optional[SiteContext] = None,
    on_task: Optional[Callable[[str, Any], None]] = None,
    task_handlers: Optional[Mapping[str, Callable[[Any], Any]]] = None,
) -> None:
    """Serve NVFlare tasks until the job ends. Call :func:`init_site` (or ``flare.init()``) first.

    Args:
        train_fn: trains the current weights for the job's local epochs on the training split;
            gets a :class:`RoundInfo`; returns training metrics (e.g. ``{"loss": 0.3}``) or None.
        validate_fn: metrics of the current weights on the local VALIDATION split; must contain
            ``key_metric`` (mean Dice). Run on every received global model before training.
        evaluate_fn: metrics of the current weights on the local TEST split (cross-site evaluation).
        get_weights: the model's weights, ``{name: tensor}`` (a state dict).
        set_weights: load received weights (``{name: tensor}``) into the model. A method that keeps
            some weights local (FedBN) filters here.
        n_train_items: number of training items (slices) -- the FedAvg aggregation weight; an int
            or a callable.
        key_metric: name of the model-selection metric in ``validate_fn``'s result.
        site: the :func:`init_site` result (for its TensorBoard writer); created when None.
        on_task: optional hook ``on_task(task_name, fl_model)`` called for every received task
            (logging/testing).
        task_handlers: ``{task_name: fn(fl_model) -> FLModel}`` for a method's own tasks (e.g.
            FedDG's amplitude exchange before training); the returned FLModel is sent back.
    """
    import nvflare.client as flare
    from nvflare.client import FLModel, ParamsType

    if site is None:
        site = init_site()
    writer = site.writer
    local_weights: Optional[Dict[str, Any]] = None  # weights after this site's last local training
    n_eval = 0

    while True:
        try:
            if not flare.is_running():
                break
            input_model = flare.receive()
        except Exception as e:  # the in-process Client API raises on abort
            logger.warning(f"[{site.site_name}] job aborted/stopped while waiting for a task: {e}")
            break
        if input_model is None:
            break
        task = flare.get_task_name()
        if on_task is not None:
            on_task(task, input_model)

        if task_handlers and task in task_handlers:
            flare.send(task_handlers[task](input_model))
            continue

        if flare.is_submit_model():
            if local_weights is None:
                logger.warning(
                    f"[{site.site_name}] submit_model: no local training happened in this run; "
                    "submitting the current weights"
                )
                local_weights = _copy_weights(get_weights())
            flare.send(FLModel(params=local_weights, params_type=ParamsType.FULL))
            continue

        if input_model.params:
            set_weights(input_model.params)

        if flare.is_evaluate():
            metrics = _plain_metrics(evaluate_fn())
            n_eval += 1
            logger.info(f"[{site.site_name}] cross-site evaluation #{n_eval}: {metrics}")
            flare.send(FLModel(metrics=metrics))
            continue

        if not flare.is_train():
            logger.warning(f"[{site.site_name}] ignoring unknown task {task!r}")
            flare.send(FLModel(metrics={}))
            continue

        rnd = int(input_model.current_round or 0)
        t_task = time.perf_counter()
        val_metrics = _plain_metrics(validate_fn())
        t_validated = time.perf_counter()
        if key_metric not in val_metrics:
            raise KeyError(f"validate_fn must return '{key_metric}', got {sorted(val_metrics)}")
        _log_metrics(writer, "val", val_metrics, rnd)
        logger.info(f"[{site.site_name}] round {rnd}: global model on validation: {val_metrics}")

        info = RoundInfo(
            current_round=rnd,
            total_rounds=input_model.total_rounds,
            site_name=site.site_name,
            writer=writer,
            should_stop=_job_should_stop,
            global_metrics=val_metrics,
        )
        train_metrics = _plain_metrics(train_fn(info))
        t_trained = time.perf_counter()
        if _job_should_stop():
            logger.warning(f"[{site.site_name}] job stopped during training of round {rnd}; not sending")
            break
        _log_metrics(writer, "train", train_metrics, rnd)

        local_weights = _copy_weights(get_weights())  # kept for submit_model (cross-site evaluation)
        n_items = n_train_items() if callable(n_train_items) else n_train_items
        flare.send(
            FLModel(
                params=dict(local_weights),  # send() may replace/release the FLModel's params
                params_type=ParamsType.FULL,
                metrics=val_metrics,
                current_round=rnd,
                meta={NUM_STEPS_KEY: int(n_items)},
            )
        )
        # what the site spent on the round's work vs the hand-over (benchmarks/bench_overhead.py reads this)
        logger.info(f"[{site.site_name}] round {rnd} timings: validate {t_validated - t_task:.3f} s, "
                    f"train {t_trained - t_validated:.3f} s, send {time.perf_counter() - t_trained:.3f} s")
