"""The short per-device history behind the sparklines: kept by the app, one point per poll."""

from __future__ import annotations

from collections import deque

from moreh_tools.services.records import DeviceStatus, SmiStatus

HISTORY_POINTS = 120


def memory_percent(device: DeviceStatus) -> float | None:
    """The device's memory in use as a percentage of its GPUs' memory (None while idle)."""
    used, total = device.memory_used_mib, device.memory_total_mib
    if used is None or not total:
        return None
    return 100 * used / total


class DeviceHistory:
    """Utilisation and memory percentages of each device over the last :data:`HISTORY_POINTS` polls."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        """Keep at most ``points`` values per device."""
        self.points = points
        self._util: dict[int, deque[float | None]] = {}
        self._memory: dict[int, deque[float | None]] = {}

    def record(self, status: SmiStatus) -> None:
        """Add one point per device; devices that are gone are forgotten."""
        ids = {d.id for d in status.devices}
        for series in (self._util, self._memory):
            for gone in set(series) - ids:
                del series[gone]
        for device in status.devices:
            util = float(device.utilization) if device.utilization is not None else None
            self._util.setdefault(device.id, deque(maxlen=self.points)).append(util)
            self._memory.setdefault(device.id, deque(maxlen=self.points)).append(memory_percent(device))

    def utilization(self, device_id: int) -> list[float | None]:
        """The device's utilisation points, oldest first."""
        return list(self._util.get(device_id, ()))

    def memory(self, device_id: int) -> list[float | None]:
        """The device's memory points, oldest first."""
        return list(self._memory.get(device_id, ()))
