"""``moreh-smi device --list | --add [model_id] | --rm [device_id] | --switch [device_id]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moreh_tools.smi import devices, render
from moreh_tools.smi.common import EXIT_OK, UserError, check_token
from moreh_tools.smi.prompt import ask, numbered, span_text
from moreh_tools.smi.status import collect_status

if TYPE_CHECKING:
    from state.session import Session
    from state.store import StateStore


def run(store: StateStore, token: str, action: str, value: str | None, command: str) -> int:
    """Run one device option; ``value`` None means ask for it at a prompt."""
    if action == "list":
        return _list(store, token)
    if action == "add":
        return _add(store, token, value, command)
    return _pick_device(store, token, action, value, command)


def _options(s: Session, token: str) -> list[devices.ModelOption]:
    check_token(s, token)
    options = devices.model_options(s, token)
    if not options:
        raise UserError("This token may use no SDA model; ask your administrator to give it access to one.")
    return options


def _list(store: StateStore, token: str) -> int:
    with store.reading() as s:
        options = _options(s, token)
    print("\n".join(devices.list_lines(options)))
    return EXIT_OK


def _short_table(s: Session, token: str) -> str:
    return render.short_table(collect_status(s, token).devices)


def _add(store: StateStore, token: str, value: str | None, command: str) -> int:
    if value is not None:
        with store.transaction(command) as s:
            devices.add_device(s, token, value)
            table = _short_table(s, token)
        print(table)
        print("Create device success.")
        return EXIT_OK
    with store.reading() as s:
        options = _options(s, token)
        devices.check_room(s, token)
    while True:
        print("\n".join(devices.list_lines(options)))
        print()
        choice = ask(
            f"Selection ({span_text([o.number for o in options])}, q, Q): ",
            numbered({o.number: o for o in options}),
            f"Type a model number from 1 to {len(options)}, or q to quit.",
        )
        if choice is None:
            print()
            return EXIT_OK
        with store.transaction(command) as s:
            devices.add_device(s, token, choice)
            table = _short_table(s, token)
            room = devices.room_left(s, token)
            options = devices.model_options(s, token)
        print(table)
        print("Create device success.")
        if room <= 0 or not options:
            return EXIT_OK


def _pick_device(store: StateStore, token: str, action: str, value: str | None, command: str) -> int:
    change = devices.remove_device if action == "rm" else devices.switch_device
    done = "Remove device success." if action == "rm" else "Switch Current Device success."
    if value is None:
        with store.reading() as s:
            check_token(s, token)
            owned = [sda.id for sda in s.sdas.of_token(token)]
            table = _short_table(s, token)
        if not owned:
            raise UserError("This token has no device yet; add one with 'moreh-smi device --add'.")
        print(table)
        print()
        chosen = ask(
            f"Selection ({span_text(owned)}, q, Q): ",
            numbered({i: i for i in owned}),
            f"Type one of your device ids ({', '.join(map(str, owned))}), or q to quit.",
        )
        if chosen is None:
            print()
            return EXIT_OK
        value = str(chosen)
    with store.transaction(command) as s:
        change(s, token, value)
        table = _short_table(s, token)
    if action == "switch":
        print()  # the reference's switch output opens with a blank line
    print(table)
    print(done)
    return EXIT_OK
