"""``moreh-smi quota``: the token's user-group quotas and quota requests, and ``--request`` to ask for more."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from moreh_tools.grid import Column, render_grid
from moreh_tools.runtime import EXIT_OK, EXIT_USAGE, ToolError

if TYPE_CHECKING:
    from moreh_tools.port import Port
    from state.records import QuotaRequest

PROG = "moreh-smi"
QUOTA_COLUMNS = [
    Column("User Group"),
    Column("Backend Group"),
    Column("Nominal", "right"),
    Column("Granted", "right"),
    Column("Borrow", "right"),
    Column("Used", "right"),
    Column("Borrowed", "right"),
]
REQUEST_COLUMNS = [
    Column("ID", "right"),
    Column("GPUs", "right"),
    Column("Days", "right"),
    Column("Status"),
    Column("Expires"),
    Column("Reason"),
]


def number(text: str, option: str, what: str) -> int:
    """A whole number option (ASCII digits); bad usage otherwise. Zero passes: the SDA Manager refuses it."""
    if not (text.isascii() and text.strip().isdigit()) or len(text.strip()) > 9:
        raise ToolError(f"{PROG}: {option} takes a whole number of {what}, not '{text[:40]}'.", EXIT_USAGE)
    return int(text.strip())


def _when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _request_dict(r: QuotaRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "user_group_id": r.user_group_id,
        "backend_group_id": r.backend_group_id,
        "gpus": r.gpus,
        "days": r.days,
        "reason": r.reason,
        "status": r.status,
        "expires_at": None if r.expires_at is None else datetime.fromtimestamp(r.expires_at).astimezone().isoformat(),
    }


def show(port: Port, as_json: bool) -> int:
    """Print the quotas of the token's user groups and the token's quota requests."""
    from moreh_tools.port import ops

    mine = port.call(ops.QUOTA_MINE)
    if as_json:
        print(
            json.dumps(
                {
                    "quotas": [
                        {
                            "user_group_id": q.quota.user_group_id,
                            "user_group": q.quota.user_group_name,
                            "backend_group_id": q.quota.backend_group_id,
                            "nominal": q.quota.nominal,
                            "granted": q.quota.granted,
                            "borrow": q.quota.borrow,
                            "used": q.used,
                            "borrowed": q.borrowed,
                        }
                        for q in mine.quotas
                    ],
                    "requests": [_request_dict(r) for r in mine.requests],
                },
                indent=2,
            )
        )
        return EXIT_OK
    if not mine.quotas:
        print("No GPU quota limits your user groups: your jobs may use every free GPU.")
    else:
        rows = [
            [
                f"{q.quota.user_group_id} {q.quota.user_group_name}",
                f"{q.quota.backend_group_id} {q.quota.backend_group_name}",
                str(q.quota.nominal),
                str(q.quota.granted),
                str(q.quota.borrow),
                str(q.used),
                str(q.borrowed),
            ]
            for q in mine.quotas
        ]
        print(render_grid(QUOTA_COLUMNS, rows))
    if mine.requests:
        print()
        print("Quota requests:")
        print(
            render_grid(
                REQUEST_COLUMNS,
                [[str(r.id), str(r.gpus), str(r.days), r.status, _when(r.expires_at), r.reason] for r in mine.requests],
            )
        )
    return EXIT_OK


def request(port: Port, gpus: int, days: int, reason: str, as_json: bool) -> int:
    """Send a quota request and say what happens next."""
    from moreh_tools.port import ops

    sent = port.call(ops.QUOTA_REQUEST, gpus=gpus, days=days, reason=reason)
    if as_json:
        print(json.dumps(_request_dict(sent), indent=2))
        return EXIT_OK
    print(
        f"Quota request {sent.id} sent: {sent.gpus} more GPU(s) for {sent.days} day(s) for user group "
        f"{sent.user_group_id} on backend group {sent.backend_group_id}; an admin approves or rejects it "
        "('show quota request')."
    )
    return EXIT_OK
