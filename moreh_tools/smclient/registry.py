"""The smclient command table: names of one to four words, their usage, and their handlers.

The grammar is the seeds' (``update token sda current {token} {current sda}``): a command is the
longest registered name that prefixes the line, the rest are positional arguments. The usage text
is the single source of the argument count and of the ``help`` listing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moreh_tools.smclient.args import UsageError
from moreh_tools.smclient.output import Output

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.session import Session

_PARAM = re.compile(r"\{([^}]*)\}")


class Context:
    """What a handler may use: the services' context (the state and who asks), the command line, the output mode."""

    def __init__(self, line: str, *, service: ServiceContext, json_output: bool = False) -> None:
        """Create a context for running ``line`` against ``service``'s state."""
        self.line = line
        self.json_output = json_output
        self.service = service

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction that may change the state; the command line goes to the event log."""
        with self.service.write(self.line) as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only look at the state."""
        with self.service.read() as session:
            yield session


Handler = Callable[[Context, list[str]], Output]


@dataclass(frozen=True)
class Command:
    """One console command."""

    name: str
    description: str
    usage: str | None
    handler: Handler
    extra_args: int = 0  # arguments accepted beyond the usage (older seed forms)
    hidden: bool = False

    @property
    def params(self) -> list[str]:
        """The ``{...}`` parameters of the usage text."""
        return _PARAM.findall(self.usage or "")

    @property
    def arg_range(self) -> tuple[int, int]:
        """The fewest and most arguments the command takes."""
        params = self.params
        required = sum(1 for p in params if not p.rstrip().endswith(": optional"))
        return required, len(params) + self.extra_args

    def help_entry(self) -> str:
        """The command's lines in the ``help`` listing."""
        text = f"{self.name:<34}: {self.description}"
        if self.usage:
            text += f"\n      (usages : {self.usage})"
        return text

    def usage_line(self) -> str:
        """One line saying how to call the command."""
        return f"usages : {self.usage}" if self.usage else f"usages : {self.name}"


REGISTRY: dict[str, Command] = {}


def command(
    name: str, description: str, usage: str | None = None, *, extra_args: int = 0, hidden: bool = False
) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""

    def register(handler: Handler) -> Handler:
        REGISTRY[name] = Command(name, description, usage, handler, extra_args, hidden)
        return handler

    return register


def listing() -> str:
    """The full ``help`` listing in the seeds' format, sorted by command name."""
    commands = REGISTRY
    return "\n".join(commands[name].help_entry() for name in sorted(commands) if not commands[name].hidden)


def help_for(words: list[str]) -> str:
    """What ``WORDS ?`` prints: the command's entry, every command that starts with the words, or all of them.

    ``create sda ?`` names a command: its entry. ``update token ?`` and ``show tok ?`` name none, so every
    command whose name starts with what was typed is listed, in the ``help`` format; a bare ``?`` is
    ``help``. Anything else raises UsageError (an unknown command, or arguments before the ``?``).
    """
    commands = REGISTRY
    typed = " ".join(words).lower()
    exact = commands.get(typed)
    if exact is not None:
        return exact.help_entry()
    if not typed:
        return listing()
    starting = [name for name in sorted(commands) if name.startswith(typed) and not commands[name].hidden]
    if starting:
        return "\n".join(commands[name].help_entry() for name in starting)
    cmd, rest = resolve(words)
    if rest:
        raise UsageError(f"Unknown command '{' '.join(words)}'. Did you mean '{cmd.name} ?'")
    return cmd.help_entry()  # not reached: resolve() found no longer name than the words, so 'exact' had it


def suggest(words: list[str]) -> str | None:
    """Return the registered command closest to what was typed, if any is close enough."""
    best: tuple[float, str] | None = None
    for name in REGISTRY:
        if REGISTRY[name].hidden:
            continue
        typed = " ".join(words[: len(name.split())]).lower()
        score = difflib.SequenceMatcher(None, typed, name).ratio()
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best and best[0] >= 0.6 else None


def resolve(words: list[str]) -> tuple[Command, list[str]]:
    """Return the command that the words name and its arguments, or raise UsageError."""
    commands = REGISTRY
    for size in range(min(len(words), 4), 0, -1):
        name = " ".join(words[:size]).lower()
        found = commands.get(name)
        if found is not None:
            return found, words[size:]
    hint = suggest(words)
    typed = " ".join(words[:3])
    if hint:
        raise UsageError(f"Unknown command '{typed}'. Did you mean '{hint}'? Type 'help' for the list.")
    raise UsageError(f"Unknown command '{typed}'. Type 'help' for the list of commands.")


def check_arg_count(cmd: Command, args: list[str]) -> None:
    """Raise UsageError with the usage when the argument count is wrong."""
    low, high = cmd.arg_range
    if not low <= len(args) <= high:
        expected = f"{low}" if low == high else f"{low} to {high}"
        raise UsageError(f"'{cmd.name}' takes {expected} argument(s), got {len(args)}: {cmd.usage_line()}")
