"""The ``Selection (1-N, q, Q):`` prompt both user tools use, reading real standard input."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO, TypeVar

from moreh_tools.runtime import EndOfInput

if TYPE_CHECKING:
    from moreh_tools.services.records import ModelOption

T = TypeVar("T")


def span_text(numbers: Sequence[int]) -> str:
    """``1-13`` for a run of numbers, ``3, 7, 12`` otherwise."""
    if not numbers:
        return ""
    ordered = sorted(numbers)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(str(n) for n in ordered)


def numbered(choices: dict[int, T]) -> Callable[[str], T | None]:
    """An ``accept`` function that takes one of the numbers in ``choices``."""

    def accept(answer: str) -> T | None:
        if answer.isascii() and answer.isdigit():
            return choices.get(int(answer))
        return None

    return accept


def ask(
    prompt: str,
    accept: Callable[[str], T | None],
    hint: str,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> T | None:
    """Prompt until ``accept`` takes the answer; None when the user types ``q`` or ``Q``.

    Anything else re-prompts after ``hint`` (on stderr). Raises :class:`EndOfInput` at end of input.
    When the input is not a terminal the answer is echoed, so a piped run reads like a session.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    while True:
        with _signal_wakeup(stdin) as wakeup:
            stdout.write(prompt)
            stdout.flush()
            line = _read_terminal_line(stdin, wakeup) if wakeup is not None else stdin.readline()
        if not line:
            stdout.write("\n")
            stdout.flush()
            raise EndOfInput
        answer = line.strip()
        if not _is_terminal(stdin):
            stdout.write(answer + "\n")
        if answer in ("q", "Q"):
            return None
        value = accept(answer)
        if value is not None:
            return value
        stdout.flush()
        print(hint, file=stderr)
        stderr.flush()


def model_lines(
    options: Sequence[ModelOption], current: ModelOption | None = None, marker: bool = False
) -> list[str]:
    """``1. Small.64GB`` lines; with ``marker`` the current model gets ``  *`` (`` *`` in the group form)."""
    lines = []
    for option in options:
        line = f"{option.number}. {option.label}"
        if marker and current is not None and (option.model_id, option.group_id) == (current.model_id, current.group_id):
            line += " *" if option.group_name else "  *"
        lines.append(line)
    return lines


def pick_model(lines: Sequence[str], options: Sequence[ModelOption]) -> ModelOption | None:
    """Print the numbered model list and ask for a number; None (after a blank line) when the user quits.

    The ``moreh-smi device --add`` and ``moreh-switch-model`` pickers, local and remote alike.
    """
    print("\n".join(lines))
    print()
    choice = ask(
        f"Selection ({span_text([o.number for o in options])}, q, Q): ",
        numbered({o.number: o for o in options}),
        f"Type a model number from 1 to {len(options)}, or q to quit.",
    )
    if choice is None:
        print()
    return choice


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- reading a terminal without losing Ctrl-C --------------------------------------------------------
#
# CPython's SIGINT handler only sets a flag; KeyboardInterrupt is raised when the interpreter next checks
# it between bytecodes. A Ctrl-C that lands after the last check but before the blocking read() starts
# (typically while the prompt is being drawn: the terminal wakes whoever watches it and the tool is
# preempted right there) leaves the flag set and the read waiting for a line that never comes: the
# screen shows ^C and the tool hangs. On a terminal the prompt therefore waits in select() on standard
# input and a signal wake-up pipe (signal.set_wakeup_fd), which the C-level handler writes to the
# moment the signal arrives, so no signal can slip in unnoticed.


@contextmanager
def _signal_wakeup(stdin: TextIO) -> Iterator[int | None]:
    """While the block runs, a pipe that every caught signal writes a byte to; None where that is not possible.

    Only for a terminal on the main thread (set_wakeup_fd is the main thread's): piped answers keep the
    plain buffered readline, since several of them may come in one read.
    """
    if not _is_terminal(stdin) or threading.current_thread() is not threading.main_thread():
        yield None
        return
    try:
        stdin.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)  # set_wakeup_fd needs it; the read end, for _drain
        os.set_blocking(read_end, False)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (OSError, ValueError):
        os.close(read_end)
        os.close(write_end)
        yield None
        return
    try:
        _run_pending_signal_handlers()  # a signal that came before the pipe was in place
        yield read_end
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


def _read_terminal_line(stdin: TextIO, wakeup: int) -> str:
    """One line typed on the terminal ('' at end of input), woken by any signal while waiting for it."""
    fd = stdin.fileno()
    data = b""
    while True:
        ready, _, _ = select.select([fd, wakeup], [], [])
        _run_pending_signal_handlers()  # Ctrl-C raises KeyboardInterrupt here at the latest
        if wakeup in ready:
            _drain(wakeup)
        if fd in ready:
            chunk = os.read(fd, 4096)  # the terminal hands over one line per read
            data += chunk
            if not chunk or chunk.endswith(b"\n"):  # end of input, or the end of the line
                return data.decode(stdin.encoding or "utf-8", errors="replace")


def _run_pending_signal_handlers() -> None:
    """Nothing, on purpose: entering a Python function runs the handlers of the signals caught so far."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
