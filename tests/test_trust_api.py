"""The API side of the trust boundary (issue 16, items 4 and 7 to 12, and the "Low" ones), against a real server.

Each test starts ``sdamanager --api`` in this process (its socket, the REST API on a loopback port, ticks
every 0.5 s) with the environment it needs, and attacks it the way the issue's scripts did.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, ApiServer, start_api_in_process, stop_api_server

GPU = {"uuid": "GPU-x", "name": "Fake GPU", "memory_total_mib": 1024}


def sample(index: int) -> dict[str, Any]:
    return {"index": index, "memory_total_mib": 1024, "memory_used_mib": 0, "util_gpu": 0, "util_mem": 0,
            "temp_gpu": 30, "temp_mem": 30}


def gpus(host: str, count: int) -> list[dict[str, Any]]:
    return [{**GPU, "uuid": f"GPU-{host}-{i}"} for i in range(count)]


@pytest.fixture
def serve(moreh_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ApiServer]]:
    """Start the daemon serving this test's state, with ``env`` in force while it opens; stopped afterwards."""
    servers: list[ApiServer] = []
    monkeypatch.setenv("MOREH_FAKE_GPUS", "2")

    def start(**env: str) -> ApiServer:
        server = start_api_in_process(moreh_home, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_api_server(server)


@pytest.fixture
def served(serve: Callable[..., ApiServer]) -> ApiServer:
    """The daemon serving this test's state with the default environment."""
    return serve()


def op(server: ApiServer, name: str, token: str | None, headers: dict[str, str] | None = None, **args: Any) -> httpx.Response:
    from moreh_tools.port.ops import OP_PATH, PROTOCOL

    sent = {"X-Moreh-Protocol": str(PROTOCOL), **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(server.url + OP_PATH + name, json=args, headers=sent, timeout=60.0)


def user_with_sda(server: ApiServer, model: int = 1, level: str = "USER") -> tuple[str, int]:
    with server.store.transaction("test: a user") as s:
        token = s.tokens.create(f"user-{model}-{level}")
        if level != "USER":
            s.tokens.update_access_level(token, level)
        sda = s.sdas.create(token, "", model)
    return token, sda


def queued_job(server: ApiServer, token: str, sda: int) -> int:
    """A job of ``token`` that waits in the queue: another token's job holds both GPUs of the host."""
    from moreh_tools.jobs.processes import create_time

    me, started = os.getpid(), create_time(os.getpid()) or 0.0  # "launched" by this live process: never lost
    with server.store.transaction("test: a queued job") as s:
        backend = s.backends.local_id(server.daemon.owner.ctx.host)
        holder = s.tokens.create("holder")
        held = s.sdas.create(holder, "", 2)
        blocker = s.jobs.submit(holder, held, backend_id=backend, launcher_pid=me, launcher_create_time=started,
                                process_name="holds both GPUs")
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(blocker.id, me, started)
        job = s.jobs.submit(token, sda, backend_id=backend, launcher_pid=me, launcher_create_time=started,
                            process_name="wait")
    return job.id


# -- item 11: nested JSON, big bodies ----------------------------------------------------------------------------------


def test_nested_json_is_400_on_every_path_with_no_traceback(served: ApiServer) -> None:
    deep = b"[" * 100_000
    parsable = b"[" * 500 + b"]" * 500  # Python parses it; walking it would still recurse
    paths = [
        ("POST", "/api/v1/op/job_wait"),
        ("POST", "/api/v1/op/console"),
        ("POST", "/api/sdamanager/token"),
        ("PUT", "/api/backend"),
        ("DELETE", "/api/sdamanager/token"),
        ("POST", "/no/such/path"),
    ]
    from moreh_tools.port.ops import PROTOCOL

    for body in (deep, parsable, b'{"a": ' + parsable + b"}"):
        for method, path in paths:
            for token in (None, served.admin_token):
                headers = {"Content-Type": "application/json", "X-Moreh-Protocol": str(PROTOCOL)}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                answer = httpx.request(method, served.url + path, content=body, headers=headers, timeout=30)
                assert answer.status_code == 400, (method, path, token is not None, answer.status_code, answer.text)
    too_big = httpx.post(served.url + "/api/sdamanager/token", content=b" " * (2 << 20),
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert too_big.status_code in (400, 413)
    assert "Traceback" not in served.log()


# -- item 12: /docs offline ----------------------------------------------------------------------------------------------


def test_docs_page_loads_nothing_from_another_host(served: ApiServer) -> None:
    page = httpx.get(served.url + "/docs", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text.lower()
    assert "openapi.json" in text
    for needle in ("http://", "https://", "//cdn", "src=\"//", "jsdelivr", "unpkg"):
        assert needle not in text, needle
    assert "<script src" not in text  # its script is inline
    spec = httpx.get(served.url + "/openapi.json", timeout=10).json()
    assert spec["paths"]


# -- Low: redaction, UTF-8 -------------------------------------------------------------------------------------------


def test_event_log_redaction_finds_a_token_joined_to_other_text(served: ApiServer) -> None:
    mine, _ = user_with_sda(served)
    other, _ = user_with_sda(served, 2)
    with served.store.transaction("test: an event naming another token") as s:
        for joined in (f"x-{other}", f"{other}_y", f"a+{other}+b", f"path/{other}/z", f"{other}{other}"):
            s.events.record("TEST_EVENT", f"detail {joined} end", mine)
    answer = httpx.get(served.url + "/api/log/sdamanager/event", params={"action": "TEST_EVENT"},
                       headers={"Authorization": f"Bearer {mine}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    events = answer.json()
    assert len(events) == 5
    for event in events:
        assert other not in event["request"], event
        assert "hidden-" in event["request"], event
        assert event["origin"].startswith("uid="), event


def test_a_query_that_is_not_utf8_is_refused_not_stored(served: ApiServer) -> None:
    headers = {"Authorization": f"Bearer {served.admin_token}"}
    bad = httpx.post(served.url + "/api/sdamanager/token?description=bad%ff%fename", headers=headers, timeout=10)
    assert bad.status_code == 400, bad.text
    assert bad.json()["code"] == 600
    assert "UTF-8" in bad.json()["details"]
    good = httpx.post(served.url + "/api/sdamanager/token?description=caf%C3%A9", headers=headers, timeout=10)
    assert good.status_code == 200, good.text
    with served.store.reading() as s:
        descriptions = {t.description for t in s.tokens.all()}
    assert "café" in descriptions
    assert not any("\ufffd" in d for d in descriptions)


# -- item 9: the rate limiter -------------------------------------------------------------------------------------------


def test_rotating_x_forwarded_for_does_not_dodge_the_guessing_budget(serve: Callable[..., ApiServer]) -> None:
    served = serve(MOREH_API_RATE="5/300")
    statuses = []
    for n in range(20):
        answer = httpx.get(
            served.url + "/api/sdamanager/token",
            headers={"Authorization": f"Bearer guess-{n:04d}-xxxxxxxxxxxxxxx", "X-Forwarded-For": f"10.1.{n}.{n}"},
            timeout=10,
        )
        statuses.append(answer.status_code)
    assert 1 <= statuses.count(401) <= 5, statuses  # the loopback address's budget of 5 (start-up may spend one)
    assert statuses[5:] == [429] * 15, statuses


def test_forwarded_addresses_count_only_from_a_named_proxy(serve: Callable[..., ApiServer]) -> None:
    served = serve(MOREH_API_RATE="5/300", MOREH_API_TRUSTED_PROXIES="127.0.0.1")
    statuses = [
        httpx.get(
            served.url + "/api/sdamanager/token",
            headers={"Authorization": f"Bearer guess-{n:04d}-xxxxxxxxxxxxxxx", "X-Forwarded-For": f"10.1.{n}.{n}"},
            timeout=10,
        ).status_code
        for n in range(12)
    ]
    assert set(statuses) == {401}  # each forwarded client has a budget of its own behind the named proxy


def test_launcher_reports_spend_their_own_budget_and_stay_idempotent(serve: Callable[..., ApiServer]) -> None:
    served = serve(MOREH_API_RATE="5/300", MOREH_API_REPORT_RATE="12/300")
    token, sda = user_with_sda(served)
    job_id = queued_job(served, token, sda)
    for _ in range(5):
        assert httpx.get(served.url + "/api/sdamanager/token", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).status_code == 200
    assert httpx.get(served.url + "/api/sdamanager/token", headers={"Authorization": f"Bearer {token}"},
                     timeout=10).status_code == 429
    # The token's budget is spent, yet its launcher's reports still go through: their own budget.
    for _ in range(5):
        assert op(served, "job_wait", token, job_id=job_id, timeout=0).status_code == 200
    first = op(served, "job_finish", token, job_id=job_id, exit_code=None, reason="cancelled")
    assert first.status_code == 200, first.text
    again = op(served, "job_finish", token, job_id=job_id, exit_code=None, reason="cancelled")
    assert again.status_code == 200, again.text  # idempotent: the job already ended, nothing changes
    with served.store.reading() as s:
        assert [e.end_reason for e in s.jobs.history(token=token)] == ["cancelled"]
    answers = [op(served, "job_wait", token, job_id=job_id, timeout=0).status_code for _ in range(10)]
    assert answers.count(429) >= 1, answers  # but it is bounded
    assert answers[0] == 200


def test_five_hosts_sharing_one_host_token_report_past_the_budget(serve: Callable[..., ApiServer]) -> None:
    served = serve(MOREH_API_RATE="10/2")
    host_token, _ = user_with_sda(served, level="HOST")
    seen: list[int] = []
    deadline = time.monotonic() + 4.5  # more than two windows of 2 s, at 5 x 5 reports a second

    def host(n: int) -> None:
        while time.monotonic() < deadline:
            answer = op(served, "host_report", host_token, host=f"shared-{n}", ip="10.0.0.1", machine_id=f"m-shared-{n}",
                        gpus=gpus(f"s{n}", 2), samples=[sample(0), sample(1)], processes=[])
            seen.append(answer.status_code)
            time.sleep(0.2)

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(host, range(5)))
    assert len(seen) > 40
    assert set(seen) == {200}, sorted(set(seen))


# -- item 10: hosts ---------------------------------------------------------------------------------------------------------


def test_a_user_token_cannot_register_a_host(served: ApiServer) -> None:
    token, sda = user_with_sda(served)
    with served.store.reading() as s:
        before = len(s.backends.all())
    refused = op(served, "host_register", token, host="fake", ip="10.9.9.9", machine_id="m-fake", gpus=gpus("f", 8))
    assert refused.status_code == 403, refused.text
    refused = op(served, "host_report", token, host="fake", ip="10.9.9.9", machine_id="m-fake", gpus=gpus("f", 8),
                 samples=[], processes=[])
    assert refused.status_code == 403, refused.text
    submitted = op(served, "job_submit", token, sda=sda, process="x", launcher_pid=1, launcher_create_time=1.0,
                   host="fake", ip="10.9.9.9", machine_id="m-fake", gpus=gpus("f", 8))
    assert submitted.status_code == 404, submitted.text
    assert "not a registered backend" in submitted.json()["error"]["message"]
    with served.store.reading() as s:
        assert len(s.backends.all()) == before


def test_a_host_that_stops_reporting_ends_its_jobs_as_lost(serve: Callable[..., ApiServer]) -> None:
    served = serve(MOREH_HOST_TIMEOUT="1")
    host_token, _ = user_with_sda(served, level="HOST")
    token, sda = user_with_sda(served)
    report = {"host": "quiet", "ip": "10.0.0.2", "machine_id": "m-quiet", "gpus": gpus("q", 2),
              "samples": [sample(0), sample(1)], "processes": []}
    assert op(served, "host_report", host_token, **report).status_code == 200
    submitted = op(served, "job_submit", token, sda=sda, process="on quiet", launcher_pid=4242,
                   launcher_create_time=1.0, host="quiet", ip="10.0.0.2", machine_id="m-quiet")
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["result"]["job"]["id"]
    assert submitted.json()["result"]["allocated"] is True
    # The host falls silent: within a few ticks its job ends as lost and its devices leave the pool.
    deadline = time.monotonic() + 20
    entry = None
    while time.monotonic() < deadline and entry is None:
        with served.store.reading() as s:
            entry = s.jobs.history_entry(job_id)
        time.sleep(0.2)
    assert entry is not None, "the silent host's job never ended"
    assert entry.end_reason == "lost"
    assert "stopped reporting" in entry.end_detail
    assert "ended as lost: its host 'quiet' stopped reporting" in served.log()
    again = op(served, "job_submit", token, sda=sda, process="again", launcher_pid=4243, launcher_create_time=1.0,
               host="quiet", ip="10.0.0.2", machine_id="m-quiet")
    assert again.status_code == 200
    assert again.json()["result"]["allocated"] is False  # its devices are out of the pool until it reports


# -- items 7 and 8: long polls ---------------------------------------------------------------------------------------------


def test_waiting_on_another_tokens_job_is_refused_at_once_and_touches_nothing(served: ApiServer) -> None:
    from moreh_tools.jobs import wakeup

    victim, sda = user_with_sda(served)
    attacker, _ = user_with_sda(served)
    job_id = queued_job(served, victim, sda)
    fifo = wakeup.WakeUp(served.home, job_id)  # the victim's launcher, waiting on its FIFO
    try:
        began = time.monotonic()
        answer = op(served, "job_wait", attacker, job_id=job_id, timeout=20)
        assert time.monotonic() - began < 3
        assert answer.status_code == 404, answer.text
        assert wakeup.wake_path(served.home, job_id).exists()
        with served.store.reading() as s:
            assert s.jobs.find(job_id) is not None
    finally:
        fifo.close()


def test_a_flood_of_long_polls_by_one_user_does_not_delay_an_admin(served: ApiServer) -> None:
    token, sda = user_with_sda(served)
    job_id = queued_job(served, token, sda)
    started = threading.Barrier(46, timeout=30)
    answers: list[int] = []

    def poll() -> None:
        started.wait()
        answers.append(op(served, "job_wait", token, job_id=job_id, timeout=30).status_code)

    with ThreadPoolExecutor(45) as pool:
        futures = [pool.submit(poll) for _ in range(45)]
        started.wait()
        deadline = time.monotonic() + 10
        while served.daemon.hub.waiting() < 45 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.daemon.hub.waiting() == 45
        began = time.monotonic()
        admin = httpx.get(served.url + "/api/sdamanager/token", headers={"Authorization": f"Bearer {served.admin_token}"},
                          timeout=30)
        took = time.monotonic() - began
        assert admin.status_code == 200
        assert took < 2.0, f"an ADMIN request waited {took:.1f} s behind 45 long polls"
        # End the job: every long poll answers at once.
        with served.store.transaction("test: end the job") as s:
            s.jobs.finish(job_id, None, "cancelled", "test")
        served.daemon.hub.jobs_changed([job_id])
        for future in futures:
            future.result(timeout=20)
    assert answers == [200] * 45


# -- item 4: the priority ceiling, on every way in ---------------------------------------------------------------------------


def test_a_user_token_cannot_raise_its_priority_on_any_way_in(served: ApiServer, tmp_path: Path) -> None:
    token, sda = user_with_sda(served)
    over_http = op(served, "job_submit", token, sda=sda, priority=99, process="x", launcher_pid=1,
                   launcher_create_time=1.0, host=served.daemon.owner.ctx.host, ip="", machine_id=served.daemon.owner.ctx.machine_id)
    assert over_http.status_code == 403, over_http.text
    env = {**os.environ, "MOREH_HOME": str(served.home), "MOREH_SDA_TOKEN": token, "MOREH_FAKE_GPUS": "2"}
    through_socket = subprocess.run([str(BIN / "moreh-run"), "--priority", "99", "--", "true"], env=env,
                                    capture_output=True, text=True, timeout=60)
    assert through_socket.returncode != 0
    assert "priority up to its token priority" in through_socket.stderr, through_socket.stderr
    with served.store.reading() as s:
        assert not s.jobs.of_token(token)
