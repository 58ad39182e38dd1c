"""The site side of the segmentation jobs (FedGIN and the other augmentation methods): NVFlare's
Client API loop (``fedxmodal.fl.client_loop``) around the one training engine.

Run by NVFlare at every site; the job passes its knobs as ``--key=value`` arguments (see
``jobs/specs/*.json``): ``structures``, ``method``, ``local_epochs``, ``model`` (the U-Net's
class and arguments), ``preprocess``, ``train`` (TrainConfig fields), ``seed``, ``num_threads``. The site's
data folder comes from the site's own configuration (``fedxmodal.fl.site_config``), never from
the job. Only weights and aggregate metrics (means over the site's volumes) are sent.
"""

from __future__ import annotations

import logging
import math
import os
import sys

# Run as a script from the job's app/custom/: make the package shipped with the job importable.
_CUSTOM_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _CUSTOM_DIR not in sys.path:
    sys.path.insert(0, _CUSTOM_DIR)

from fedxmodal.data.errors import DataError  # noqa: E402
from fedxmodal.data.preprocess import PreprocessConfig  # noqa: E402
from fedxmodal.data.slices import SiteSlices  # noqa: E402
from fedxmodal.engine.trainer import SegmentationEngine, TrainConfig  # noqa: E402
from fedxmodal.fl.client_loop import init_site, parse_client_args, run_client  # noqa: E402
from fedxmodal.fl.site_config import resolve_site_config  # noqa: E402
from fedxmodal.networks.unet import UNetConfig  # noqa: E402

log = logging.getLogger("fedxmodal.site")
DEFAULTS = {"local_epochs": 1, "method": "gin", "seed": 0, "num_threads": 1, "poll_interval": None,
            "key_metric": "dice", "model": {"args": {}}, "preprocess": {}, "train": {}, "device": "auto"}


def aggregate_metrics(evaluation: dict, prefix: str = "dice") -> dict[str, float]:
    """Site-level means only (no per-volume values leave the site); absent structures dropped."""
    summary = evaluation["summary"]
    out = {prefix: float(summary["mean_dice"]), "n_volumes": float(summary["n_volumes"])}
    out.update({f"{prefix}_{k}": float(v) for k, v in summary["dice"].items() if not math.isnan(v)})
    if math.isnan(out[prefix]):
        out[prefix] = 0.0
    return out


def main(argv=None) -> None:
    args = parse_client_args(argv, defaults=DEFAULTS)
    site = init_site(seed=args["seed"], num_threads=args["num_threads"], poll_interval=args["poll_interval"])
    structures = tuple(args["structures"])
    # The job's model spec {"path", "args"} is the one the server built the initial weights from.
    network = {k: v for k, v in args["model"]["args"].items() if k not in ("n_structures", "init_seed")}
    if args["model"]["args"].get("n_structures", len(structures)) != len(structures):
        raise ValueError(f"job model has {args['model']['args']['n_structures']} outputs for {len(structures)} structures")
    train_cfg = TrainConfig.from_dict({**args["train"], "method": args["method"], "seed": site.seed})
    preprocess = PreprocessConfig.from_dict(args["preprocess"])
    try:
        data_dir = resolve_site_config(site.site_name).data_dir
        data = SiteSlices(data_dir, structures, preprocess, progress=False)
        images, labels = data.slices("training", foreground_only=train_cfg.foreground_only)
        data.volumes("validation")
        data.volumes("test")
    except DataError as exc:
        # Fail loudly, naming the site and the file, rather than training on part of the data.
        raise RuntimeError(f"site {site.site_name}: bad data: {exc}") from None
    engine = SegmentationEngine(structures, UNetConfig.from_dict(network), train_cfg, preprocess,
                                device=args["device"], writer=site.writer)
    engine.method.prepare([images])
    get_weights, set_weights = engine.get_weights, engine.set_weights
    if getattr(engine.method, "keeps_batchnorm_local", False):
        get_weights, set_weights = fedbn_weight_access(engine)
    log.info("[%s] %s: %d training slices, method %s, device %s", site.site_name, data.modality,
             len(images), train_cfg.method, engine.device)

    def train(info):
        res = engine.fit(images, labels, epochs=int(args["local_epochs"]), desc=f"{site.site_name} round {info.current_round}",
                         progress=False, should_stop=info.should_stop)
        return {"loss": res["loss"], "slices_per_s": res["n_slices"] * args["local_epochs"] / max(res["seconds"], 1e-9)}

    run_client(
        train_fn=train,
        validate_fn=lambda: aggregate_metrics(engine.evaluate(data, "validation")),
        evaluate_fn=lambda: aggregate_metrics(engine.evaluate(data, "test")),
        get_weights=get_weights,
        set_weights=set_weights,
        n_train_items=len(images),
        key_metric=args["key_metric"],
        site=site,
        task_handlers=method_task_handlers(engine.method, images, site.site_name),
    )


def fedbn_weight_access(engine):
    """FedBN: BatchNorm tensors (affine + running statistics) stay at the site. They are never sent,
    and received ones are ignored once the site has its own (the first global model initialises
    them)."""
    from fedxmodal.networks.domain_norm import batchnorm_state_keys

    local_keys = batchnorm_state_keys(engine.model)
    state = {"initialised": False}

    def get_weights():
        return {k: v for k, v in engine.get_weights().items() if k not in local_keys}

    def set_weights(weights):
        if state["initialised"]:
            own = engine.get_weights()
            weights = {**{k: own[k] for k in local_keys}, **{k: v for k, v in weights.items() if k not in local_keys}}
        engine.set_weights(weights)
        state["initialised"] = True

    return get_weights, set_weights


def method_task_handlers(method, images, site_name):
    """A method's own NVFlare tasks. FedDG: share this site's low-frequency amplitude squares
    (``fedxmodal.fl.feddg.SHARE_TASK``), then receive the other sites' (``RECEIVE_TASK``)."""
    if not hasattr(method, "fl_share"):
        return {}
    from nvflare.client import FLModel, ParamsType

    from fedxmodal.fl.feddg import RECEIVE_TASK, SHARE_TASK

    def share(_model):
        payload = {k: v.float().contiguous() for k, v in method.fl_share(images).items()}
        log.info("[%s] sharing %s", site_name, {k: tuple(v.shape) for k, v in payload.items()})
        return FLModel(params=payload, params_type=ParamsType.FULL)

    def receive(model):
        n = method.fl_receive(model.params)
        log.info("[%s] received %d amplitude spectra of other sites", site_name, n)
        return FLModel(metrics={"bank_size": n})

    return {SHARE_TASK: share, RECEIVE_TASK: receive}


if __name__ == "__main__":
    main()
