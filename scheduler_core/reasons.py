"""Why a job waits, as a short stable code that UIs, the API and scripts can match on.

Every job that a scheduling pass leaves waiting gets exactly one code from :data:`REASON_CODES`
(in ``Decision.reason_codes``) next to the human sentence (``Decision.waiting``). The codes follow
Slurm's ``squeue %r`` names where Slurm has one (``Priority``, ``Resources``, ``QOSMaxGRESPerUser``
is our ``QuotaExceeded``), so people who know Slurm read them without a table. Only
``ReservedForJob`` carries a value: ``ReservedForJob:<job id>`` names the job whose reservation the
waiting job would delay.
"""

from __future__ import annotations

from types import MappingProxyType

PRIORITY = "Priority"
RESOURCES = "Resources"
RESERVED_FOR_JOB = "ReservedForJob"
SDA_BUSY = "SdaBusy"
NO_BACKEND = "NoBackend"
NEVER_FITS = "NeverFits"
RESERVED_SDA = "ReservedSda"
QUOTA_EXCEEDED = "QuotaExceeded"
BORROWING_LIMIT_REACHED = "BorrowingLimitReached"
PREEMPTING = "Preempting"
STARTING = "Starting"

REASON_CODES = MappingProxyType(
    {
        PRIORITY: "waits behind an earlier job (in scheduling order) that could use the same backends and has no "
        "planned start, so nothing may overtake it there",
        RESOURCES: "not enough eligible devices are idle now; the job starts when they are (see its expected start)",
        RESERVED_FOR_JOB: "enough devices are idle, but they are held for an earlier job's planned start and this "
        "job's time limit would run past it; the code names that job (ReservedForJob:<id>)",
        SDA_BUSY: "the job's SDA already runs as many jobs as it may (one process per SDA unless the token is "
        "duplicable)",
        NO_BACKEND: "no ACTIVE backend of the job's backend group may run it (its host is not a registered backend, "
        "or its backend is shut down or in another group)",
        NEVER_FITS: "the job asks for more devices than its backends have usable (or for none): it cannot start "
        "until an admin adds devices",
        RESERVED_SDA: "the job of a reserved SDA waits for its SDA's own reserved devices (or cannot use them)",
        QUOTA_EXCEEDED: "the job's user group has used its GPU quota on this backend group and may not borrow",
        BORROWING_LIMIT_REACHED: "the job's user group has used its quota and all the devices it may borrow on this "
        "backend group",
        PREEMPTING: "borrowed jobs of other user groups are being stopped to give this job (within its group's "
        "quota) their devices; it starts when they have ended",
        STARTING: "nothing holds the job back: the next scheduling pass starts it (a view read between two passes "
        "sees this; the scheduler itself never leaves a job waiting with it)",
    }
)
"""Every reason code a waiting job can get, with what it means (for docs, ``--help`` and UIs)."""


def reserved_for(job_id: int) -> str:
    """Return the code of a job that waits so as not to delay job ``job_id``'s reservation."""
    return f"{RESERVED_FOR_JOB}:{job_id}"


def split_code(code: str) -> tuple[str, int | None]:
    """Split a reason code into its name and the job id it names (``ReservedForJob:12`` -> ("ReservedForJob", 12)).

    Raises:
        ValueError: ``code`` is not one of :data:`REASON_CODES` (with a job id for ``ReservedForJob``).
    """
    name, sep, value = code.partition(":")
    if name not in REASON_CODES or bool(sep) != (name == RESERVED_FOR_JOB):
        raise ValueError(f"unknown scheduler reason code '{code}': use one of {', '.join(REASON_CODES)}")
    if not sep:
        return name, None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"unknown scheduler reason code '{code}': ReservedForJob takes a job id (ReservedForJob:12)")
    return name, int(value)


def reason_meaning(code: str) -> str:
    """Return the one-line meaning of a reason code, naming the job for ``ReservedForJob:<id>``.

    Raises:
        ValueError: the code is unknown.
    """
    name, job_id = split_code(code)
    if job_id is not None:
        return f"enough devices are idle, but they are held for job {job_id}'s planned start and this job's time limit would run past it"
    return REASON_CODES[name]
