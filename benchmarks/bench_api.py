"""The REST API under load: requests per second and latency percentiles of ``GET /api/scheduler/queue`` and
``POST /api/sdamanager/sda`` with 32 concurrent clients on loopback (issue 6).

A real ``sdamanager --api 127.0.0.1:0`` (8 simulated GPUs, its daemon ticking) serves a scratch state with
a queue of waiting jobs; the clients are 32 asyncio tasks on one httpx client with 32 connections, in this
process. Each POST creates an SDA for a token of its own (a token holds one SDA by default). The rate limit is
off (``MOREH_API_RATE=0``): it would stop a benchmark long before it measures anything.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks import Figure, console_script, median, percentile, progress, run_standalone, scratch_dir, subprocess_env
from state.store import StateStore

CLIENTS = 32
LISTENING = re.compile(r"serving the API on (?P<url>http://\S+) ")


def _seed(home: Path, tokens: int, waiting_jobs: int) -> tuple[str, list[str]]:
    """An ADMIN token, ``tokens`` fresh USER tokens, and ``waiting_jobs`` jobs queued for a host with no backend."""
    with StateStore(home).transaction("bench: seed the API state") as s:
        admin = s.tokens.create("bench-admin", 0)
        s.tokens.update_access_level(admin, "ADMIN")
        fresh = [s.tokens.create(f"bench-user-{i}", 0) for i in range(tokens)]
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
    return admin, fresh


def _start(home: Path, cache: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = subprocess_env(home, cache, {"MOREH_FAKE_GPUS": "8", "MOREH_API_RATE": "0", "MOREH_HOSTNAME": "bench-master"})
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


async def _load(
    url: str, admin: str, make_request: Callable[[int], tuple[str, str, dict[str, str]]], total: int
) -> tuple[float, list[float], int]:
    """Send ``total`` requests from CLIENTS tasks; return wall seconds, per-request latencies, failures."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
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

        await client.get("/api/check")  # connection set up outside the timing
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return time.perf_counter() - started, latencies, failures


def _figures(label: str, wall: float, latencies: list[float], failures: int) -> list[Figure]:
    # Throughput and latency are reported, not judged: they follow the machine (each request opens the DuckDB
    # state, tens of ms on a loaded 2-core box, and the state lock serialises them), not a contract.
    return [
        Figure(f"{label}: requests/s, {CLIENTS} clients", len(latencies) / wall, "req/s"),
        Figure(f"{label}: p50 latency", median(latencies) * 1000, "ms"),
        Figure(f"{label}: p99 latency", percentile(latencies, 0.99) * 1000, "ms"),
        Figure(f"{label}: failed requests", failures, "count", "== 0", failures == 0),
    ]


def main(quick: bool = False) -> list[Figure]:
    """Measure both endpoints; ``quick`` sends a few requests only."""
    requests = CLIENTS if quick else 20 * CLIENTS
    waiting = 10 if quick else 200
    with scratch_dir("api") as scratch:
        home, cache = scratch / "home", scratch / "cache"
        progress(f"seeding {waiting} waiting jobs and {requests} tokens")
        admin, fresh = _seed(home, requests, waiting)
        process, url = _start(home, cache)
        try:
            progress(f"GET /api/scheduler/queue x {requests}")
            wall, latencies, failures = asyncio.run(
                _load(url, admin, lambda n: ("GET", "/api/scheduler/queue", {}), requests)
            )
            figures = _figures(f"GET /api/scheduler/queue ({waiting} waiting)", wall, latencies, failures)
            progress(f"POST /api/sdamanager/sda x {requests}")
            wall, latencies, failures = asyncio.run(
                _load(
                    url,
                    admin,
                    lambda n: ("POST", "/api/sdamanager/sda", {"model": "1", "token": fresh[n], "desc": f"b{n}"}),
                    requests,
                )
            )
            figures += _figures("POST /api/sdamanager/sda", wall, latencies, failures)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return figures


if __name__ == "__main__":
    run_standalone(main, __doc__ or "")
