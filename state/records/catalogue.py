"""Records of the catalogue: tokens, SDAs and their models, groups, backends and their devices, versions, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from state.records.jobs import DeviceRef


@dataclass(frozen=True)
class Token:
    """A user's identity: what ``show token`` and ``get token`` print."""

    value: str
    description: str
    priority: int
    access_level: str
    current_sda: int | None
    max_sda: int
    duplicable: int
    worker_execute_info: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def duplicable_text(self) -> str:
        """``off`` for 1 (one process per SDA), ``unlimited`` for 0, otherwise the count."""
        if self.duplicable == 1:
            return "off"
        if self.duplicable == 0:
            return "unlimited"
        return str(self.duplicable)

    @property
    def env_text(self) -> str:
        """The token's environment values as ``NAME=value, NAME=value``."""
        if not self.env:  # most tokens; 'show token' asks 10,000 of them
            return ""
        return ", ".join(f"{name}={value}" for name, value in self.env)


@dataclass(frozen=True)
class SDAModel:
    """A size of accelerator: how many whole devices an SDA of this model gets."""

    id: int
    name: str
    devices: int


@dataclass(frozen=True)
class SDA:
    """A token's software-defined accelerator."""

    id: int
    token: str
    model_id: int
    model_group_id: int | None
    description: str
    reserved: bool
    devices: tuple[DeviceRef, ...] = ()


@dataclass(frozen=True)
class UserGroup:
    """A named set of tokens."""

    id: int
    name: str
    description: str
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelGroup:
    """A named set of SDA models tied to one backend group."""

    id: int
    name: str
    backend_group_id: int
    backend_group_name: str
    models: tuple[SDAModel, ...] = ()


@dataclass(frozen=True)
class BackendGroup:
    """A named set of backends; id 0 is the default group every backend starts in."""

    id: int
    name: str
    backends: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Device:
    """One GPU of a backend with its scheduling status and its last sampled figures."""

    backend_id: int
    index: int
    status: str
    uuid: str | None = None
    name: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    util_gpu: int | None = None
    util_mem: int | None = None
    temp_gpu: int | None = None
    temp_mem: int | None = None


@dataclass(frozen=True)
class Backend:
    """A worker node and its devices."""

    id: int
    host: str
    ip: str
    group_id: int
    group_name: str
    status: str
    devices: tuple[Device, ...] = field(default=())


@dataclass(frozen=True)
class Version:
    """A worker software version and how to run it."""

    version: str
    supported: bool
    latest: bool
    path: str
    query_command: str
    worker_command: str
    health_check_command: str
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Event:
    """One entry of the event log: every state change writes one."""

    id: int
    time: datetime
    action: str
    token: str
    command: str
    detail: str
    origin: str = ""  # who asked: ``uid=N`` and the way in (file, socket, http); empty for older entries
