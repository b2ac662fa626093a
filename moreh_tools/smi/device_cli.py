"""``moreh-smi device --list | --add [model_id] | --rm [device_id] | --switch [device_id]``.

The dialogue is one piece of code for both places the devices live: this host's state
(:class:`LocalDevices`) or a remote SDA Manager (:class:`moreh_tools.remote.devices.RemoteDevices`), whose
endpoints run the same session-level steps below, so a remote user meets the same rules and messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from moreh_tools.smi import devices, render
from moreh_tools.smi.common import EXIT_OK, UserError, check_token
from moreh_tools.smi.prompt import ask, numbered, pick_model, span_text
from moreh_tools.smi.status import collect_status

if TYPE_CHECKING:
    from state.session import Session
    from state.store import StateStore


@dataclass(frozen=True)
class Added:
    """What the user sees after adding a device, and whether the picker may go on."""

    table: str
    room: int
    options: list[devices.ModelOption]


def models_in(s: Session, token: str, *, need_room: bool = False) -> list[devices.ModelOption]:
    """The models the token may add a device of; with ``need_room`` refuse a token at its max SDA."""
    check_token(s, token)
    options = devices.model_options(s, token)
    if not options:
        raise UserError("This token may use no SDA model; ask your administrator to give it access to one.")
    if need_room:
        devices.check_room(s, token)
    return options


def add_in(s: Session, token: str, model: devices.ModelOption | str) -> Added:
    """Add a device of ``model`` (an option, or the text naming one)."""
    devices.add_device(s, token, model)
    return Added(short_table(s, token), devices.room_left(s, token), devices.model_options(s, token))


def owned_in(s: Session, token: str) -> tuple[list[int], str]:
    """The token's device ids and the short table showing them."""
    check_token(s, token)
    return [sda.id for sda in s.sdas.of_token(token)], short_table(s, token)


def change_in(s: Session, token: str, action: str, device_text: str) -> str:
    """Remove (``rm``) or switch to (``switch``) one of the token's devices; the short table after it."""
    change = devices.remove_device if action == "rm" else devices.switch_device
    change(s, token, device_text)
    return short_table(s, token)


def short_table(s: Session, token: str) -> str:
    """The device table the device options print."""
    return render.short_table(collect_status(s, token).devices)


class Devices(Protocol):
    """Where the token's devices live: the steps above, each in one read or one transaction."""

    def models(self, need_room: bool) -> list[devices.ModelOption]:
        """:func:`models_in`."""
        ...

    def add(self, model: devices.ModelOption | str) -> Added:
        """:func:`add_in`."""
        ...

    def owned(self) -> tuple[list[int], str]:
        """:func:`owned_in`."""
        ...

    def change(self, action: str, device_text: str) -> str:
        """:func:`change_in`."""
        ...


class LocalDevices:
    """The token's devices in this host's state."""

    def __init__(self, store: StateStore, token: str, command: str) -> None:
        """Devices of ``token``; changes are recorded as ``command``."""
        self.store, self.token, self.command = store, token, command

    def models(self, need_room: bool) -> list[devices.ModelOption]:
        """:func:`models_in`."""
        with self.store.reading() as s:
            return models_in(s, self.token, need_room=need_room)

    def add(self, model: devices.ModelOption | str) -> Added:
        """:func:`add_in`."""
        with self.store.transaction(self.command) as s:
            return add_in(s, self.token, model)

    def owned(self) -> tuple[list[int], str]:
        """:func:`owned_in`."""
        with self.store.reading() as s:
            return owned_in(s, self.token)

    def change(self, action: str, device_text: str) -> str:
        """:func:`change_in`."""
        with self.store.transaction(self.command) as s:
            return change_in(s, self.token, action, device_text)


def run(store: StateStore | None, token: str, action: str, value: str | None, command: str) -> int:
    """Run one device option (store None: on the SDA Manager); ``value`` None means ask for it at a prompt."""
    if store is None:
        from moreh_tools.remote.devices import RemoteDevices

        where: Devices = RemoteDevices(token)
    else:
        where = LocalDevices(store, token, command)
    if action == "list":
        print("\n".join(devices.list_lines(where.models(need_room=False))))
        return EXIT_OK
    if action == "add":
        return _add(where, value)
    return _pick_device(where, action, value)


def _add(where: Devices, value: str | None) -> int:
    if value is not None:
        print(where.add(value).table)
        print("Create device success.")
        return EXIT_OK
    options = where.models(need_room=True)
    while True:
        choice = pick_model(devices.list_lines(options), options)
        if choice is None:
            return EXIT_OK
        added = where.add(choice)
        print(added.table)
        print("Create device success.")
        if added.room <= 0 or not added.options:
            return EXIT_OK
        options = added.options


def _pick_device(where: Devices, action: str, value: str | None) -> int:
    done = "Remove device success." if action == "rm" else "Switch Current Device success."
    if value is None:
        owned, table = where.owned()
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
    table = where.change(action, value)
    if action == "switch":
        print()  # the reference's switch output opens with a blank line
    print(table)
    print(done)
    return EXIT_OK
