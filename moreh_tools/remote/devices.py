"""``moreh-smi device ...`` against a remote SDA Manager: the same dialogue, each step one API call."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from moreh_tools.remote.tools import _call
from moreh_tools.smi.common import UserError

if TYPE_CHECKING:
    from moreh_tools.smi.device_cli import Added
    from moreh_tools.smi.devices import ModelOption

DEVICE_PATH = "/api/remote/smi/device"


class RemoteDevices:
    """The token's devices on the SDA Manager at MOREH_SDA_MANAGER_ADDRESS (see ``device_cli.Devices``)."""

    def __init__(self, token: str) -> None:
        """Devices of ``token``."""
        self.token = token

    def models(self, need_room: bool) -> list[ModelOption]:
        """The models the token may add a device of (refused at its max SDA with ``need_room``)."""
        reply = self._call("GET", f"{DEVICE_PATH}/models", {"room": need_room})
        return _options(reply["options"])

    def add(self, model: ModelOption | str) -> Added:
        """Add a device of ``model``: a picked option, or the text naming one."""
        from moreh_tools.smi.device_cli import Added

        params = {"model": model} if isinstance(model, str) else {"option": json.dumps(asdict(model))}
        reply = self._call("POST", f"{DEVICE_PATH}/add", params)
        return Added(str(reply["table"]), int(reply["room"]), _options(reply["options"]))

    def owned(self) -> tuple[list[int], str]:
        """The token's device ids and their short table."""
        reply = self._call("GET", f"{DEVICE_PATH}/owned")
        return [int(i) for i in reply["owned"]], str(reply["table"])

    def change(self, action: str, device_text: str) -> str:
        """Remove (``rm``) or switch to (``switch``) a device; the short table after it."""
        return str(self._call("POST", f"{DEVICE_PATH}/{action}", {"device": device_text})["table"])

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        reply = _call(method, path, self.token, params)
        if not isinstance(reply, dict):
            raise UserError("The SDA Manager sent a reply this moreh-smi cannot read; check the versions.")
        return reply


def _options(data: Any) -> list[ModelOption]:
    from moreh_tools.smi.devices import ModelOption

    try:
        return [ModelOption(**o) for o in data]
    except TypeError:
        raise UserError("The SDA Manager sent a reply this moreh-smi cannot read; check the versions.") from None
