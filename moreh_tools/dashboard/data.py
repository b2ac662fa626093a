"""The dashboard's data: polls and actions through the port, wherever the state is.

Everything here runs in a worker thread, never in Textual's event loop. A poll hands back the
fingerprint of the state it last drew, and an unchanged state answers with nothing but that (the
dashboard idles at a small fraction of a core); the usage panel, which ages though nothing changes,
is read again at least every :data:`USAGE_MAX_AGE_S` seconds.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from moreh_tools.port import ops
from moreh_tools.services.records import Access, Snapshot, SwitchChoices, View

if TYPE_CHECKING:
    from moreh_tools.port import Port
    from moreh_tools.services.records import ModelOption

DEFAULT_INTERVAL_S = 1.0
#: Usage counts running jobs up to now, so it ages although nothing changes; re-read it this often.
USAGE_MAX_AGE_S = 30.0


class DataSource(Protocol):
    """What the app needs: polls and actions. Tests pass a fixed source for deterministic screens."""

    access: Access

    def fetch(self, view: View) -> Snapshot:
        """Read what ``view`` shows (blocking; called in a worker thread)."""
        ...

    def release(self, job_id: int) -> str:
        """Release a job; return the message to show."""
        ...

    def set_priority(self, job_id: int, priority: int) -> str:
        """Change a queued job's priority; return the message to show."""
        ...

    def model_choices(self) -> SwitchChoices:
        """The models the current device may switch to."""
        ...

    def switch_model(self, option: ModelOption) -> str:
        """Switch the current device's model; return the message to show."""
        ...


class PortSource:
    """The dashboard's data source over a port (the state file, the local daemon or a master)."""

    def __init__(self, port: Port, access: Access) -> None:
        """Read through ``port`` as ``access`` allows."""
        self.port = port
        self.access = access
        self._last: dict[View, Snapshot] = {}
        self._read_at: dict[View, float] = {}

    def fetch(self, view: View) -> Snapshot:
        """Read ``view``; an unchanged state returns the last snapshot marked ``changed=False``."""
        last = self._last.get(view)
        fresh = last is None or time.monotonic() - self._read_at.get(view, 0.0) >= USAGE_MAX_AGE_S
        since = "" if fresh or last is None else last.fingerprint
        snapshot = self.port.call(ops.DASHBOARD_SNAPSHOT, view=view, since=since)
        if not snapshot.changed and last is not None:
            return replace(last, taken_at=snapshot.taken_at, daemon_running=snapshot.daemon_running, changed=False)
        if last is not None and (snapshot.user, snapshot.admin) == (last.user, last.admin):
            snapshot = replace(snapshot, changed=False)
        self._last[view] = snapshot
        self._read_at[view] = time.monotonic()
        return snapshot

    def forget(self) -> None:
        """Read everything again at the next fetch (after an action of ours)."""
        self._read_at.clear()

    def release(self, job_id: int) -> str:
        """Release a job (queued: it leaves the queue; running: its processes are stopped)."""
        who = "an admin" if self.access.admin else "its user"
        released = self.port.call(ops.JOB_RELEASE, job_ids=[job_id], detail=f"released by {who} (dashboard)")
        self.forget()
        if not released:
            return f"Job {job_id} has already ended; nothing was changed."
        return f"Job {job_id} released."

    def set_priority(self, job_id: int, priority: int) -> str:
        """Change a queued job's priority and let the scheduler act on the new order at once."""
        self.port.call(ops.JOB_PRIORITY, job_id=job_id, priority=priority)
        self.forget()
        return f"Job {job_id} priority set to {priority}."

    def model_choices(self) -> SwitchChoices:
        """The current device and the models this token may switch it to."""
        if self.access.token is None:
            from moreh_tools.runtime import ToolError

            raise ToolError("Switching a model needs a token (MOREH_SDA_TOKEN); the admin view has none.")
        return self.port.call(ops.SWITCH_CHOICES)

    def switch_model(self, option: ModelOption) -> str:
        """Switch the current device to ``option`` (refused while a job uses the device)."""
        switched = self.port.call(ops.SWITCH_MODEL, option=option)
        self.forget()
        if not switched.changed:
            return f"The device already is {option.text}; nothing was changed."
        return f'The model is successfully switched to "{option.text}".'
