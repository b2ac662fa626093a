"""One scheduling pass: the pure decision (``scheduler_core.scheduling.schedule``) and the same pass
run against a real state (``s.jobs.run_scheduling_pass()``: DuckDB reads, the decision, the writes).

Both use one generated cluster per size: several backend groups, some backends shut down or partly
busy with running jobs, a few shut-down devices and reserved SDAs, and a queue mixing 1, 2, 4, 8 and
16-device jobs of many priorities, some of duplicable tokens, some behind a running job of their SDA.

The pure pass is also timed under backfill (every job with a time limit, most running jobs too, so
the pass plans up to ``backfill_depth`` reservations) and with user-group quotas (half of them
borrowing) and fair-share factors on top. Passes against the state stay strict: the state does not
give the scheduler limits or quotas yet.
"""

from __future__ import annotations

import base64
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import Figure, median, progress, run_standalone, scratch_dir, time_call
from scheduler_core.fairshare import fairshare_factors
from scheduler_core.scheduling import (
    BACKFILL,
    BackendState,
    Decision,
    DeviceKey,
    DeviceState,
    QueuedJob,
    Quota,
    RunningJob,
    schedule,
)
from state.store import StateStore

BUSY_STATUSES = ("PROCESSING", "PROCESSING", "PREPARING", "CLEANING")
JOB_SIZES = (1, 2, 4, 8, 16)
JOB_SIZE_WEIGHTS = (40, 25, 15, 12, 8)
MODEL_OF_SIZE = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # the seed's SDA model ids
PRIORITIES = (-20, 0, 0, 0, 0, 5, 10, 10, 50, 99)
BASE_TIME = 1_700_000_000.0
NOW = BASE_TIME + 3600.0  # the pass's clock: an hour after the first request
LIMITS = (600.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)
USER_GROUPS = 6


@dataclass(frozen=True)
class Size:
    """One cluster size and its targets."""

    backends: int
    devices_per_backend: int
    queued: int
    groups: int
    target_ms: float
    runs: int
    state_runs: int

    @property
    def label(self) -> str:
        """``60x8, 1000 queued``."""
        return f"{self.backends}x{self.devices_per_backend}, {self.queued} queued"


FULL = (
    Size(60, 8, 1_000, groups=4, target_ms=20, runs=21, state_runs=5),
    Size(1_000, 8, 10_000, groups=8, target_ms=500, runs=7, state_runs=3),
)
QUICK = (
    Size(4, 8, 20, groups=2, target_ms=20, runs=3, state_runs=2),
    Size(8, 8, 60, groups=3, target_ms=500, runs=3, state_runs=2),
)


@dataclass
class Scenario:
    """A cluster and its queue, as the scheduler sees them, plus what the state needs to hold them."""

    backends: list[BackendState]
    queue: list[QueuedJob]
    active: dict[int, int]
    reserved: set[DeviceKey]
    tokens: dict[str, int] = field(default_factory=dict)  # token -> duplicable
    sdas: dict[int, tuple[str, int, int, bool]] = field(default_factory=dict)  # id -> token, size, group, reserved
    running: list[tuple[int, int, str, list[DeviceKey]]] = field(default_factory=list)  # job, sda, token, devices
    reservations: dict[int, tuple[DeviceKey, ...]] = field(default_factory=dict)  # reserved SDA -> its devices
    job_hosts: dict[int, str] = field(default_factory=dict)


def make_scenario(size: Size, seed: int = 7) -> Scenario:
    """A reproducible cluster and queue of the given size."""
    rng = random.Random(seed)
    backends: list[BackendState] = []
    for b in range(1, size.backends + 1):
        group = (b - 1) % size.groups
        active = b % 30 != 0
        busy = set(rng.sample(range(size.devices_per_backend), rng.randint(1, 6))) if rng.random() < 0.4 else set()
        devices = tuple(
            DeviceState(
                b,
                i,
                "SHUTDOWN" if not active or rng.random() < 0.02 else rng.choice(BUSY_STATUSES) if i in busy else "IDLE",
            )
            for i in range(size.devices_per_backend)
        )
        backends.append(BackendState(b, f"gpu-node-{b:04d}", group, active, devices))
    hosts_by_group: dict[int, list[str]] = {}
    for backend in backends:
        if backend.active:
            hosts_by_group.setdefault(backend.group_id, []).append(backend.host)

    # Token values of the real shape (24 characters of URL-safe base64), but drawn from the seeded generator.
    tokens = {
        base64.urlsafe_b64encode(rng.randbytes(17)).decode(): 0 if rng.random() < 0.1 else 1
        for _ in range(max(4, size.queued // 5))
    }
    token_list = list(tokens)
    scenario = Scenario(backends, [], {}, set(), tokens)
    next_sda = 1
    next_job = 1

    # Busy devices belong to running jobs, one per partly busy backend, each of its own SDA.
    for backend in backends:
        held = [(backend.id, d.index) for d in backend.devices if d.status in BUSY_STATUSES]
        if held:
            token = rng.choice(token_list)
            scenario.sdas[next_sda] = (token, len(held), backend.group_id, False)
            scenario.running.append((next_job, next_sda, token, held))
            scenario.active[next_sda] = 1
            next_sda += 1
            next_job += 1

    # A few reserved SDAs hold idle devices; half of them have a job waiting.
    reserved_jobs: list[tuple[int, tuple[DeviceKey, ...]]] = []
    for backend in rng.sample([b for b in backends if b.active], max(1, size.backends // 20)):
        idle = [(backend.id, d.index) for d in backend.devices if d.status == "IDLE"]
        if len(idle) < 2:
            continue
        kept = tuple(idle[: rng.choice((1, 2))])
        scenario.reserved.update(kept)
        scenario.reservations[next_sda] = kept
        scenario.sdas[next_sda] = (rng.choice(token_list), len(kept), backend.group_id, True)
        if rng.random() < 0.5:
            reserved_jobs.append((next_sda, kept))
        next_sda += 1

    # Ordinary SDAs: fewer than jobs, so some jobs queue behind another job of their SDA.
    ordinary = list(range(next_sda, next_sda + max(2, int(size.queued * 0.8))))
    for sda in ordinary:
        scenario.sdas[sda] = (
            rng.choice(token_list),
            rng.choices(JOB_SIZES, JOB_SIZE_WEIGHTS)[0],
            rng.randrange(size.groups),
            False,
        )
    for n in range(size.queued):
        reserved_devices: tuple[DeviceKey, ...] = ()
        if n < len(reserved_jobs):
            sda, reserved_devices = reserved_jobs[n]
        else:
            sda = rng.choice(ordinary)
        token, count, group, _ = scenario.sdas[sda]
        job_id = next_job + n
        scenario.queue.append(
            QueuedJob(
                id=job_id,
                token=token,
                sda_id=sda,
                priority=rng.choice(PRIORITIES),
                request_time=BASE_TIME + n * 0.05 + rng.random() * 0.05,
                device_count=count,
                backend_group_id=group,
                sda_limit=tokens[token],
                reserved_devices=reserved_devices,
            )
        )
        hosts = hosts_by_group.get(group) or [backends[0].host]
        scenario.job_hosts[job_id] = f"gpu-node-{reserved_devices[0][0]:04d}" if reserved_devices else rng.choice(hosts)
    rng.shuffle(scenario.queue)  # the scheduler must not rely on the order it is given
    return scenario


# -- the pure pass ----------------------------------------------------------------------------------


def measure_pure(size: Size, scenario: Scenario) -> Figure:
    """Median wall time of ``schedule`` over the scenario."""
    decision = schedule(scenario.backends, scenario.queue, scenario.active, scenario.reserved)
    times = [
        time_call(lambda: schedule(scenario.backends, scenario.queue, scenario.active, scenario.reserved))
        for _ in range(size.runs)
    ]
    ms = median(times) * 1000
    name = f"schedule() {size.label} (starts {len(decision.allocations)}, median of {size.runs})"
    return Figure(name, ms, "ms", f"<= {size.target_ms:g}", ms <= size.target_ms)


@dataclass(frozen=True)
class Planned:
    """The scenario with what backfill and quotas need: limits, running jobs, user groups, quotas, factors."""

    queue: list[QueuedJob]
    running: list[RunningJob]
    quotas: dict[tuple[int, int], Quota]
    fairshare: dict[int, float]


def with_limits(scenario: Scenario, seed: int = 11) -> Planned:
    """Give every queued job and most running jobs a limit, and every token one of a few user groups with quotas."""
    rng = random.Random(seed)
    group_of_token = {token: 1 + rng.randrange(USER_GROUPS) for token in scenario.tokens}
    backend_group = {b.id: b.group_id for b in scenario.backends}
    per_group: dict[int, int] = {}
    for b in scenario.backends:
        if b.active:
            per_group[b.group_id] = per_group.get(b.group_id, 0) + sum(d.status != "SHUTDOWN" for d in b.devices)
    # Nominal quotas add up to twice the devices (over-committed, so most jobs are within quota and
    # the pass plans as much as without quotas); odd groups may borrow as much again.
    quotas = {
        (g, bg): Quota(max(1, devices // 3), max(1, devices // 3) if g % 2 else 0)
        for bg, devices in per_group.items()
        for g in range(1, USER_GROUPS + 1)
    }
    running: list[RunningJob] = []
    used: dict[tuple[int, int], int] = {}
    for job_id, sda, token, devices in sorted(scenario.running):
        group = group_of_token[token]
        key = (group, backend_group[devices[0][0]])
        used[key] = used.get(key, 0) + len(devices)
        running.append(
            RunningJob(
                id=job_id,
                token=token,
                sda_id=sda,
                priority=0,
                devices=tuple(devices),
                start_time=NOW - rng.uniform(0, 3000),
                time_limit=None if rng.random() < 0.1 else rng.choice(LIMITS),
                backend_group_id=key[1],
                charged_group=group,
                borrowed=used[key] > quotas[key].nominal,
            )
        )
    queue = [
        QueuedJob(**{**j.__dict__, "time_limit": rng.choice(LIMITS), "charged_group": group_of_token[j.token]})
        for j in scenario.queue
    ]
    usage = {g: rng.uniform(0, 100 * 3600) for g in range(1, USER_GROUPS + 1)}
    factors = fairshare_factors(usage, dict.fromkeys(range(1, USER_GROUPS + 1), 1.0))
    return Planned(queue, running, quotas, factors)


def measure_backfill(size: Size, scenario: Scenario, *, quotas: bool) -> Figure:
    """Median wall time of a backfill pass (and with quotas and fair share) over the scenario."""
    planned = with_limits(scenario)
    extra: dict[str, object] = {"quotas": planned.quotas, "fairshare": planned.fairshare} if quotas else {}

    def one() -> Decision:
        return schedule(
            scenario.backends,
            planned.queue,
            scenario.active,
            scenario.reserved,
            running=planned.running,
            now=NOW,
            policy=BACKFILL,
            **extra,  # type: ignore[arg-type]
        )

    decision = one()
    times = [time_call(one) for _ in range(size.runs)]
    ms = median(times) * 1000
    what = "backfill + quotas + fair share" if quotas else "backfill"
    name = (
        f"schedule() {what} {size.label} ({len(planned.running)} running with limits, "
        f"{len(decision.reservations)} planned, starts {len(decision.allocations)}, median of {size.runs})"
    )
    return Figure(name, ms, "ms", f"<= {size.target_ms:g}", ms <= size.target_ms)


# -- the pass against a real state ------------------------------------------------------------------


def build_state(home: Path, scenario: Scenario) -> None:
    """Write the scenario into a fresh state in one transaction (bulk inserts)."""
    groups = sorted({b.group_id for b in scenario.backends} - {0})
    with StateStore(home).transaction("benchmark: bulk cluster") as s:
        c = s
        c.execute("INSERT INTO backend_groups SELECT unnest(?), 'rack' || unnest(?)", [groups, groups])
        c.execute(
            "INSERT INTO model_groups SELECT unnest(?), 'models-rack' || unnest(?), unnest(?)", [groups, groups, groups]
        )
        c.execute(
            "INSERT INTO backends (id, host, ip, group_id, status, created_at) "
            "SELECT unnest(?), unnest(?), '10.0.0.1', unnest(?), unnest(?), now()",
            [
                [b.id for b in scenario.backends],
                [b.host for b in scenario.backends],
                [b.group_id for b in scenario.backends],
                ["ACTIVE" if b.active else "SHUTDOWN" for b in scenario.backends],
            ],
        )
        devices = [d for b in scenario.backends for d in b.devices]
        c.execute(
            "INSERT INTO devices (backend_id, idx, status) SELECT unnest(?), unnest(?), unnest(?)",
            [[d.backend_id for d in devices], [d.index for d in devices], [d.status for d in devices]],
        )
        c.execute(
            "INSERT INTO tokens (value, description, duplicable, created_at) "
            "SELECT unnest(?), 'bench-user', unnest(?), now()",
            [list(scenario.tokens), list(scenario.tokens.values())],
        )
        sda_ids = list(scenario.sdas)
        c.execute(
            "INSERT INTO sdas (id, token, model_id, model_group_id, reserved, created_at) "
            "SELECT unnest(?), unnest(?), unnest(?), nullif(unnest(?), 0), unnest(?), now()",
            [
                sda_ids,
                [scenario.sdas[i][0] for i in sda_ids],
                [MODEL_OF_SIZE.get(scenario.sdas[i][1], 1) for i in sda_ids],
                [scenario.sdas[i][2] for i in sda_ids],
                [scenario.sdas[i][3] for i in sda_ids],
            ],
        )
        holds = [(sda, key) for sda, devices in scenario.reservations.items() for key in devices]
        if holds:
            c.execute(
                "INSERT INTO sda_reservations SELECT unnest(?), unnest(?), unnest(?)",
                [[h[0] for h in holds], [h[1][0] for h in holds], [h[1][1] for h in holds]],
            )
        queue = scenario.queue
        # A job launched by moreh-run names the backend of its host (jobs.backend_id): it runs there only.
        backend_of = {b.host: b.id for b in scenario.backends}
        c.execute(
            "INSERT INTO jobs (id, token, sda_id, priority, status, host, device_count, request_time, backend_id) "
            "SELECT unnest(?), unnest(?), unnest(?), unnest(?), 'QUEUED', unnest(?), unnest(?), to_timestamp(unnest(?)), "
            "unnest(?)",
            [
                [j.id for j in queue],
                [j.token for j in queue],
                [j.sda_id for j in queue],
                [j.priority for j in queue],
                [scenario.job_hosts[j.id] for j in queue],
                [j.device_count for j in queue],
                [j.request_time for j in queue],
                [backend_of.get(scenario.job_hosts[j.id]) for j in queue],
            ],
        )
        run = scenario.running
        c.execute(
            "INSERT INTO jobs (id, token, sda_id, priority, status, host, device_count, request_time, start_time) "
            "SELECT unnest(?), unnest(?), unnest(?), 0, 'RUNNING', unnest(?), unnest(?), now(), now()",
            [
                [r[0] for r in run],
                [r[2] for r in run],
                [r[1] for r in run],
                [f"gpu-node-{r[3][0][0]:04d}" for r in run],
                [len(r[3]) for r in run],
            ],
        )
        held = [(r[0], key) for r in run for key in r[3]]
        c.execute(
            "INSERT INTO job_devices SELECT unnest(?), unnest(?), unnest(?)",
            [[h[0] for h in held], [h[1][0] for h in held], [h[1][1] for h in held]],
        )


def measure_state(size: Size, scenario: Scenario, root: Path) -> list[Figure]:
    """Time ``run_scheduling_pass`` on a fresh copy of the state each run (it changes the state)."""
    pristine = root / f"pristine-{size.backends}"
    progress(f"state pass {size.label}: building the state")
    build_state(pristine, scenario)
    passes: list[float] = []
    reads: list[float] = []
    whole: list[float] = []
    started_jobs = 0
    for n in range(size.state_runs):
        home = root / f"run-{size.backends}-{n}"
        shutil.copytree(pristine, home)
        store = StateStore(home)
        store.schema_version()  # the schema check of a new StateStore is not part of a pass
        began = time.perf_counter()
        with store.transaction("benchmark: scheduling pass") as s:
            reads.append(time_call(s.jobs.snapshot))
            in_pass = time.perf_counter()
            decision = s.jobs.run_scheduling_pass()
            passes.append(time.perf_counter() - in_pass)
        whole.append(time.perf_counter() - began)
        started_jobs = len(decision.allocations)
        shutil.rmtree(home)
    runs = size.state_runs
    return [
        Figure(
            f"state: snapshot() reads (queue, running jobs, plan, quotas), {size.label} (median of {runs})",
            median(reads) * 1000,
            "ms",
        ),
        Figure(
            f"state: run_scheduling_pass() {size.label} (starts {started_jobs}, median of {runs})",
            median(passes) * 1000,
            "ms",
        ),
        Figure("state: same pass as one whole transaction (lock, open, commit)", median(whole) * 1000, "ms"),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Time the pure pass and the state pass at each size; return the figures."""
    figures: list[Figure] = []
    sizes = QUICK if quick else FULL
    for size in sizes:
        progress(f"schedule() {size.label}")
        scenario = make_scenario(size)
        figures.append(measure_pure(size, scenario))
        figures.append(measure_backfill(size, scenario, quotas=False))
        figures.append(measure_backfill(size, scenario, quotas=True))
    with scratch_dir("scheduler") as root:
        for size in sizes:
            figures += measure_state(size, make_scenario(size), root)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
