"""Opt-in load measurements: with MOREH_LOCK_STATS set, state operations append their timings to that file.

Read by benchmarks/bench_soak.py and tests/test_soak.py. Unset (always, in normal use) it costs one
environment lookup per state access.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LOCK_STATS_VAR = "MOREH_LOCK_STATS"


def record_stat(kind: str, seconds: float, started: float | None = None) -> None:
    """Append ``kind seconds program start`` to the file MOREH_LOCK_STATS names, if it is set (for load tests).

    Kinds: ``wait`` (taking the state lock), ``hold`` (holding it), ``pass`` (one scheduling pass);
    ``start`` is the Unix time it began (default: ``seconds`` ago).
    One ``write`` of a short line to an O_APPEND file, so concurrent processes never interleave.
    """
    path = os.environ.get(LOCK_STATS_VAR)
    if not path:
        return
    at = time.time() - seconds if started is None else started
    line = f"{kind} {seconds:.6f} {Path(sys.argv[0]).name or 'python'} {at:.3f}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return  # a measurement must never break the command it measures
    try:
        os.write(fd, line)
    except OSError:
        pass  # a full disk: the measurement is lost, the command it measures goes on
    finally:
        os.close(fd)
