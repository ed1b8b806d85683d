"""The parity rule of cvops.export: every output compared, the largest difference decides."""
import numpy as np
import pytest

from cvops.export import parity

REFERENCE = {"boxes": np.array([[1.0, 2.0, 3.0, 4.0]]), "scores": np.array([0.5])}


def test_outputs_within_tolerance_pass_with_the_largest_difference():
    passed, difference, _ = parity(REFERENCE, {"boxes": REFERENCE["boxes"] + 1e-5, "scores": REFERENCE["scores"] - 1e-4}, 1e-3)
    assert passed and difference == pytest.approx(1e-4)


@pytest.mark.parametrize("exported, reason", [
    ({"boxes": REFERENCE["boxes"] + 0.5, "scores": REFERENCE["scores"]}, "'boxes' > tolerance"),
    ({"boxes": REFERENCE["boxes"], "scores": np.array([np.nan])}, "> tolerance"),
    ({"boxes": REFERENCE["boxes"]}, "lacks outputs ['scores']"),
    ({"boxes": REFERENCE["boxes"].T, "scores": REFERENCE["scores"]}, "shape"),
])
def test_a_divergent_export_fails_and_says_where(exported, reason):
    passed, _, why = parity(REFERENCE, exported, 1e-3)
    assert not passed and reason in why


def test_nothing_to_compare_is_no_pass():
    passed, _, why = parity({}, {}, 1e-3)
    assert not passed and why == "no outputs to compare"


def test_a_sequence_output_is_named_in_the_exported_models_order():
    from cvops.export import named_outputs

    named = named_outputs((np.ones(2), np.zeros(1)), ["boxes", "scores"])
    assert list(named) == ["boxes", "scores"] and named["scores"].tolist() == [0.0]
