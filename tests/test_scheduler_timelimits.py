"""Time limits (parse, show, which applies), reason codes and fair-share factors: the small pure rules
that the scheduler's plans and order rest on.

Properties run the ``scheduler`` Hypothesis profile of ``tests/test_scheduler_core.py`` (bounded);
``HYPOTHESIS_PROFILE=scheduler-long`` searches harder.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_core.fairshare import NEUTRAL_FACTOR, accrue, decay, fairshare_factors
from scheduler_core.reasons import REASON_CODES, reason_meaning, reserved_for, split_code
from scheduler_core.timelimits import (
    ACCEPTED_FORMS,
    MAX_TIME_LIMIT,
    effective_limit,
    format_duration,
    parse_time_limit,
)
from tests.test_scheduler_core import PROFILE

# -- parse_time_limit --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # M
        ("90", 90 * 60),  # the first field may be any size
        ("5:30", 5 * 60 + 30),  # M:S
        ("1:02:03", 3600 + 2 * 60 + 3),  # H:M:S
        ("100:00:00", 100 * 3600),
        ("2-3", 2 * 86400 + 3 * 3600),  # D-H
        ("2-3:04", 2 * 86400 + 3 * 3600 + 4 * 60),  # D-H:M
        ("2-3:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),  # D-H:M:S
        ("0-0:0:1", 1),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        (" 45m ", 2700),
        ("365d", 365 * 86400),
        ("0:59", 59),
    ],
)
def test_parse_time_limit_accepts_slurm_and_unit_forms(text: str, seconds: float) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "-5",  # negative
        "0",  # --time 0 is refused, not "unlimited"
        "00:00",
        "0s",
        "0-0",
        "1:60",  # seconds must stay below 60
        "1:60:00",
        "1-24",  # hours after D- stay below 24
        "1-1:60",
        "366d",  # absurd
        "8761h",
        "999999999999",
        "1234567890123",  # too many digits to even read
        "1.5h",
        "5x",
        "1-",
        ":5",
        "1::2",
        "1:2:3:4",
        "1-2-3",
        "٣",  # Arabic-Indic three: ASCII digits only
        "３m",  # fullwidth three
        "1h30m",
        "1 h",
        "unlimited",
    ],
)
def test_parse_time_limit_refuses_with_one_line_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time limit") as caught:
        parse_time_limit(text)
    message = str(caught.value)
    assert "\n" not in message
    assert ACCEPTED_FORMS in message


def test_parse_time_limit_names_the_problem() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        parse_time_limit("0")
    with pytest.raises(ValueError, match="365 days"):
        parse_time_limit("400d")
    with pytest.raises(ValueError, match="below 60"):
        parse_time_limit("10:75")
    with pytest.raises(ValueError, match="not a time limit"):
        parse_time_limit("soon")


def test_a_newline_in_the_input_stays_out_of_the_message() -> None:
    with pytest.raises(ValueError, match="invalid time limit") as caught:
        parse_time_limit("5\n6")
    assert "\n" not in str(caught.value)


@PROFILE
@given(st.integers(1, int(MAX_TIME_LIMIT)))
def test_property_format_then_parse_round_trips(seconds: int) -> None:
    shown = format_duration(seconds)
    assert parse_time_limit(shown) == seconds


# -- format_duration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "00:00:00"),
        (59.9, "00:00:59"),
        (60, "00:01:00"),
        (3661, "01:01:01"),
        (86399, "23:59:59"),
        (86400, "1-00:00:00"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2-03:04:05"),
        (math.inf, "UNLIMITED"),
    ],
)
def test_format_duration_is_slurms(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_format_duration_refuses_negative_and_nan(bad: float) -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        format_duration(bad)


# -- effective_limit --------------------------------------------------------------------------------

H = 3600.0


@pytest.mark.parametrize(
    ("requested", "token_default", "token_max", "model_default", "model_max", "limit"),
    [
        (None, None, None, None, None, None),  # nothing anywhere: unlimited
        (2 * H, None, None, None, None, 2 * H),  # a request without any maximum stands
        (None, 1 * H, None, 3 * H, None, 1 * H),  # the token's default before the model's
        (None, None, None, 3 * H, None, 3 * H),  # else the model's
        (None, None, 8 * H, None, None, 8 * H),  # no default but a maximum: the maximum
        (None, None, 8 * H, None, 4 * H, 4 * H),  # the smaller maximum
        (None, 10 * H, 8 * H, None, None, 8 * H),  # a default above the maximum is cut to it
        (4 * H, 1 * H, 8 * H, 1 * H, 6 * H, 4 * H),  # a request within both maxima stands
        (6 * H, None, 8 * H, None, 6 * H, 6 * H),  # exactly the maximum is fine
    ],
)
def test_effective_limit(
    requested: float | None,
    token_default: float | None,
    token_max: float | None,
    model_default: float | None,
    model_max: float | None,
    limit: float | None,
) -> None:
    assert effective_limit(requested, token_default, token_max, model_default, model_max) == (limit, None)


@pytest.mark.parametrize(
    ("token_max", "model_max", "owner", "shown"),
    [
        (8 * H, None, "token", "08:00:00"),
        (None, 2 * H, "SDA model", "02:00:00"),
        (3 * H, 2 * H, "SDA model", "02:00:00"),
    ],
)
def test_a_request_above_the_smaller_maximum_is_refused(
    token_max: float | None, model_max: float | None, owner: str, shown: str
) -> None:
    limit, error = effective_limit(9 * H, None, token_max, None, model_max)
    assert limit is None
    assert error is not None
    assert f"{owner}'s maximum {shown}" in error
    assert "\n" not in error


def test_a_non_positive_request_is_refused() -> None:
    assert effective_limit(0.0, None, None, None, None) == (None, "a time limit must be more than 0")


# -- reason codes -------------------------------------------------------------------------------------


def test_the_reason_code_set_is_fixed_and_explained() -> None:
    assert set(REASON_CODES) == {
        "Priority",
        "Resources",
        "ReservedForJob",
        "SdaBusy",
        "NoBackend",
        "NeverFits",
        "ReservedSda",
        "QuotaExceeded",
        "BorrowingLimitReached",
        "Preempting",
        "Starting",
    }
    for code, meaning in REASON_CODES.items():
        assert meaning
        assert "\n" not in meaning
        assert reason_meaning(code if code != "ReservedForJob" else "ReservedForJob:7")


def test_reserved_for_carries_the_job_id() -> None:
    assert reserved_for(42) == "ReservedForJob:42"
    assert split_code("ReservedForJob:42") == ("ReservedForJob", 42)
    assert split_code("Resources") == ("Resources", None)
    assert "job 42" in reason_meaning("ReservedForJob:42")


@pytest.mark.parametrize("bad", ["", "Nope", "ReservedForJob", "Resources:3", "ReservedForJob:x", "ReservedForJob:٣"])
def test_unknown_reason_codes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown scheduler reason code"):
        split_code(bad)


# -- fair share ---------------------------------------------------------------------------------------


def test_decay_halves_usage_every_half_life() -> None:
    assert decay(100.0, 0.0, 60.0) == 100.0
    assert decay(100.0, 60.0, 60.0) == pytest.approx(50.0)
    assert decay(100.0, 180.0, 60.0) == pytest.approx(12.5)
    assert accrue(100.0, 60.0, 60.0, 10.0) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="half-life"):
        decay(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="negative"):
        decay(1.0, -1.0, 10.0)


def test_fairshare_factors_follow_the_classic_formula() -> None:
    # Group 1 used 3/4 of everything with half the shares: F = 2 ** -(0.75 / 0.5); group 2: 2 ** -(0.25 / 0.5).
    factors = fairshare_factors({1: 300.0, 2: 100.0}, {1: 50.0, 2: 50.0})
    assert factors[1] == pytest.approx(2**-1.5)
    assert factors[2] == pytest.approx(2**-0.5)
    assert fairshare_factors({}, {1: 1.0, 2: 3.0}) == {1: 1.0, 2: 1.0}  # nobody used anything
    even = fairshare_factors({1: 25.0, 2: 75.0}, {1: 1.0, 2: 3.0})  # usage exactly as shared
    assert even[1] == pytest.approx(NEUTRAL_FACTOR)
    assert even[2] == pytest.approx(NEUTRAL_FACTOR)
    assert fairshare_factors({1: 5.0}, {1: 0.0, 2: 1.0})[1] == 0.0  # no share: no claim
    with pytest.raises(ValueError, match="finite"):
        fairshare_factors({1: -1.0}, {1: 1.0})


@PROFILE
@given(
    st.dictionaries(st.integers(1, 5), st.floats(0, 1e9), min_size=1),
    st.dictionaries(st.integers(1, 5), st.floats(0.1, 100), min_size=1),
)
def test_property_more_usage_for_the_same_share_never_raises_the_factor(
    usage: dict[int, float], shares: dict[int, float]
) -> None:
    factors = fairshare_factors(usage, shares)
    assert set(factors) == set(shares)
    for a in shares:
        assert 0.0 <= factors[a] <= 1.0
        for b in shares:
            if shares[a] == shares[b] and usage.get(a, 0.0) <= usage.get(b, 0.0):
                assert factors[a] >= factors[b]
