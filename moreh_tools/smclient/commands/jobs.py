"""Job queue commands: the seeds list them in ``help``; they need the scheduler (issue 3)."""

from __future__ import annotations

from moreh_tools.smclient.args import UsageError
from moreh_tools.smclient.output import Output
from moreh_tools.smclient.registry import Context, command

_PENDING: tuple[tuple[str, str, str | None], ...] = (
    ("get history feid", "Get job info in job histroy", "get history feid {frontend id}"),
    (
        "get history token",
        "Get job info in job histroy",
        "get history token {token} {count of history : optional}",
    ),
    ("get job feid", "Get job info in job queue", "get job feid {frontend id}"),
    ("get job token", "Get job info in job queue", "get job token {token}"),
    ("release", "Release Device", "release {[token | fronend id]} {SDA ID : optional}"),
    ("release all", "Release All Device", None),
    ("show history", "Print list of Job history list", "show history {count of history : optional}"),
    (
        "show history device",
        "Print list of Job history list with device info",
        "show history device {count of history : optional}",
    ),
    ("show job", "Print list of Job list", "show job {status of job : optional}"),
    (
        "show usage",
        "Print Device Usage",
        "show usage {begin date [YYYY-MM-DD]} {begin time [hh:mm:ss]} {end date [YYYY-MM-DD]} {end time [hh:mm:ss]} "
        "{token : optional}",
    ),
    ("update job priority", "Update Job Priority", "update job priority {frontend id} {priority}"),
)


def _not_yet(name: str) -> None:
    @command(name, *next(d for d in _PENDING if d[0] == name)[1:])
    def pending(ctx: Context, args: list[str]) -> Output:
        raise UsageError(f"'{name}' needs the job scheduler, which this moreh-tools version does not have yet.")


for _name, _desc, _usage in _PENDING:
    _not_yet(_name)
