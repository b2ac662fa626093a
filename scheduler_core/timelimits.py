"""Job time limits: Slurm's ``--time`` syntax, Slurm's duration display, and which limit applies.

A time limit is a number of seconds (a float, always > 0); ``None`` means unlimited. The scheduler
plans with limits (a running job is assumed to end at ``start_time + time_limit``), so a job that
runs past its limit must be ended by whoever enforces limits, not by this module.
"""

from __future__ import annotations

import math
import re

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MAX_TIME_LIMIT = 365 * DAY
"""The longest limit ``parse_time_limit`` accepts; anything longer is a typo, not a plan."""

ACCEPTED_FORMS = "M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (Slurm's --time) or 90s, 30m, 2h, 1d"

_NUM = r"([0-9]{1,12})"  # ASCII digits only; 12 keeps int() cheap and still overflows the 365-day cap
_UNIT = re.compile(rf"{_NUM}([smhd])", re.ASCII)
_CLOCK = re.compile(rf"{_NUM}(?::{_NUM})?(?::{_NUM})?", re.ASCII)
_DAYS = re.compile(rf"{_NUM}-{_NUM}(?::{_NUM})?(?::{_NUM})?", re.ASCII)
_UNIT_SECONDS = {"s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}


def _refuse(text: str, why: str) -> ValueError:
    return ValueError(f"invalid time limit {text!r}: {why}; use {ACCEPTED_FORMS}, more than 0 and at most 365 days")


def parse_time_limit(text: str) -> float:
    """Parse a time limit the way Slurm's ``--time`` does, plus unit forms, into seconds.

    Accepted: ``M`` (minutes), ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` and ``90s``,
    ``30m``, ``2h``, ``1d``. The first field may be any size (``90`` is 90 minutes, ``100:00:00``
    100 hours); later fields must stay below 60 (minutes, seconds) or 24 (hours after ``D-``).
    Surrounding spaces are ignored; only ASCII digits count.

    Args:
        text: what the user typed.

    Returns:
        The limit in seconds, more than 0 and at most :data:`MAX_TIME_LIMIT`.

    Raises:
        ValueError: malformed, zero (``--time 0`` is refused: it would mean "no time at all", not
            "unlimited"), negative or more than 365 days; the message is one line naming the accepted forms.
    """
    raw = text.strip()
    seconds: float
    if m := _UNIT.fullmatch(raw):
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    elif m := _DAYS.fullmatch(raw):
        days, hours, minutes, secs = (int(g) if g is not None else 0 for g in m.groups())
        if hours >= 24 or minutes >= 60 or secs >= 60:
            raise _refuse(text, "hours must be below 24 and minutes and seconds below 60")
        seconds = days * DAY + hours * HOUR + minutes * MINUTE + secs
    elif m := _CLOCK.fullmatch(raw):
        parts = [int(g) for g in m.groups() if g is not None]
        if any(p >= 60 for p in parts[1:]):
            raise _refuse(text, "minutes and seconds after the first field must be below 60")
        if len(parts) == 1:
            seconds = parts[0] * MINUTE
        elif len(parts) == 2:
            seconds = parts[0] * MINUTE + parts[1]
        else:
            seconds = parts[0] * HOUR + parts[1] * MINUTE + parts[2]
    else:
        raise _refuse(text, "not a time limit")
    if seconds <= 0:
        raise _refuse(text, "a time limit must be more than 0")
    if seconds > MAX_TIME_LIMIT:
        raise _refuse(text, "more than 365 days")
    return seconds


def format_duration(seconds: float) -> str:
    """Show a duration as Slurm does: ``D-HH:MM:SS`` from one day on, else ``HH:MM:SS``.

    Fractions of a second are dropped; an infinite duration (no limit) reads ``UNLIMITED``.

    Raises:
        ValueError: ``seconds`` is negative or NaN.
    """
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a duration must be 0 or more seconds, not {seconds}")
    if math.isinf(seconds):
        return "UNLIMITED"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def effective_limit(
    requested: float | None,
    token_default: float | None,
    token_max: float | None,
    model_default: float | None,
    model_max: float | None,
) -> tuple[float | None, str | None]:
    """Decide the time limit a job runs under, from its request and the token's and model's settings.

    The rule (every value in seconds, None = not set):

    * The maximum is the smaller of ``token_max`` and ``model_max``, whichever are set (none set: no maximum).
    * A request above the maximum is refused (the job is not queued); a request at or below it is the limit.
    * Without a request the limit is the token's default, else the model's default, else the maximum
      (a job may not escape a maximum by asking for nothing); a default above the maximum is cut to it.
    * Nothing set anywhere: the job is unlimited (None), as every job was before time limits.

    Args:
        requested: what the user asked for (``--time``), already parsed.
        token_default: the token's default limit.
        token_max: the token's maximum limit.
        model_default: the SDA model's default limit.
        model_max: the SDA model's maximum limit.

    Returns:
        ``(limit, None)`` with the limit (None: unlimited), or ``(None, error)`` with a one-line reason
        to refuse the job.
    """
    maxima = [(value, who) for value, who in ((token_max, "token"), (model_max, "SDA model")) if value is not None]
    maximum, owner = min(maxima, key=lambda pair: pair[0]) if maxima else (None, "")
    if requested is not None:
        if math.isnan(requested) or requested <= 0:
            return None, "a time limit must be more than 0"
        if maximum is not None and requested > maximum:
            return None, (
                f"the time limit {format_duration(requested)} is above the {owner}'s maximum "
                f"{format_duration(maximum)}; ask for {format_duration(maximum)} or less"
            )
        return requested, None
    default = token_default if token_default is not None else model_default
    if default is None:
        return maximum, None
    return (default if maximum is None else min(default, maximum)), None
