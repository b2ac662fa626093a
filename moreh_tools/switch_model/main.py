"""Entry point of ``moreh-switch-model``: the numbered picker of the reference, or ``--model`` for scripts."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

from moreh_tools.smi.common import DEVICE_NAME, EXIT_OK, EXIT_USAGE, UserError, run_tool

if TYPE_CHECKING:
    from moreh_tools.smi.devices import ModelOption
    from state.records import SDA
    from state.store import StateStore

PROG = "moreh-switch-model"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{PROG}: {message} (see '{PROG} --help').", EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            f"Change the model (size) of your current {DEVICE_NAME}. Without --model it lists the models your "
            "token may use and asks for a number ('q' or 'Q' quits); it reads standard input, so answers "
            "may also be piped in."
        ),
        epilog=(
            "Example: moreh-switch-model --model Large.256GB   (the token comes from MOREH_SDA_TOKEN, else the "
            "file MOREH_TOKEN_FILE names, default /etc/moreh/token; switch devices with 'moreh-smi device --switch')"
        ),
    )
    parser.add_argument(
        "--model",
        metavar="MODEL",
        help="switch without asking: the model's number in the list, its name, or name@group",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run moreh-switch-model with ``argv`` (default: the command line) and return its exit status."""
    args_list = sys.argv[1:] if argv is None else argv
    return run_tool(PROG, lambda: _run(args_list))


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from moreh_tools.remote.client import address
    from moreh_tools.smi.common import find_token

    token = find_token()
    if address() is not None:  # MOREH_SDA_MANAGER_ADDRESS: the SDA Manager holds the state
        return _switch_remote(token, args.model)
    from state.store import StateStore

    store = StateStore()
    command = " ".join([PROG, *argv])
    if args.model is not None:
        return _switch_to(store, token, args.model, command)
    return _picker(store, token, command)


def _read(store: StateStore, token: str) -> tuple[SDA, list[ModelOption]]:
    from moreh_tools.smi import devices

    with store.reading() as s:
        sda = devices.current_device(s, token)
        options = devices.model_options(s, token)
    if not options:
        raise UserError("This token may use no SDA model; ask your administrator to give it access to one.")
    return sda, options


def _switched(option: ModelOption) -> str:
    # Two spaces before the quote, exactly as the real tool prints it.
    return f'The {DEVICE_NAME} model is successfully switched to  "{option.name}".'


def _switch_to(store: StateStore, token: str, text: str, command: str) -> int:
    from moreh_tools.smi import devices

    with store.transaction(command) as s:
        devices.current_device(s, token)
        option = devices.resolve_model(devices.model_options(s, token), text)
        changed = devices.switch_model(s, token, option)
    print(_switched(option) if changed else f'The {DEVICE_NAME} model is already "{option.name}".')
    return EXIT_OK


def _current_text(sda: SDA, options: list[ModelOption], store: StateStore) -> str:
    for option in options:
        if option.is_model_of(sda):
            return option.text
    # The admin may have taken the current model out of the token's reach: still say what it is.
    with store.reading() as s:
        name = s.models.get(sda.model_id).name
        group = s.model_groups.get(sda.model_group_id).name if sda.model_group_id is not None else None
    return f"{name} at {group}" if group else name


def _picker(store: StateStore, token: str, command: str) -> int:
    from moreh_tools.smi import devices
    from moreh_tools.smi.prompt import pick_model

    sda, options = _read(store, token)
    print(f"Current {DEVICE_NAME}: {_current_text(sda, options, store)}")
    print()
    while True:
        choice = pick_model(devices.list_lines(options, sda, marker=True), options)
        if choice is None:
            return EXIT_OK
        with store.transaction(command) as s:
            changed = devices.switch_model(s, token, choice)
        print(_switched(choice) if changed else f'The {DEVICE_NAME} model is already "{choice.name}".')
        print()
        sda, options = _read(store, token)


def _switch_remote(token: str, model: str | None) -> int:
    """The same dialogue against the SDA Manager at MOREH_SDA_MANAGER_ADDRESS."""
    from moreh_tools.remote import tools

    if model is not None:
        option, changed = tools.switch_to(token, text=model)
        print(_switched(option) if changed else f'The {DEVICE_NAME} model is already "{option.name}".')
        return EXIT_OK
    from moreh_tools.smi.prompt import pick_model

    current, options, lines = tools.model_choices(token)
    print(f"Current {DEVICE_NAME}: {current}")
    print()
    while True:
        choice = pick_model(lines, options)
        if choice is None:
            return EXIT_OK
        option, changed = tools.switch_to(token, option=choice)
        print(_switched(option) if changed else f'The {DEVICE_NAME} model is already "{option.name}".')
        print()
        current, options, lines = tools.model_choices(token)
