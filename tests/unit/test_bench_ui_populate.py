"""The rows bench/ui_populate.py COPYs for a run are rows MLflow could have written itself: names
it accepts, 200 distinct params, 40 metrics, and latest_metrics holding the point MLflow keeps."""
from __future__ import annotations

import random

from mlflow.utils.validation import _validate_metric_name, _validate_param_name

from bench.ui_populate import EVAL_POINTS, LONG_CURVES, latest_points, metric_points, param_items

STEPS = 120


def test_a_run_has_200_valid_params_and_40_valid_metrics():
    params = param_items(random.Random(1))
    assert len(params) == len(dict(params)) == 200
    points = list(metric_points(1_000_000, STEPS, random.Random(1)))
    keys = {key for key, *_ in points}
    assert len(keys) == 40
    for key, _ in params:
        _validate_param_name(key)
    for key in keys:
        _validate_metric_name(key)
    assert len(points) == len(LONG_CURVES) * STEPS + 32 * EVAL_POINTS


def test_latest_metrics_keep_the_greatest_step_timestamp_value():
    points = list(metric_points(1_000_000, STEPS, random.Random(2)))
    latest = latest_points(points)
    for key, kept in latest.items():
        history = [p for p in points if p[0] == key]
        assert kept == max(history, key=lambda p: (p[3], p[2], p[1]))
    assert latest["total_loss"][3] == STEPS - 1
    # MLflow's rule compares step first: a later timestamp at an earlier step does not win.
    assert latest_points([("m", 5.0, 2_000, 1), ("m", 1.0, 9_000, 0)])["m"] == ("m", 5.0, 2_000, 1)
