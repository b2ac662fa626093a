"""``moreh_smclient`` against a remote SDA Manager: each line runs there, its output is printed here."""

from __future__ import annotations

import shlex
import sys
from typing import TextIO

from moreh_tools.remote.client import RemoteError, connect

SMCLIENT_PATH = "/api/smclient/command"
EXIT_FAILED, EXIT_USAGE = 1, 2
_EXIT, _CLEAR = "exit", "clear"


def run_remote_line(line: str, *, json_output: bool = False, out: TextIO | None = None) -> int:
    """Run one console line on the SDA Manager; print what it printed; return its exit status.

    ``exit``/``clear`` raise the same exceptions the local console loop handles.
    """
    from moreh_tools.messages import one_line

    out = out or sys.stdout
    try:
        if not shlex.split(line, comments=True):
            return 0
    except ValueError:
        pass  # the server says what is wrong with the quoting, exactly as the local console does
    try:
        reply = connect().call("POST", SMCLIENT_PATH, body={"line": line, "json": json_output})
    except RemoteError as exc:
        print(f"Error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if not isinstance(reply, dict):
        print("Error: The SDA Manager sent an unexpected reply to a console line.", file=sys.stderr)
        return EXIT_FAILED
    if reply.get("stdout"):
        out.write(str(reply["stdout"]))
    if reply.get("stderr"):
        sys.stderr.write(str(reply["stderr"]))
    action = reply.get("action")
    if action in (_EXIT, _CLEAR):
        from moreh_tools.smclient.commands.system import ClearRequested, ExitRequested

        raise ExitRequested if action == _EXIT else ClearRequested
    code = reply.get("exitCode")
    return code if isinstance(code, int) else EXIT_FAILED
