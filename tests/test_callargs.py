"""unetviz.callargs: the one validation of seeds, steps, guidance and counts."""

import math

import pytest

from unetviz.callargs import (
    APP_MAX_STEPS,
    MAX_SEED,
    MAX_STEPS,
    ArgumentError,
    as_float,
    as_int,
    check_guidance,
    check_seed,
    check_steps,
    uses_cfg,
)


class Custom(Exception):
    pass


@pytest.mark.parametrize("value", [7, 7.0, "7", " +7 "])
def test_int_forms_accepted(value):
    assert as_int(value, "n", 0, 10) == 7


@pytest.mark.parametrize(
    "value", [True, None, "7.5", "²", "1e3", 7.5, math.nan, math.inf, [7], "", "0x7", 2.0**60]
)
def test_int_forms_refused_with_name_and_range(value):
    with pytest.raises(ArgumentError, match=r"^n=.*expected a whole number 0\.\.10"):
        as_int(value, "n", 0, 10)


def test_range_limits_are_inclusive_and_one_past_fails():
    assert check_steps(1) == 1 and check_steps(MAX_STEPS) == MAX_STEPS
    for bad in (0, MAX_STEPS + 1):
        with pytest.raises(ArgumentError, match=f"steps={bad}"):
            check_steps(bad)
    assert check_steps(APP_MAX_STEPS, APP_MAX_STEPS) == APP_MAX_STEPS
    with pytest.raises(ArgumentError):
        check_steps(APP_MAX_STEPS + 1, APP_MAX_STEPS)


def test_seed_is_exact_never_rounded():
    assert check_seed("9007199254740993") == 9007199254740993
    assert check_seed(MAX_SEED) == MAX_SEED
    with pytest.raises(ArgumentError, match="float cannot hold"):
        check_seed(9007199254740993.0)
    with pytest.raises(ArgumentError):
        check_seed(MAX_SEED + 1)
    with pytest.raises(ArgumentError):
        check_seed(-1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -5, "nan", "x", None, True, 100.5])
def test_guidance_refuses_non_finite_and_out_of_range(value):
    with pytest.raises(Custom, match="guidance="):
        check_guidance(value, error=Custom)


def test_float_text_and_cfg_rule():
    assert as_float("7.5", "g", 0, 10) == 7.5
    assert uses_cfg(1.5) and not uses_cfg(1.0) and not uses_cfg(0.5)


def test_long_values_are_cut_in_the_message():
    with pytest.raises(ArgumentError) as e:
        as_int("x" * 10_000, "n", 0, 1)
    assert len(str(e.value)) < 120
