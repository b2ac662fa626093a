"""Console housekeeping: help, exit, clear, and the event log."""

from __future__ import annotations

from moreh_tools.grid import Column
from moreh_tools.smclient.args import to_count
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command, listing

DEFAULT_EVENT_COUNT = 100
_HELP = "Print help message (same command: help, h)"
_EXIT = "Exit application (same command: exit, quit, q)"


class ExitRequested(Exception):
    """Raised by exit/quit/q; the console loop stops."""


class ClearRequested(Exception):
    """Raised by clear; the console loop clears the screen."""


@command("help", _HELP)
@command("h", _HELP)
def show_help(ctx: Context, args: list[str]) -> Output:
    return Message(listing())


@command("exit", _EXIT)
@command("quit", _EXIT)
@command("q", _EXIT)
def exit_console(ctx: Context, args: list[str]) -> Output:
    raise ExitRequested


@command("clear", "Clear screen")
def clear_screen(ctx: Context, args: list[str]) -> Output:
    raise ClearRequested


def time_text(value: object) -> str:
    """A timestamp the way the seeds print it: ``2022-09-14 23:14:10.14``."""
    text = str(value)
    if "." in text:
        head, frac = text.split(".", 1)
        return f"{head}.{frac[:2]}"
    return f"{text}.00" if text else ""


@command("show eventlog", "Print list of Event Log list", extra_args=1)
def show_eventlog(ctx: Context, args: list[str]) -> Output:
    count = to_count(args[0], "event count") if args else DEFAULT_EVENT_COUNT
    with ctx.read() as s:
        events = s.events.tail(count)
    return Table(
        [
            Column("ID", "right"),
            Column("Time"),
            Column("Action"),
            Column("Token"),
            Column("Command"),
            Column("Detail"),
        ],
        [[str(e.id), time_text(e.time), e.action, e.token, e.command, e.detail] for e in events],
        [
            {
                "id": e.id,
                "time": e.time.isoformat(),
                "action": e.action,
                "token": e.token,
                "command": e.command,
                "detail": e.detail,
                "origin": e.origin,  # who asked: the peer's uid (SO_PEERCRED) and the way in
            }
            for e in events
        ],
    )
