"""``moreh-smi device --list | --add [model_id] | --rm [device_id] | --switch [device_id]``.

One dialogue whatever the port: each step is one operation (:mod:`moreh_tools.services.devices`), so
a user meets the same rules and messages on the state file, through the daemon or on a master.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moreh_tools.port import ops
from moreh_tools.runtime import EXIT_OK, ToolError
from moreh_tools.smi import render
from moreh_tools.smi.prompt import ask, model_lines, numbered, pick_model, span_text

if TYPE_CHECKING:
    from moreh_tools.port import Port


def run(port: Port, action: str, value: str | None) -> int:
    """Run one device option; ``value`` None means ask for it at a prompt."""
    if action == "list":
        print("\n".join(model_lines(port.call(ops.DEVICE_MODELS, need_room=False))))
        return EXIT_OK
    if action == "add":
        return _add(port, value)
    return _pick_device(port, action, value)


def _add(port: Port, value: str | None) -> int:
    if value is not None:
        added = port.call(ops.DEVICE_ADD, model=value)
        print(render.short_table(added.devices))
        print("Create device success.")
        return EXIT_OK
    options = port.call(ops.DEVICE_MODELS, need_room=True)
    while True:
        choice = pick_model(model_lines(options), options)
        if choice is None:
            return EXIT_OK
        added = port.call(ops.DEVICE_ADD, option=choice)
        print(render.short_table(added.devices))
        print("Create device success.")
        if added.room <= 0 or not added.options:
            return EXIT_OK
        options = list(added.options)


def _pick_device(port: Port, action: str, value: str | None) -> int:
    done = "Remove device success." if action == "rm" else "Switch Current Device success."
    if value is None:
        owned = port.call(ops.DEVICE_OWNED)
        if not owned.ids:
            raise ToolError("This token has no device yet; add one with 'moreh-smi device --add'.")
        print(render.short_table(owned.devices))
        print()
        chosen = ask(
            f"Selection ({span_text(owned.ids)}, q, Q): ",
            numbered({i: i for i in owned.ids}),
            f"Type one of your device ids ({', '.join(map(str, owned.ids))}), or q to quit.",
        )
        if chosen is None:
            print()
            return EXIT_OK
        value = str(chosen)
    after = port.call(ops.DEVICE_REMOVE if action == "rm" else ops.DEVICE_SWITCH, device=value)
    if action == "switch":
        print()  # the reference's switch output opens with a blank line
    print(render.short_table(after.devices))
    print(done)
    return EXIT_OK
