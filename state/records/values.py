"""The values some record fields may take (statuses, end reasons, flag kinds, scopes): plain constants, no classes,
so a module that only needs one of them (a status name) does not build the records."""

from __future__ import annotations

# HOST is ours (not in the manual): the token of a GPU host's sdamanager, which may register the host and report
# its GPUs, and nothing else an ADMIN may do.
ACCESS_LEVELS = ("USER", "ADMIN", "DEVELOPER", "HOST")

BACKEND_STATUSES = ("SHUTDOWN", "ACTIVE")

# UNHEALTHY: the GPU guardian saw the GPU fail (a critical Xid, uncorrectable ECC errors, pending page retirement or
# row remapping, lost); it is never allocated until an admin sets it IDLE again ('update device').
DEVICE_STATUSES = ("SHUTDOWN", "IDLE", "PREPARING", "PROCESSING", "CLEANING", "UNHEALTHY")

UNHEALTHY = "UNHEALTHY"

PRIORITY_MIN, PRIORITY_MAX = -99, 99

JOB_STATUSES = ("QUEUED", "SUBMITTED", "RUNNING")

# ``cancelled``: its own user interrupted a job that was still waiting (Ctrl-C), unlike ``released`` (someone
# asked a job to stop: an admin, the user's moreh-smi -r, the dashboard). ``timeout``: the job reached its time
# limit. ``preempted``: the scheduler took its (borrowed) devices back for a user group within its quota.
# ``idle``: the GPU guardian reclaimed the devices of a job that stayed idle for its idle policy's window.
END_REASONS = ("finished", "failed", "released", "lost", "cancelled", "timeout", "preempted", "idle")

QUOTA_REQUEST_STATUSES = ("PENDING", "APPROVED", "REJECTED", "EXPIRED")

#: Kinds of :class:`DeviceFlag`: the device failed (its status is UNHEALTHY), a process outside the scheduler
#: uses it, a job's process uses it although the job was not given it, or NVML fails on the whole host.
FLAG_UNHEALTHY, FLAG_FOREIGN, FLAG_ESCAPED, FLAG_NVML = "unhealthy", "foreign", "escaped", "nvml"

FLAG_KINDS = (FLAG_UNHEALTHY, FLAG_FOREIGN, FLAG_ESCAPED, FLAG_NVML)

#: Scopes of an idle policy: a token, or an SDA model (by id).
IDLE_SCOPES = ("token", "sdamodel")
