"""A client of a running ``sdamanager`` for the daemon crash test (tests/test_daemon_faults.py).

Run as ``python tests/daemon_client.py HOME ACK_FILE TOKEN SEED``: until SIGTERM, adds a device to
``TOKEN`` (``device_add``), removes one (``device_remove``) or sets its priority through the admin
console (``console``), through the real port (the daemon's socket, or the state file while no daemon
runs). Each outcome is one fsynced line of ``ACK_FILE``: ``try priority T N`` before a priority change;
``priority T N`` / ``sda T`` / ``rm T`` once acknowledged; ``unsure KIND T`` when the daemon died after
the request went out (it may or may not have committed); ``refused KIND MESSAGE`` for any other error.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path


def main() -> int:
    home, ack_path, token, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.environ["MOREH_HOME"] = str(home)
    from moreh_tools.port import open_port, ops
    from state.errors import StateError

    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    log = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(line: str) -> None:
        os.write(log, (line + "\n").encode())
        os.fsync(log)

    rng = random.Random(seed)
    user = open_port(token, tool="crash-client")
    admin = open_port(None, tool="crash-client")  # the daemon's own uid: the state's owner
    while not stop:
        kind = rng.choice(("sda", "rm", "priority"))
        priority = rng.randrange(0, 10)
        if kind == "priority":
            write(f"try priority {token} {priority}")
        try:
            if kind == "sda":
                user.call(ops.DEVICE_ADD, model="1")
            elif kind == "rm":
                owned = user.call(ops.DEVICE_OWNED)
                if len(owned.ids) < 2:
                    continue  # the device the test made stays
                user.call(ops.DEVICE_REMOVE, device=str(max(owned.ids)))
            else:
                result = admin.call(ops.CONSOLE, line=f"update token priority {token} {priority}")
                if result.exit_code != 0:
                    write(f"refused console {result.stderr.strip()!r}")
                    continue
            write(f"{kind} {token}" if kind != "priority" else f"priority {token} {priority}")
        except StateError as exc:
            text = str(exc)
            if "stopped while handling" in text:
                write(f"unsure {kind} {token}")
            elif "the most this token may have" in text:
                continue  # the token holds as many devices as it may: a refusal the test expects
            else:
                write(f"refused {type(exc).__name__} {text!r}")
        # A new port per call now and then: some calls meet a fresh daemon or the file on a new connection.
        if rng.random() < 0.2:
            user.close()
            admin.close()
            user = open_port(token, tool="crash-client")
            admin = open_port(None, tool="crash-client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
