"""Entry point of ``moreh-run``: check the arguments and the command, then hand over to :mod:`.launch`.

Bad usage exits 2, a command that cannot be found 127 and one that cannot be executed 126 (the shell's
conventions), each with one line and nothing queued.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import NoReturn

from moreh_tools import __version__
from moreh_tools.launcher.request import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    PROG,
    LaunchError,
    Request,
)

USAGE = "moreh-run [--token T] [--sda ID] [--priority P] [-t LIMIT] [--requeue] [--] COMMAND..."
_VALUE_OPTIONS = ("--token", "--sda", "--priority", "-t", "--time")
SDA_ID_MAX = 2**31 - 1  # ids are 32-bit in the state


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LaunchError(f"{message}; usage: {USAGE}", EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        allow_abbrev=False,
        description=(
            "Run COMMAND on the GPUs of your SDA. The job waits in the SDA Manager's queue until the devices "
            "are free, then COMMAND runs with CUDA_VISIBLE_DEVICES set to exactly those GPUs and moreh-run exits "
            "with its exit status. Signals sent to moreh-run reach COMMAND."
        ),
        epilog=(
            "The token comes from --token, else MOREH_SDA_TOKEN, else the file MOREH_TOKEN_FILE (default "
            "/etc/moreh/token); the SDA from --sda, else MOREH_VISIBLE_DEVICE, else the token's current SDA. "
            "Example: moreh-run -- python train.py --epochs 3"
        ),
    )
    parser.add_argument("--token", metavar="T", help="the SDA token to run as")
    parser.add_argument("--sda", metavar="ID", type=int, help="the SDA (device id in moreh-smi) to run on")
    parser.add_argument(
        "--priority", metavar="P", type=int, help="the job's priority, -99..99 (default: the token's priority)"
    )
    parser.add_argument(
        "-t",
        "--time",
        metavar="LIMIT",
        help="the job's time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (Slurm's --time) or 90s, 30m, 2h, 1d "
        "(default: the token's or SDA model's default, else unlimited); at the limit the job gets SIGTERM, then "
        "SIGKILL after MOREH_RELEASE_GRACE, and moreh-run exits 143",
    )
    parser.add_argument(
        "--requeue",
        action="store_true",
        help="if the job is preempted (its user group borrowed the GPUs), queue it again with its original "
        "request time and run it again",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} (moreh-tools) {__version__}")
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``moreh-run``'s own options from COMMAND: the command starts at ``--`` or the first non-option."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            return argv[:index], argv[index + 1 :]
        if not arg.startswith("-") or arg == "-":
            return argv[:index], argv[index:]
        index += 2 if arg in _VALUE_OPTIONS else 1
    return argv, []


def parse(argv: list[str]) -> Request:
    """Turn the arguments into a request; raise :class:`LaunchError` (usage) for bad ones."""
    options, command = split_argv(argv)
    ns = _parser().parse_args(options)
    from state.records import PRIORITY_MAX, PRIORITY_MIN

    if ns.priority is not None and not PRIORITY_MIN <= ns.priority <= PRIORITY_MAX:
        raise LaunchError(
            f"priority {ns.priority} is out of range: use an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", EXIT_USAGE
        )
    if ns.sda is not None and not 0 <= ns.sda <= SDA_ID_MAX:
        raise LaunchError(f"SDA id {ns.sda} is not valid: use one of your SDA ids (see 'moreh-smi')", EXIT_USAGE)
    if not command or not command[0]:
        raise LaunchError(f"no command to run; usage: {USAGE}", EXIT_USAGE)
    limit = None
    if ns.time is not None:
        from scheduler_core.timelimits import parse_time_limit

        try:
            limit = parse_time_limit(ns.time)
        except ValueError as exc:
            raise LaunchError(str(exc), EXIT_USAGE) from None
    return Request(ns.token, ns.sda, ns.priority, tuple(command), limit, ns.requeue)


def _sda_from_env() -> int | None:
    raw = os.environ.get("MOREH_VISIBLE_DEVICE", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > SDA_ID_MAX:  # "²".isdigit(), but int("²") fails
        raise LaunchError(
            f"MOREH_VISIBLE_DEVICE={raw!r} is not an SDA id; set it to one of your SDA ids (see 'moreh-smi') or unset it"
        )
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    """Run ``moreh-run`` and return its exit status (the command's, when it ran)."""
    from moreh_tools.runtime import exit_now, run

    args = sys.argv[1:] if argv is None else argv
    code = run(PROG, lambda: _main(args), prefix=f"{PROG}: ", unknown_token=unknown_token)
    if argv is None:  # the console script: the job's end is recorded; its watcher thread may still be reading
        exit_now(code)
    return code


def unknown_token() -> str:
    """The runtime's line for a token the SDA Manager does not know."""
    return (
        "moreh::InvalidToken. The token is not known to the SDA Manager; check --token, MOREH_SDA_TOKEN or the "
        "token file (MOREH_TOKEN_FILE, default /etc/moreh/token)."
    )


def _main(args: list[str]) -> int:
    request = parse(args)
    path = _executable(request.command[0])
    from moreh_tools.identity import TokenNotGiven, find_token

    try:
        token = find_token(request.token)
    except TokenNotGiven as exc:
        raise LaunchError(
            f"{exc} Pass --token, set MOREH_SDA_TOKEN, or put it in the file named by MOREH_TOKEN_FILE "
            "(default /etc/moreh/token)."
        ) from None
    sda_id = request.sda if request.sda is not None else _sda_from_env()
    from moreh_tools.launcher.launch import Launch

    return Launch(request, path, token, sda_id).run()


def _executable(name: str) -> str:
    """The command's path, or LaunchError 127 (not found) / 126 (not executable), as a shell says."""
    found = shutil.which(name)
    if found is not None:
        return found
    if os.sep in name:
        if not os.path.exists(name):
            raise LaunchError(f"command not found: {name}", EXIT_NOT_FOUND)
        if os.path.isdir(name):
            raise LaunchError(f"cannot run {name}: it is a directory", EXIT_CANNOT_EXECUTE)
        raise LaunchError(f"cannot run {name}: permission denied (not executable)", EXIT_CANNOT_EXECUTE)
    raise LaunchError(f"command not found: {name}", EXIT_NOT_FOUND)
