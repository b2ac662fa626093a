"""Starting the dashboard: check the terminal, the options and the token, then hand over to Textual.

``moreh-smi --dashboard`` calls :func:`run_dashboard`; ``python -m moreh_tools.dashboard`` calls :func:`main`.
Textual is imported only after every check passed, so a refusal is quick and prints one line.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from moreh_tools.runtime import EXIT_OK, EXIT_USAGE, ToolError, run

PROG = "moreh-smi --dashboard"
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.2, 3600.0
NOT_A_TERMINAL = (
    "moreh-smi --dashboard needs a terminal (stdin and stdout); for plain output run 'moreh-smi' "
    "(or 'moreh-smi --json')."
)


def parse_interval(text: str) -> float:
    """Seconds between polls, or ToolError with how to write it."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        raise ToolError(
            f"{PROG}: --interval takes seconds from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}, e.g. --interval 2 "
            f"(got '{text}').",
            EXIT_USAGE,
        )
    return value


def on_a_terminal() -> bool:
    """Whether stdin and stdout are a terminal (Textual needs both)."""
    return sys.stdout.isatty() and sys.stdin.isatty()


def run_dashboard(*, interval: float = 1.0, read_only: bool = False) -> int:
    """Run the dashboard until the user quits; refuse (ToolError) without a terminal or a usable token."""
    from moreh_tools import identity

    if not on_a_terminal():
        raise ToolError(NOT_A_TERMINAL)
    from moreh_tools.dashboard.data import PortSource
    from moreh_tools.port import open_port, ops

    try:
        token: str | None = identity.find_token()
    except identity.TokenNotGiven:
        token = None
    port = open_port(token, tool=PROG)
    if token is None and not port.has_state():  # no state here: a user who forgot the token, not its admin
        raise ToolError(
            "SDA token is not given. Set MOREH_SDA_TOKEN (or the token file) for your devices, or run on the "
            "master with access to the state (MOREH_HOME) for the admin view."
        )
    access = port.call(ops.DASHBOARD_ACCESS)
    from moreh_tools.dashboard.app import DashboardApp

    DashboardApp(PortSource(port, access), interval=interval, read_only=read_only).run()
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ToolError(f"{PROG}: {message} (see 'python -m moreh_tools.dashboard --help').", EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    """``python -m moreh_tools.dashboard [--interval S] [--read-only]``."""
    parser = _Parser(prog="python -m moreh_tools.dashboard", description="The moreh-smi live dashboard.")
    parser.add_argument("--interval", default="1", help="seconds between refreshes (default 1)")
    parser.add_argument("--read-only", action="store_true", help="hide every action (release, priority, model)")
    args_list = sys.argv[1:] if argv is None else argv

    def body() -> int:
        args = parser.parse_args(args_list)
        return run_dashboard(interval=parse_interval(args.interval), read_only=args.read_only)

    from moreh_tools.smi.common import unknown_token

    return run(PROG, body, unknown_token=unknown_token)
