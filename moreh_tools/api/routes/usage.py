"""Usage endpoint (part A.2, 51): how many devices each token used over a period.

The figures count devices held by jobs (running ones up to now): ``min`` and ``max`` are the fewest and most
devices a token held at once during the period, ``average`` its device-seconds divided by the period's seconds,
and the percentages divide them by ``total_devices``, the devices the registered backends have.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_self_or_admin
from moreh_tools.api.errors import SYNTAX, ApiError
from moreh_tools.api.params import param
from moreh_tools.api.views import TokenViews, store_of
from state.reports import UsageSpan, device_total, usage_spans

router = APIRouter(tags=["Usage"])


def _moment(name: str, raw: str) -> datetime:
    text = raw.strip().replace("T", " ")
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form)
        except ValueError:
            continue
    raise ApiError(SYNTAX, f"SyntaxError. Parameter '{name}' must be a time like 2024-01-31 09:30:00, got '{raw[:40]}'.")


def held_at_once(spans: Iterable[UsageSpan], begin: datetime, end: datetime) -> tuple[int, int]:
    """The fewest and the most spans open at the same moment inside [begin, end)."""
    deltas: dict[datetime, int] = {}
    for span in spans:
        if span.end > span.start:
            deltas[span.start] = deltas.get(span.start, 0) + 1
            deltas[span.end] = deltas.get(span.end, 0) - 1
    moments = sorted(deltas)
    lowest = 0 if not moments or moments[0] > begin else None
    highest = 0
    open_now = 0
    for n, moment in enumerate(moments):
        open_now += deltas[moment]
        following = moments[n + 1] if n + 1 < len(moments) else end
        if moment < end and following > moment:
            highest = max(highest, open_now)
            lowest = open_now if lowest is None else min(lowest, open_now)
    return lowest or 0, highest


def _figures(spans: list[UsageSpan], begin: datetime, end: datetime) -> dict[str, Any]:
    low, high = held_at_once(spans, begin, end)
    device_seconds = sum((s.end - s.start).total_seconds() for s in spans)
    period = (end - begin).total_seconds()
    return {
        "min": low,
        "max": high,
        "average": round(device_seconds / period, 4),
        "deviceSeconds": round(device_seconds, 3),
        "jobs": len({s.job_id for s in spans}),
    }


@router.get("/api/usage", summary="Devices used per token over a period")
def get_usage(request: Request, caller: CallerDep) -> Any:
    """Device usage between ``starttime`` and ``endtime`` (``YYYY-MM-DD hh:mm:ss``, local time).

    ``token`` narrows it to one token (a USER always gets only its own).
    """
    begin = _moment("starttime", param(request, "starttime"))
    end = _moment("endtime", param(request, "endtime"))
    token = param(request, "token", required=False)
    if end <= begin:
        raise ApiError(SYNTAX, "SyntaxError. Parameter 'endtime' must come after 'starttime'.")
    if not caller.reads_all:
        token = token or caller.token
        require_self_or_admin(caller, token)
    with store_of(request).reading() as s:
        if token is not None:
            s.tokens.get(token)  # 601 for an unknown token
        spans = usage_spans(s, begin, end, token)
        devices = device_total(s)
        by_token: dict[str, list[UsageSpan]] = {}
        for span in spans:
            by_token.setdefault(span.token, []).append(span)
        views = TokenViews(s, caller, set(by_token) | ({token} if token else set()))
        total = _figures(spans, begin, end)
        rows = sorted(
            ({"token": views.token(t, with_groups=False), **_figures(held, begin, end)} for t, held in by_token.items()),
            key=lambda row: -float(row["deviceSeconds"]),
        )
        total_token = views.token(token, with_groups=False) if token else None

    def share(value: float) -> float:
        return round(100.0 * value / devices, 4) if devices else 0.0

    return {
        "code": "SUCCESS",
        "total_usage": {
            "token": total_token,
            "min": total["min"],
            "max": total["max"],
            "average": total["average"],
            "min_percentage": share(total["min"]),
            "max_percentage": share(total["max"]),
            "average_percentage": share(total["average"]),
            "total_devices": devices,
            "deviceSeconds": total["deviceSeconds"],
            "jobs": total["jobs"],
        },
        "usage_list": rows,
        "starttime": begin.strftime("%Y-%m-%d %H:%M:%S"),
        "endtime": end.strftime("%Y-%m-%d %H:%M:%S"),
    }
