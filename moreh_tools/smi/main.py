"""Entry point of ``moreh-smi``: the token's devices and jobs, and the device options, through the port.

Nothing heavy is imported up front (argparse only once there are options): ``--help`` and ``-v``
never load DuckDB; through a daemon nothing loads DuckDB at all; alone on the state file, the status
views load NVML or psutil only when the token has a job on this host whose figures need refreshing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

from moreh_tools import __version__
from moreh_tools.runtime import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError, run
from moreh_tools.smi.common import unknown_token

if TYPE_CHECKING:
    import argparse

    from moreh_tools.port import Port
    from moreh_tools.services.records import SmiStatus

PROG = "moreh-smi"

HELP = """\
Usage: moreh-smi [-h | --help] [-r | --reset] [-s | --server-version] [-v | --version] [-t | --token] [-i | --idx device_id]
                 [-p] [--json] [device {--list | --add [model_id] | --rm [device_id] | --switch [device_id]}]
                 [quota [--request GPUS --days N --reason TEXT]] [--dashboard [--interval seconds] [--read-only]]

Basic Options:
  -h, --help             provide information about available command switches and their options
  -r, --reset            stop the running process and cancel the waiting ones (of every device, or of the
                         one -i selects)
  -s, --server-version   print Moreh Framework version information
  -v, --version          print current software version information
  -t, --token            print Moreh Solution token information
  -i, --idx              select a device to print
  -p                     print the detailed hardware status of the GPUs behind the current device (or -i)
  --json                 print the status (default, -i, -t, -p, -s) as JSON
  --dashboard            live full-screen view of your devices and jobs (the whole cluster for an admin);
                         q quits, ? lists the keys; --interval seconds between refreshes (default 1),
                         --read-only hides the release, priority and model actions

Device Options:
  device --list                 list available models for adding device
  device --add [model_id]       add a device corresponding to model_id
  device --rm  [device_id]      remove a device corresponding to device_id
  device --switch [device_id]   switch to the device corresponding to [device_id]

Quota Options:
  quota                                          your user group's GPU quotas and your quota requests
  quota --request GPUS --days N --reason TEXT    ask an admin for GPUS more GPUs for your group for N days

Device Options operate interactively if there are no optional arguments([model_id], [device_id]).
model_id is a number from 'device --list' (or a model name); device_id is a number of the Device column.

Device Example:
  moreh-smi device --list
  moreh-smi device --add
  moreh-smi device --add 2
  moreh-smi device --switch 1
  moreh-smi -i 2

The token comes from MOREH_SDA_TOKEN, else from the file MOREH_TOKEN_FILE names (default /etc/moreh/token)."""

SEE_HELP = f"see '{PROG} --help'"


def _parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ToolError(f"{PROG}: {message} ({SEE_HELP}).", EXIT_USAGE)

    parser = _Parser(prog=PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("-r", "--reset", action="store_true")
    parser.add_argument("-s", "--server-version", action="store_true")
    parser.add_argument("-v", "--version", action="store_true")
    parser.add_argument("-t", "--token", action="store_true")
    parser.add_argument("-i", "--idx", metavar="device_id")
    parser.add_argument("-p", dest="hardware", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("--interval")
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--list", action="store_true")
    # An option given without its value runs interactively, so "" (given, empty) differs from None (absent).
    for name in ("--add", "--rm", "--switch"):
        parser.add_argument(name, nargs="?", const="", default=None)
    parser.add_argument("--request")
    parser.add_argument("--days")
    parser.add_argument("--reason")
    parser.add_argument("words", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run moreh-smi with ``argv`` (default: the command line) and return its exit status."""
    args_list = sys.argv[1:] if argv is None else argv
    return run(PROG, lambda: _run(args_list), unknown_token=unknown_token)


def _port(token: str | None) -> Port:
    from moreh_tools.port import open_port

    return open_port(token, tool=PROG)


def _run(argv: list[str]) -> int:
    if not argv:  # the plain status, what `watch moreh-smi` repeats: no parser to import and build
        from moreh_tools.smi.common import find_token

        token = find_token()
        return _show(_port(token), token, idx=None, tokens=False, hardware=False, as_json=False)
    args = _parser().parse_args(argv)
    if args.help:
        print(HELP)
        return EXIT_OK
    if "quota" in args.words or any(v is not None for v in (args.request, args.days, args.reason)):
        return _quota(args)
    device_action = _device_action(args)
    if args.dashboard or args.interval is not None or args.read_only:
        return _dashboard(args, device_action is not None)
    actions = [
        name
        for name, given in (
            ("-r", args.reset),
            ("-s", args.server_version),
            ("-v", args.version),
            ("-t", args.token),
            ("-p", args.hardware),
            ("device", device_action is not None),
        )
        if given
    ]
    if len(actions) > 1:
        raise ToolError(f"{PROG}: use one of {', '.join(actions)} at a time ({SEE_HELP}).", EXIT_USAGE)
    if args.json and (device_action is not None or args.reset or args.version):
        raise ToolError(f"{PROG}: --json goes with the status views: no option, -i, -t, -p or -s.", EXIT_USAGE)
    if args.idx is not None and (device_action is not None or args.server_version or args.version):
        raise ToolError(f"{PROG}: -i selects a device for the status, -t, -p or -r ({SEE_HELP}).", EXIT_USAGE)
    if args.version:
        print(f"{PROG} {__version__} (moreh-tools)")
        return EXIT_OK

    from moreh_tools.smi.common import find_token

    if args.server_version:
        from moreh_tools import identity

        try:
            anyone: str | None = identity.find_token()
        except identity.TokenNotGiven:
            anyone = None  # the versions are no secret; a daemon or master may still ask for a token
        return _server_version(_port(anyone), args.json)
    token = find_token()
    port = _port(token)
    if device_action is not None:
        from moreh_tools.smi import device_cli

        return device_cli.run(port, device_action[0], device_action[1])
    if args.reset:
        return _reset(port, args.idx)
    return _show(port, token, idx=args.idx, tokens=args.token, hardware=args.hardware, as_json=args.json)


def _quota(args: argparse.Namespace) -> int:
    """``quota``: the token's group quotas and requests; ``quota --request GPUS --days N --reason TEXT``: ask for more."""
    from moreh_tools.smi import quota_cli

    if args.words != ["quota"]:
        extra = next((w for w in args.words if w != "quota"), "--request")
        raise ToolError(f"{PROG}: '{extra}' goes with nothing else here; use: quota [--request GPUS --days N --reason TEXT] "
                        f"({SEE_HELP}).", EXIT_USAGE)
    others = [name for name, given in (("-r", args.reset), ("-s", args.server_version), ("-v", args.version),
                                       ("-t", args.token), ("-p", args.hardware), ("-i", args.idx is not None),
                                       ("--dashboard", args.dashboard), ("--list", args.list),
                                       ("--add", args.add is not None), ("--rm", args.rm is not None),
                                       ("--switch", args.switch is not None)) if given]
    if others:
        raise ToolError(f"{PROG}: quota goes alone (not with {', '.join(others)}) ({SEE_HELP}).", EXIT_USAGE)
    from moreh_tools.smi.common import find_token

    if args.request is None:
        if args.days is not None or args.reason is not None:
            raise ToolError(f"{PROG}: --days and --reason go with --request GPUS ({SEE_HELP}).", EXIT_USAGE)
        token = find_token()
        return quota_cli.show(_port(token), args.json)
    gpus = quota_cli.number(args.request, "--request", "GPUS")
    if args.days is None or args.reason is None:
        raise ToolError(f"{PROG}: quota --request needs --days N and --reason TEXT ({SEE_HELP}).", EXIT_USAGE)
    days = quota_cli.number(args.days, "--days", "N")
    token = find_token()
    return quota_cli.request(_port(token), gpus, days, args.reason, args.json)


def _dashboard(args: argparse.Namespace, device_action: bool) -> int:
    """``--dashboard``: Textual is imported only past this point, and only once the checks pass."""
    if not args.dashboard:
        raise ToolError(f"{PROG}: --interval and --read-only go with --dashboard ({SEE_HELP}).", EXIT_USAGE)
    others = [name for name, given in (("-r", args.reset), ("-s", args.server_version), ("-v", args.version),
                                       ("-t", args.token), ("-p", args.hardware), ("-i", args.idx is not None),
                                       ("--json", args.json), ("device", device_action)) if given]
    if others:
        raise ToolError(f"{PROG}: --dashboard goes alone (not with {', '.join(others)}) ({SEE_HELP}).", EXIT_USAGE)
    from moreh_tools.dashboard.cli import parse_interval, run_dashboard

    interval = parse_interval(args.interval) if args.interval is not None else 1.0
    return run_dashboard(interval=interval, read_only=args.read_only)


def _device_action(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """(action, value) of the device options; ``device`` itself is optional (``moreh-smi --rm 1``)."""
    if [w for w in args.words if w != "device"] or len(args.words) > 1:
        extra = next((w for w in args.words if w != "device"), args.words[-1])
        raise ToolError(f"{PROG}: unknown argument '{extra}' ({SEE_HELP}).", EXIT_USAGE)
    given = [
        (name, value)
        for name, value in (
            ("list", "" if args.list else None),
            ("add", args.add),
            ("rm", args.rm),
            ("switch", args.switch),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ToolError(f"{PROG}: give one device option at a time ({SEE_HELP}).", EXIT_USAGE)
    if not given:
        if args.words:
            raise ToolError(
                f"{PROG}: say what to do: device --list | --add [model_id] | --rm [device_id] | --switch [device_id].",
                EXIT_USAGE,
            )
        return None
    name, value = given[0]
    return name, (value or None)


def _selected(status: SmiStatus, idx: str | None) -> SmiStatus:
    if idx is None:
        return status
    if not (idx.isascii() and idx.isdigit()):
        raise ToolError(f"{PROG}: -i takes a device id (a number of the Device column), not '{idx}'.", EXIT_USAGE)
    if status.device(int(idx)) is None:
        ids = ", ".join(str(d.id) for d in status.devices) or "none"
        raise ToolError(f"Device {idx} is not one of your devices; your devices are: {ids}.")
    return status.only(int(idx))


def _show(port: Port, token: str, *, idx: str | None, tokens: bool, hardware: bool, as_json: bool) -> int:
    """The status views: plain, ``-t`` (``tokens``), ``-p`` (``hardware``), each narrowed by ``-i`` and as ``--json``."""
    from moreh_tools.port import ops
    from moreh_tools.smi import render

    status = _selected(port.call(ops.STATUS, refresh=not tokens), idx)
    if hardware:
        device_id = int(idx) if idx is not None else status.current_device
        device = status.device(device_id) if device_id is not None else None
        if device is None:
            raise ToolError("This token has no current device; add one with 'moreh-smi device --add'.")
        if as_json:
            from dataclasses import asdict

            behind = {(g.backend_id, g.index) for g in device.gpus}
            flags = [asdict(f) for f in status.flags if (f.backend_id, f.index) in behind]
            gpus = status.only(device.id).to_dict()["devices"][0]["gpus"]
            return _print_json({"device": device.id, "gpus": gpus, "guardian": flags, "containment": device.containment})
        print(render.gpu_table(device, status.flags))
        return EXIT_OK
    if as_json:
        data = status.to_dict()
        if tokens:
            data = {
                "token": token,
                "devices": [{"device": d.id, "current": d.current, "model": d.model} for d in status.devices],
            }
        return _print_json(data)
    print(render.token_table(status) if tokens else render.status_text(status))
    return EXIT_OK


def _print_json(data: object) -> int:
    import json

    print(json.dumps(data, indent=2, default=str))
    return EXIT_OK


def _server_version(port: Port, as_json: bool) -> int:
    from moreh_tools.grid import name_value_grid
    from moreh_tools.port import ops

    info = port.call(ops.VERSIONS)
    pairs = [("Server", info.server), ("Latest Version", info.latest), ("Supported Versions", ", ".join(info.supported))]
    if as_json:
        return _print_json(dict(pairs))
    print(name_value_grid(pairs))
    return EXIT_OK


def _reset(port: Port, idx: str | None) -> int:
    from moreh_tools.port import ops

    if not port.call(ops.JOB_RELEASE_MINE, device=idx):
        print("Device release failed. (Not running job.)", file=sys.stderr)
        return EXIT_FAILED
    print("Device release success.")
    return EXIT_OK
