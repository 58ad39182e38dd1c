"""The server combines a round's results in site-name order, whatever order they arrive in: the
same three sites' results fed in every order give bit-identical weights and metrics, with
FedAvg's weighted average and with a method's own aggregator (FedBN's, the factory's uniform one)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

from fedxmodal.fl.server import ResumableFedAvg

SITES = ("site-a", "site-b", "site-c")


def _results(seed=0):
    """Three sites' results whose float32 sums depend on the order of addition."""
    rng = np.random.default_rng(seed)
    out = []
    for i, site in enumerate(SITES):
        scale = 10.0 ** (12 * i - 12)  # far apart magnitudes: even a float64 sum rounds by the order
        params = {"w": (rng.standard_normal(4096) * scale).astype(np.float32),
                  "bn.running_mean": rng.standard_normal(64).astype(np.float32)}
        out.append(FLModel(params=params, params_type=ParamsType.FULL,
                           metrics={"dice": float(rng.random()) * scale},
                           meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: 7 + 3 * i, "client_name": site}))
    return out


def _round(results, order, aggregator=None) -> FLModel:
    """One round's aggregation as FedAvg.run() does it, the results arriving in ``order``."""
    ctl = ResumableFedAvg(num_rounds=1, aggregator=aggregator)
    ctl.info = ctl.warning = lambda *a, **k: None
    ctl.fl_ctx, ctl.current_round = None, 0
    if aggregator is None:
        ctl._aggr_helper, ctl._aggr_metrics_helper = WeightedAggregationHelper(), WeightedAggregationHelper()
        ctl._all_metrics = True
    else:
        aggregator.reset_stats()
    ctl._received_count, ctl._expected_count, ctl._params_type, ctl._site_metric_weights = 0, 3, None, {}
    callback = ctl._in_site_order(ctl._aggregate_one_result)
    for i in order:
        callback(results[i])
    return ctl._get_aggregated_result()


def _bits(model: FLModel) -> dict:
    return {k: np.asarray(v).tobytes() for k, v in model.params.items()}


def test_arrival_order_does_not_change_the_weighted_average():
    results = _results()
    outs = [_round(results, order) for order in itertools.permutations(range(3))]
    assert all(_bits(o) == _bits(outs[0]) for o in outs)
    assert all(o.metrics == outs[0].metrics for o in outs)
    # positive control: NVFlare's own in-time sum, fed in two orders, differs in its low bits
    sums = []
    for order in ((0, 1, 2), (2, 1, 0)):
        helper = WeightedAggregationHelper()
        for i in order:
            helper.add(data=results[i].params, weight=results[i].meta[FLMetaKey.NUM_STEPS_CURRENT_ROUND],
                       contributor_name=SITES[i], contribution_round=0)
        sums.append({k: np.asarray(v).tobytes() for k, v in helper.get_result().items()})
    assert sums[0] != sums[1]


@pytest.mark.parametrize("aggregator_path", ["fedxmodal.methods.dsbn.aggregator.FedBNAggregator",
                                             "fedxmodal.methods.factory.aggregator.UniformAggregator"])
def test_arrival_order_does_not_change_a_methods_aggregator(aggregator_path):
    """These two sum in float64 and cast to float32, which hides most order effects by itself; the
    order is fixed for them too, so that a method's aggregator need not be written that way."""
    from fedxmodal.utils import import_by_path

    results = _results(1)
    outs = [_round(results, order, import_by_path(aggregator_path)()) for order in itertools.permutations(range(3))]
    assert outs[0].params and all(_bits(o) == _bits(outs[0]) for o in outs)

