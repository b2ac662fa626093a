"""Answers about a token's devices: the models it may choose, adding, removing and switching devices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moreh_tools.services.records.status import DeviceStatus

if TYPE_CHECKING:
    from state.records.catalogue import SDA


@dataclass(frozen=True)
class ModelOption:
    """One line of a numbered model list: a model the token may use, and the group it comes through."""

    number: int
    model_id: int
    name: str
    devices: int
    group_id: int | None
    group_name: str | None

    @property
    def label(self) -> str:
        """``Large.256GB``, or ``small mg1`` when the model comes through an SDA model group (seed FAQ)."""
        return f"{self.name} {self.group_name}" if self.group_name else self.name

    @property
    def text(self) -> str:
        """``small at mg1`` (the ``Current …:`` line's form), or just the name."""
        return f"{self.name} at {self.group_name}" if self.group_name else self.name

    def is_model_of(self, sda: SDA) -> bool:
        """Whether this is the SDA's model, reached through the SDA's group."""
        return self.model_id == sda.model_id and self.group_id == sda.model_group_id


@dataclass(frozen=True)
class Added:
    """What the user sees after adding a device, and whether the picker may go on."""

    devices: tuple[DeviceStatus, ...]
    room: int
    options: tuple[ModelOption, ...]


@dataclass(frozen=True)
class OwnedDevices:
    """The token's device ids and its devices as the short table shows them."""

    ids: tuple[int, ...]
    devices: tuple[DeviceStatus, ...]


@dataclass(frozen=True)
class SwitchChoices:
    """What moreh-switch-model offers: the current model's text and the numbered options."""

    current: str
    current_option: ModelOption | None
    options: tuple[ModelOption, ...]
    device_id: int
    busy: str | None = None


@dataclass(frozen=True)
class Switched:
    """The model switched to, and whether anything changed."""

    option: ModelOption
    changed: bool
