"""IPMI power control through the real ``ipmitool`` (a subprocess with a timeout); failures become 603.

The password goes to ipmitool through the environment (``-E`` reads ``IPMI_PASSWORD``), never on its command line
where every local user could read it in ``ps``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from moreh_tools.api.errors import IPMI, ApiError

POWER_COMMANDS = ("on", "off", "cycle", "reset", "status")
DEFAULT_TIMEOUT_S = 15.0


def timeout_s() -> float:
    """Seconds one ipmitool run may take: ``MOREH_IPMI_TIMEOUT`` (default 15)."""
    try:
        value = float(os.environ.get("MOREH_IPMI_TIMEOUT", "") or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value <= 300 else DEFAULT_TIMEOUT_S


def tool() -> str | None:
    """The ipmitool to run (``MOREH_IPMITOOL`` names another), or None when it is not installed."""
    return shutil.which(os.environ.get("MOREH_IPMITOOL", "ipmitool"))


def _failure(message: str) -> ApiError:
    return ApiError(IPMI, message, 502)


def power(address: str, user: str, password: str, command: str) -> str:
    """Run ``ipmitool -I lanplus -H address -U user -E chassis power command``; its output, or 603."""
    if command not in POWER_COMMANDS:
        raise ValueError(f"unknown power command {command!r}")
    program = tool()
    if program is None:
        raise _failure("Unable to run ipmitool: it is not installed on the SDA Manager host (install ipmitool).")
    argv = [program, "-I", "lanplus", "-H", address, "-U", user, "-E", "chassis", "power", command]
    env = {**os.environ, "IPMI_PASSWORD": password}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s(), check=False)
    except subprocess.TimeoutExpired:
        raise _failure(
            f"Unable to establish IPMI v1.5 / RMCP session: ipmitool timed out after {timeout_s():g} s"
        ) from None
    except OSError as exc:
        raise _failure(f"Unable to run ipmitool: {exc.strerror}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise _failure(lines[0] if lines else f"ipmitool failed with exit status {done.returncode}")
    return done.stdout.strip()
