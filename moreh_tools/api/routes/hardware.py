"""Hardware / Signal: the sampled GPU metrics per node and device (``GET /api/signal``).

The daemon appends every sample to ``device_samples`` (state/backends.py, bounded retention); this module reads
that history. ``/metrics`` (metrics.py) serves the latest sample of the same metrics as Prometheus text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import ApiCaller, CallerDep
from moreh_tools.api.errors import NOT_FOUND, SIGNAL, SYNTAX, ApiError
from moreh_tools.api.params import param
from state import views
from state.errors import StateError
from state.session import Session

router = APIRouter(tags=["Hardware"])
SIGNAL_PARAMS = ("temp_gpu", "temp_mem", "util_gpu", "util_mem", "usage")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PERIOD = re.compile(r"^(?P<count>\d{1,9})?(?P<unit>ms|s|m|h|d|w|y)$")
_COLUMNS = {"temp_gpu": 6, "temp_mem": 7, "util_gpu": 4, "util_mem": 5, "usage": 3}
EXPORTER_JOB = "sdamanager"


@dataclass(frozen=True)
class Node:
    """A backend as a metrics source."""

    id: int
    host: str
    ip: str
    ipmi_ip: str | None


def parse_period(text: str) -> float:
    """Seconds in ``period``: a unit (``ms s m h d w y``) or a count and a unit (``5m``); 600 otherwise."""
    match = _PERIOD.match(text.strip())
    if not match:
        raise ApiError(
            SYNTAX,
            f"SyntaxError. Parameter 'period' must be a time unit (ms, s, m, h, d, w, y) optionally after a count "
            f"(e.g. 5m), got '{text[:40]}'.",
        )
    return int(match["count"] or 1) * UNIT_SECONDS[match["unit"]]


def all_nodes(s: Session) -> list[Node]:
    """Every backend with its IPMI address."""
    return [Node(n.id, n.host, n.ip, n.ipmi_ip) for n in views.nodes(s)]


def find_backends(s: Session, node: str) -> list[Node]:
    """The backends ``node`` names (its IP, IPMI IP or host name); 601 when none does."""
    found = [n for n in all_nodes(s) if node in (n.ip, n.ipmi_ip, n.host)]
    if not found:
        raise ApiError(NOT_FOUND, f"Node '{node[:80]}' is not known: give a backend's IP, IPMI IP or name.", 404)
    return found


def visible_devices(s: Session, caller: ApiCaller) -> set[tuple[int, int]] | None:
    """The (backend, device) pairs whose metrics ``caller`` may read: None for all (ADMIN, DEVELOPER).

    A USER sees the devices its SDAs hold now (reserved, or allocated to its jobs).
    """
    if caller.reads_all:
        return None
    return {(d.backend_id, d.index) for sda in s.sdas.of_token(caller.token) for d in sda.devices}


def gpu_type(name: str | None) -> str:
    """The vendor word of a device name (``NVIDIA H100 ...`` → ``NVIDIA``), ``GPU`` when unknown."""
    return (name or "GPU").split()[0]


def _metric(node: Node, index: int, name: str | None, param_name: str) -> dict[str, str]:
    return {
        "__name__": "gpu_info",
        "device_index": str(index),
        "gpu_type": gpu_type(name),
        "instance": node.host,
        "ip": node.ip,
        "job": EXPORTER_JOB,
        "param_name": param_name,
    }


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


@router.get("/api/signal", summary="Sampled GPU metrics per node and device")
def signal(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """The sampled ``temp_gpu, temp_mem, util_gpu, util_mem, usage`` (GPU memory used, MiB) per node and device.

    One entry per (node, device, metric): ``value`` is the latest sample ``[unix time, "value"]``; ``values`` holds
    every sample of the last ``period`` (at least the latest). Without ``period`` only the latest sample is given.
    """
    period_text = param(request, "period", str, required=False)
    node = param(request, "node", str, required=False)
    param_name = param(request, "param_name", str, required=False)
    window = parse_period(period_text) if period_text else 0.0
    if param_name is not None and param_name not in SIGNAL_PARAMS:
        raise ApiError(
            SYNTAX,
            f"SyntaxError. Parameter 'param_name' must be one of {', '.join(SIGNAL_PARAMS)}, got '{param_name}'.",
        )
    wanted = SIGNAL_PARAMS if param_name is None else (param_name,)
    try:
        with request.app.state.store.reading() as s:
            nodes = find_backends(s, node) if node else all_nodes(s)
            visible = visible_devices(s, caller)
            rows = views.sample_history(s, [n.id for n in nodes], time.time() - window)
            names = views.device_names(s)
    except StateError as exc:
        raise ApiError(SIGNAL, f"The sample history could not be read: {exc}", 503) from None
    by_id = {n.id: n for n in nodes}
    series: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for row in rows:
        key = (int(row[1]), int(row[2]))
        if visible is None or key in visible:
            series.setdefault(key, []).append(row)
    result: list[dict[str, Any]] = []
    for (backend_id, index), samples in sorted(series.items()):
        for name in wanted:
            column = _COLUMNS[name]
            points = [[round(r[0], 3), _number(r[column])] for r in samples if r[column] is not None]
            if not points:
                continue
            result.append(
                {
                    "metric": _metric(by_id[backend_id], index, names.get((backend_id, index)), name),
                    "value": points[-1],
                    "values": points,
                }
            )
    return result


