"""``moreh-smi`` and ``moreh-switch-model`` against a remote SDA Manager: fetch there, render here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moreh_tools.remote.client import RemoteError, connect
from moreh_tools.smi.common import EXIT_FAILED, EXIT_USAGE, UserError

#: The HTTP status of the server's refusals of bad usage (the local tool's exit status 2).
USAGE_REFUSED = 422

if TYPE_CHECKING:
    from moreh_tools.smi.devices import ModelOption
    from moreh_tools.smi.status import SmiStatus


def _call(method: str, path: str, token: str, params: dict[str, Any] | None = None) -> Any:
    """One call with the user's token; a refusal becomes the UserError line the local tool would print."""
    from moreh_tools.smi.common import unknown_token

    try:
        return connect(token).call(method, path, params)
    except RemoteError as exc:
        if exc.status == 401:
            raise unknown_token() from None
        # 422: the refusal of bad usage (a device id that is not a number), exit 2 as locally.
        raise UserError(str(exc), EXIT_USAGE if exc.status == USAGE_REFUSED else EXIT_FAILED) from None


def remote_status(token: str) -> SmiStatus:
    """The token's moreh-smi status as the SDA Manager sees it."""
    reply = _call("GET", "/api/remote/smi/status", token)
    try:
        return status_from_dict(reply["status"])
    except (KeyError, TypeError, ValueError):
        raise UserError("The SDA Manager sent a status this moreh-smi cannot read; check the versions.") from None


def status_from_dict(data: dict[str, Any]) -> SmiStatus:
    """Rebuild the status dataclasses from their ``dataclasses.asdict`` form."""
    from moreh_tools.smi.status import DeviceStatus, GpuStatus, ProcessStatus, SmiStatus, WaitingJob

    devices = tuple(
        DeviceStatus(
            **{
                **device,
                "job_ids": tuple(device["job_ids"]),
                "gpus": tuple(GpuStatus(**gpu) for gpu in device["gpus"]),
            }
        )
        for device in data["devices"]
    )
    return SmiStatus(
        token=data["token"],
        current_version=data["current_version"],
        latest_version=data["latest_version"],
        max_devices=data["max_devices"],
        current_device=data["current_device"],
        devices=devices,
        processes=tuple(ProcessStatus(**p) for p in data["processes"]),
        waiting=tuple(WaitingJob(**w) for w in data["waiting"]),
    )


SWITCH_PATH = "/api/remote/switchmodel"


def model_choices(token: str) -> tuple[str, list[ModelOption], list[str]]:
    """The current model's text, the model options and their numbered lines (current one marked)."""
    from moreh_tools.smi.devices import ModelOption

    reply = _call("GET", SWITCH_PATH, token)
    options = [ModelOption(**o) for o in reply["options"]]
    if not options:
        raise UserError("This token may use no SDA model; ask your administrator to give it access to one.")
    return str(reply["current"]), options, [str(line) for line in reply["lines"]]


def switch_to(token: str, *, text: str | None = None, option: ModelOption | None = None) -> tuple[ModelOption, bool]:
    """Switch the current device's model on the SDA Manager; the option switched to and whether it changed."""
    from moreh_tools.smi.devices import ModelOption

    if option is not None:
        params: dict[str, Any] = {"modelId": option.model_id, "groupId": option.group_id}
    else:
        params = {"model": text}
    reply = _call("POST", SWITCH_PATH, token, params)
    return ModelOption(**reply["option"]), bool(reply["changed"])


def server_versions() -> list[tuple[str, str]]:
    """What ``moreh-smi -s`` shows, from the SDA Manager (its token: the user's, for authentication only)."""
    from moreh_tools.smi.common import find_token

    reply = _call("GET", "/api/remote/smi/version", find_token())
    return [(str(name), str(value)) for name, value in reply["pairs"]]


def release_remote(token: str, idx: str | None) -> list[int]:
    """``moreh-smi -r``: release the token's jobs (of device ``idx``) on the SDA Manager; the ids released."""
    reply = _call("POST", "/api/remote/smi/reset", token, {"idx": idx})
    return [int(job_id) for job_id in reply["released"]]
