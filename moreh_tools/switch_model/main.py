"""Entry point of ``moreh-switch-model``: the numbered picker of the reference, or ``--model`` for scripts."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

from moreh_tools.runtime import EXIT_OK, EXIT_USAGE, ToolError, run
from moreh_tools.services.records import DEVICE_NAME
from moreh_tools.smi.common import unknown_token

if TYPE_CHECKING:
    from moreh_tools.port import Port
    from moreh_tools.services.records import Switched

PROG = "moreh-switch-model"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ToolError(f"{PROG}: {message} (see '{PROG} --help').", EXIT_USAGE)


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
        help="switch without asking: the model's number in the list, its name, name@group, or id:<model id>",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run moreh-switch-model with ``argv`` (default: the command line) and return its exit status."""
    args_list = sys.argv[1:] if argv is None else argv
    return run(PROG, lambda: _run(args_list), unknown_token=unknown_token)


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from moreh_tools.port import open_port
    from moreh_tools.smi.common import find_token

    port = open_port(find_token(), tool=PROG)
    if args.model is not None:
        from moreh_tools.port import ops

        _say_switched(port.call(ops.SWITCH_MODEL, model=args.model))
        return EXIT_OK
    return _picker(port)


def _say_switched(result: Switched) -> None:
    if result.changed:
        # Two spaces before the quote, exactly as the real tool prints it.
        print(f'The {DEVICE_NAME} model is successfully switched to  "{result.option.name}".')
    else:
        print(f'The {DEVICE_NAME} model is already "{result.option.name}".')


def _picker(port: Port) -> int:
    from moreh_tools.port import ops
    from moreh_tools.smi.prompt import model_lines, pick_model

    choices = port.call(ops.SWITCH_CHOICES)
    print(f"Current {DEVICE_NAME}: {choices.current}")
    print()
    while True:
        choice = pick_model(model_lines(choices.options, choices.current_option, marker=True), choices.options)
        if choice is None:
            return EXIT_OK
        _say_switched(port.call(ops.SWITCH_MODEL, option=choice))
        print()
        choices = port.call(ops.SWITCH_CHOICES)
