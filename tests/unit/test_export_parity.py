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
