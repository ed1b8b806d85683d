"""Metric/param name sanitising: valid for MLflow, stable, and 1:1 within a run."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from mlflow.utils.validation import _validate_metric_name, _validate_param_name

from cvops import sanitize_metric_name
from cvops.tracking.names import NameRegistry, is_valid_name

TFOD_AND_COCO_NAMES = {
    "DetectionBoxes_Precision/mAP@.50IOU": "DetectionBoxes_Precision/mAP_at_.50IOU",
    "DetectionBoxes_Precision/mAP (small)": "DetectionBoxes_Precision/mAP_small",
    "DetectionBoxes_Recall/AR@100 (large)": "DetectionBoxes_Recall/AR_at_100_large",
    "mAP (small)": "mAP_small",
    "bbox/AP50": "bbox/AP50",
    "loss/total_loss": "loss/total_loss",
}

names = st.text(min_size=0, max_size=400)


def test_framework_names_become_readable_valid_names():
    for original, expected in TFOD_AND_COCO_NAMES.items():
        assert sanitize_metric_name(original) == expected


@settings(max_examples=400, deadline=None)
@given(names)
def test_every_name_becomes_one_mlflow_accepts(name):
    sanitized = sanitize_metric_name(name)
    _validate_metric_name(sanitized)  # raises MlflowException if MLflow would refuse it
    _validate_param_name(sanitized)
    assert len(sanitized) <= 250


@settings(max_examples=300, deadline=None)
@given(names)
def test_sanitising_is_stable_and_idempotent(name):
    once = sanitize_metric_name(name)
    assert sanitize_metric_name(name) == once
    assert sanitize_metric_name(once) == once


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,40}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}){0,3}", fullmatch=True))
def test_valid_names_are_left_alone(name):
    if is_valid_name(name):
        assert sanitize_metric_name(name) == name


@settings(max_examples=200, deadline=None)
@given(st.lists(names, min_size=1, max_size=30, unique=True))
def test_a_run_never_merges_two_different_names(originals):
    registry = NameRegistry()
    sanitized = [registry(name) for name in originals]
    assert len(set(sanitized)) == len(originals)
    assert all(is_valid_name(name) for name in sanitized)
    # The mapping artifact lets a reader find every rewritten name's original.
    mapping = registry.mapping()
    for original, name in zip(originals, sanitized):
        assert mapping.get(name, name) == original
        assert registry(original) == name  # same name for the same original, every time


def test_lookalikes_get_distinct_suffixed_names():
    registry = NameRegistry()
    first, second = registry("mAP (small)"), registry("mAP [small]")
    assert first == "mAP_small"
    assert second.startswith("mAP_small_") and second != first


def test_overlong_names_are_cut_with_a_digest():
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    a, b = sanitize_metric_name(long_a), sanitize_metric_name(long_b)
    assert len(a) <= 250 and len(b) <= 250 and a != b
