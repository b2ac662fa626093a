"""``GET /metrics``: the latest sampled GPU metrics as Prometheus text (exposition format 0.0.4).

One gauge per metric of ``/api/signal`` (``moreh_gpu_temp_gpu_celsius`` ...), labelled by node (``instance``,
``ip``), ``device_index`` and ``gpu_type``. It carries no token data, so a request arriving on a loopback address
needs no token (a scraper on the same host); one arriving on any other address needs a token of any level.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from moreh_tools.api.errors import NOT_FOUND, ApiError
from state import views
from state.errors import StateError

router = APIRouter(tags=["Hardware"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric name, devices column, help text)
GAUGES = (
    ("moreh_gpu_temp_gpu_celsius", "temp_gpu", "GPU core temperature (temp_gpu)"),
    ("moreh_gpu_temp_mem_celsius", "temp_mem", "GPU memory temperature (temp_mem)"),
    ("moreh_gpu_util_gpu_percent", "util_gpu", "GPU utilisation (util_gpu)"),
    ("moreh_gpu_util_mem_percent", "util_mem", "GPU memory bandwidth utilisation (util_mem)"),
    ("moreh_gpu_memory_used_mib", "memory_used_mib", "GPU memory in use, MiB (usage)"),
    ("moreh_gpu_memory_total_mib", "memory_total_mib", "GPU memory in total, MiB"),
)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _loopback_client(request: Request) -> bool:
    from moreh_tools.api.server import is_loopback

    server: tuple[str, int] | None = request.scope.get("server")
    return server is not None and is_loopback(str(server[0]))


def _require_token_off_loopback(request: Request) -> None:
    if _loopback_client(request):
        return
    from moreh_tools.api.auth import presented_token
    from moreh_tools.api.tokens import lookup_access_level

    token = presented_token(request)
    if token is None or lookup_access_level(request.app, token) is None:
        raise ApiError(NOT_FOUND, "Invalid token: /metrics off loopback needs a token (any level).", 401)


@router.get("/metrics", summary="Prometheus text of the latest GPU samples", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """The latest sample of every device as Prometheus gauges, plus when each was taken."""
    _require_token_off_loopback(request)
    try:
        with request.app.state.store.reading() as s:
            rows = views.device_metrics(s)
    except StateError as exc:
        return PlainTextResponse(f"# state unavailable: {exc}\n", status_code=503, media_type=CONTENT_TYPE)
    lines: list[str] = []
    for name, column, text in GAUGES:
        lines += [f"# HELP {name} {text}.", f"# TYPE {name} gauge"]
        for row in rows:
            value = getattr(row, column)
            if value is None:
                continue
            labels = (
                f'instance="{_label(row.host)}",ip="{_label(row.ip)}",device_index="{row.idx}",'
                f'gpu_type="{_label((row.name or "GPU").split()[0])}"'
            )
            lines.append(f"{name}{{{labels}}} {value}")
    lines += ["# HELP moreh_api_up The SDA Manager API answers.", "# TYPE moreh_api_up gauge", "moreh_api_up 1"]
    lines += [
        "# HELP moreh_api_scrape_timestamp_seconds When this page was made.",
        "# TYPE moreh_api_scrape_timestamp_seconds gauge",
        f"moreh_api_scrape_timestamp_seconds {time.time():.3f}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)
