"""A metric point's step and timestamp, whatever a training script hands the SDK: a whole 64-bit
number as MLflow stores it, or a ValueError naming the field (issue 16's fuzzing of SDK input)."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cvops.tracking.run import whole_number

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

anything = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.decimals(), st.fractions(),
    st.text(max_size=20), st.binary(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.integers(INT64_MIN, INT64_MAX).map(np.int64), st.floats(width=32).map(np.float32),
    st.integers(0, 2**64 - 1).map(np.uint64))


@settings(max_examples=500, deadline=None)
@given(anything, st.sampled_from(["step", "timestamp_ms"]))
def test_every_value_is_a_whole_64_bit_number_or_an_error_naming_its_field(value, field):
    try:
        number = whole_number(field, value)
    except ValueError as error:
        assert f"a metric's {field} must be a whole number" in str(error)
        assert repr(value)[:20] in str(error)
        return
    assert type(number) is int and INT64_MIN <= number <= INT64_MAX
    assert number == value  # nothing cut off: 3.0 is 3, 3.7 was refused


@pytest.mark.parametrize("value", [3.7, math.nan, math.inf, "5", b"5", None, [1], 2**63, INT64_MIN - 1,
                                   1e19, Decimal("2.5"), Fraction(1, 3), np.uint64(2**63), np.float64(0.5)])
def test_what_int_used_to_cut_or_pass_on_is_refused(value):
    with pytest.raises(ValueError, match="whole number"):
        whole_number("step", value)


@pytest.mark.parametrize("value, expected", [(0, 0), (-5, -5), (INT64_MAX, INT64_MAX), (INT64_MIN, INT64_MIN),
                                             (7.0, 7), (np.int32(12), 12), (np.float32(4.0), 4),
                                             (Decimal("10"), 10), (True, 1)])
def test_framework_steps_are_taken_as_they_are(value, expected):
    assert whole_number("step", value) == expected
