"""The REST API through ``sdamanager`` under load (issues 6 and 11).

A real ``sdamanager --api 127.0.0.1:0`` (8 simulated GPUs, its daemon ticking) owns a scratch state with a
queue of waiting jobs. In one run, side by side:

* **ceiling**: ``GET /api/v1/ping`` (constant JSON, no state) with 32 concurrent clients;
* ``GET /api/scheduler/queue`` (200 waiting jobs) with the same 32 clients: req/s as a share of the
  ceiling, and p99;
* ``POST /api/sdamanager/sda`` with 32 clients, each POST an SDA for a token of its own (a token holds one
  SDA by default), and again with 4 clients (an admin script's concurrency). With 32 clients in a closed
  loop, Little's law fixes latency = 32 / throughput, so the 32-client p99 shows the write rate more than
  anyone's wait;
* **hosts**: 60 simulated hosts, each reporting its 8 GPUs every 2 s through the real client
  (``MasterSink`` over the HTTP port, one HOST token shared by all) while a user polls
  ``GET /api/sdamanager/sda`` back to back: reports skipped or refused, report latency, the user's p99.

The HTTP clients are asyncio tasks on one httpx client with 32 connections in this process (the same
client for the ceiling and the measured routes, so its cost cancels out in the ratio). The rate limit is
off for the 32-client phases (``MOREH_API_RATE=0``): it would stop a benchmark long before it measures
anything; the hosts' phase runs with the default budget on, as a deployment does.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import Figure, console_script, median, percentile, progress, run_standalone, scratch_dir, subprocess_env
from state.store import StateStore

CLIENTS = 32
FEW_CLIENTS = 4
LISTENING = re.compile(r"serving the API on (?P<url>http://\S+) ")
REPORT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Sizes:
    """How much load each phase sends."""

    requests: int
    waiting: int
    hosts: int
    host_seconds: float


FULL = Sizes(requests=20 * CLIENTS, waiting=200, hosts=60, host_seconds=30.0)
QUICK = Sizes(requests=CLIENTS, waiting=10, hosts=4, host_seconds=4.0)


@dataclass(frozen=True)
class Seeded:
    """The tokens the phases use."""

    admin: str
    fresh: list[str]
    host: str
    user: str


def _seed(home: Path, tokens: int, waiting_jobs: int) -> Seeded:
    """An ADMIN token, ``tokens`` fresh USER tokens, a HOST token, a user with an SDA, and waiting jobs."""
    with StateStore(home).transaction("bench: seed the API state") as s:
        admin = s.tokens.create("bench-admin", 0)
        s.tokens.update_access_level(admin, "ADMIN")
        host = s.tokens.create("bench-hosts", 0)
        s.tokens.update_access_level(host, "HOST")
        user = s.tokens.create("bench-user", 0)
        s.sdas.create(user, "", 1)
        fresh = [s.tokens.create(f"bench-user-{i}", 0) for i in range(2 * tokens)]
        elsewhere = s.backends.create("bench-elsewhere", "10.200.0.1", 8)
        queued_by = [s.tokens.create(f"bench-queue-{i}", i % 10) for i in range(max(1, waiting_jobs // 4))]
        for i in range(waiting_jobs):
            token = queued_by[i % len(queued_by)]
            sdas = s.sdas.of_token(token)
            sda_id = sdas[0].id if sdas else s.sdas.create(token, "", 1 + i % 3)
            s.jobs.submit(
                token, sda_id, backend_id=s.backends.local_id("bench-elsewhere"), launcher_pid=1, launcher_create_time=0.0, process_name="train.py"
            )
        # Its devices shut down after the submits: the jobs stay waiting and the queue keeps its length.
        s.backends.update_device(elsewhere, None, "SHUTDOWN")
    return Seeded(admin, fresh, host, user)


def _start(home: Path, cache: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    env = subprocess_env(home, cache, {"MOREH_FAKE_GPUS": "8", "MOREH_HOSTNAME": "bench-master", **extra_env})
    log = home.parent / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [console_script("sdamanager"), "--api", "127.0.0.1:0"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return process, match["url"]
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"benchmarks: sdamanager --api did not start: {log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


async def _load(
    url: str,
    admin: str,
    make_request: Callable[[int], tuple[str, str, dict[str, str]]],
    total: int,
    clients: int = CLIENTS,
) -> tuple[float, list[float], int]:
    """Send ``total`` requests from ``clients`` tasks; return wall seconds, per-request latencies, failures."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal failures
            for number in counter:
                method, path, params = make_request(number)
                started = time.perf_counter()
                response = await client.request(method, path, params=params)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1
                    if failures == 1:
                        progress(f"first failure: {method} {path} -> {response.status_code} {response.text[:200]}")

        # Every connection set up outside the timing.
        await asyncio.gather(*(client.get("/api/v1/ping") for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started, latencies, failures


def _figures(
    label: str, wall: float, latencies: list[float], failures: int, clients: int, p99_target_ms: float | None = None
) -> list[Figure]:
    p99 = percentile(latencies, 0.99) * 1000
    figures = [
        Figure(f"{label}: requests/s, {clients} clients", len(latencies) / wall, "req/s"),
        Figure(f"{label}: p50 latency", median(latencies) * 1000, "ms"),
    ]
    if p99_target_ms is None:
        figures.append(Figure(f"{label}: p99 latency", p99, "ms"))
    else:
        figures.append(Figure(f"{label}: p99 latency", p99, "ms", f"<= {p99_target_ms:g}", p99 <= p99_target_ms))
    figures.append(Figure(f"{label}: failed requests", failures, "count", "== 0", failures == 0))
    return figures


def _rest_phases(url: str, seeded: Seeded, sizes: Sizes) -> list[Figure]:
    requests = sizes.requests
    progress(f"GET /api/v1/ping x {requests} (the ceiling)")
    ping = asyncio.run(_load(url, seeded.admin, lambda n: ("GET", "/api/v1/ping", {}), requests))
    progress(f"GET /api/scheduler/queue x {requests}")
    queue = asyncio.run(_load(url, seeded.admin, lambda n: ("GET", "/api/scheduler/queue", {}), requests))
    ceiling_rate = len(ping[1]) / ping[0]
    queue_rate = len(queue[1]) / queue[0]
    figures = _figures("GET /api/v1/ping (ceiling)", *ping, CLIENTS)
    figures += _figures(f"GET /api/scheduler/queue ({sizes.waiting} waiting)", *queue, CLIENTS, 100)
    share = queue_rate / ceiling_rate
    figures.append(Figure("GET /api/scheduler/queue: share of the ceiling's req/s", share, "x", ">= 0.5", share >= 0.5))

    def create(offset: int) -> Callable[[int], tuple[str, str, dict[str, str]]]:
        return lambda n: ("POST", "/api/sdamanager/sda", {"model": "1", "token": seeded.fresh[offset + n], "desc": f"b{n}"})

    progress(f"POST /api/sdamanager/sda x {requests}, {CLIENTS} clients")
    post = asyncio.run(_load(url, seeded.admin, create(0), requests))
    figures += _figures("POST /api/sdamanager/sda", *post, CLIENTS)
    progress(f"POST /api/sdamanager/sda x {requests}, {FEW_CLIENTS} clients")
    post_few = asyncio.run(_load(url, seeded.admin, create(requests), requests, FEW_CLIENTS))
    figures += _figures("POST /api/sdamanager/sda", *post_few, FEW_CLIENTS, 150)
    return figures


class HostLoad:
    """``count`` simulated hosts reporting every REPORT_INTERVAL_S through the real client, one thread each."""

    def __init__(self, url: str, token: str, count: int, home: Path) -> None:
        """Hosts ``bench-host-<i>`` with 8 simulated GPUs each, reporting to ``url`` with ``token``."""
        self.url = url
        self.token = token
        self.count = count
        self.home = home
        self.latencies: list[float] = []
        self.skipped = 0
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run_host(self, number: int, start_at: float) -> None:
        from moreh_tools.daemon.host import MasterSink
        from moreh_tools.gpus.simulated import SimulatedGpuProvider
        from moreh_tools.port import RemotePort
        from moreh_tools.services.hosts import read_gpus

        name = f"bench-host-{number}"
        provider = SimulatedGpuProvider(8, 81920, hostname=name)
        body = read_gpus(provider, str(self.home))  # the same body every time: a load generator's liberty
        port = RemotePort(self.url.removeprefix("http://"), self.token, "bench-host")
        sink = MasterSink(port, name, f"10.201.{number // 250}.{number % 250 + 1}", f"bench-machine-{number:04d}")
        sink.report(*body)  # registration, outside the timing
        # Spread the hosts over the interval, as hosts started at different times are.
        next_at = start_at + REPORT_INTERVAL_S * number / self.count
        while not self.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                if self.stop.wait(delay):
                    break
            elif -delay >= REPORT_INTERVAL_S:
                missed = int(-delay // REPORT_INTERVAL_S)
                with self.lock:
                    self.skipped += missed  # the previous report was still going when this one was due
                next_at += missed * REPORT_INTERVAL_S
            started = time.monotonic()
            try:
                sink.report(*body)
            except Exception as exc:  # counted and shown: the load goes on
                with self.lock:
                    self.failed.append(f"{name}: {exc}")
            with self.lock:
                self.latencies.append(time.monotonic() - started)
            next_at += REPORT_INTERVAL_S
        port.close()


def _host_phase(url: str, seeded: Seeded, sizes: Sizes, home: Path) -> list[Figure]:
    load = HostLoad(url, seeded.host, sizes.hosts, home)
    start_at = time.monotonic() + 3.0  # every host registered by then
    threads = [threading.Thread(target=load.run_host, args=(i, start_at), daemon=True) for i in range(sizes.hosts)]
    progress(f"{sizes.hosts} hosts reporting every {REPORT_INTERVAL_S:g} s for {sizes.host_seconds:g} s, a user polling")
    for thread in threads:
        thread.start()
    polls: list[float] = []
    poll_failures = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {seeded.user}"}, timeout=60) as client:
        client.get("/api/v1/ping")
        while time.monotonic() < start_at:
            time.sleep(0.05)
        until = start_at + sizes.host_seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            response = client.get("/api/sdamanager/sda")
            polls.append(time.perf_counter() - started)
            poll_failures += response.status_code != 200
            time.sleep(0.02)  # a dashboard-like poller, not a flood
    load.stop.set()
    for thread in threads:
        thread.join(timeout=30)
    for line in load.failed[:3]:
        progress(f"report failed: {line}")
    expected = sizes.hosts * sizes.host_seconds / REPORT_INTERVAL_S
    user_p99 = percentile(polls, 0.99) * 1000
    return [
        Figure(f"{sizes.hosts} hosts: reports sent (of ~{expected:.0f} due)", len(load.latencies), "count"),
        Figure(f"{sizes.hosts} hosts: reports skipped", load.skipped, "count", "== 0", load.skipped == 0),
        Figure(f"{sizes.hosts} hosts: reports refused or failed", len(load.failed), "count", "== 0", not load.failed),
        Figure(f"{sizes.hosts} hosts: report p50 latency", median(load.latencies) * 1000, "ms"),
        Figure(f"{sizes.hosts} hosts: report p99 latency", percentile(load.latencies, 0.99) * 1000, "ms"),
        Figure(f"{sizes.hosts} hosts: user GET /api/sdamanager/sda polls", len(polls), "count"),
        Figure(f"{sizes.hosts} hosts: user GET /api/sdamanager/sda p50", median(polls) * 1000, "ms"),
        Figure(f"{sizes.hosts} hosts: user GET /api/sdamanager/sda p99", user_p99, "ms", "<= 100", user_p99 <= 100),
        Figure(f"{sizes.hosts} hosts: user requests failed", poll_failures, "count", "== 0", poll_failures == 0),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Measure the ceiling, the queue, SDA creation, and the hosts' reports; ``quick`` sends a little of each."""
    sizes = QUICK if quick else FULL
    with scratch_dir("api") as scratch:
        home, cache = scratch / "home", scratch / "cache"
        progress(f"seeding {sizes.waiting} waiting jobs and {2 * sizes.requests} tokens")
        seeded = _seed(home, sizes.requests, sizes.waiting)
        process, url = _start(home, cache, {"MOREH_API_RATE": "0"})
        try:
            figures = _rest_phases(url, seeded, sizes)
        finally:
            _stop(process)
        process, url = _start(home, cache, {})
        try:
            figures += _host_phase(url, seeded, sizes, home)
        finally:
            _stop(process)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
