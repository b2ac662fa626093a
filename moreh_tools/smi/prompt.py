"""The ``Selection (1-N, q, Q):`` prompt both user tools use, reading real standard input."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
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
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
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
