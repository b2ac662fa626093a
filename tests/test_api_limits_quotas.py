"""The REST API for time limits, reasons and estimates, quotas, quota requests and fair share (issues 12 and 13)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from conftest import ApiServer, start_running_job

SMALL, XLARGE = 1, 4


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def error(response: httpx.Response, code: int, needle: str) -> None:
    assert response.status_code >= 400, response.text
    body = response.json()
    assert body["code"] == code, body
    assert needle in body["details"], body
    assert "Traceback" not in response.text


def _sda(client: httpx.Client, token: str, model: int = SMALL) -> int:
    return int(ok(client.post("/api/sdamanager/sda", params={"model": model, "token": token, "desc": "d"}))["result"]["id"])


def test_token_and_model_time_limits(api_server: ApiServer, api_client: httpx.Client) -> None:
    user = api_server.make_token("limited")
    [shown] = ok(api_client.get("/api/sdamanager/token", params={"token": user}))
    assert (shown["timeLimitDefault"], shown["timeLimitMax"]) == (None, None)
    ok(api_client.put("/api/sdamanager/token", params={"token": user, "timeLimitDefault": "2h", "timeLimitMax": "1d"}))
    [shown] = ok(api_client.get("/api/sdamanager/token", params={"token": user}))
    assert (shown["timeLimitDefault"], shown["timeLimitMax"]) == (7200.0, 86400.0)
    ok(api_client.put("/api/sdamanager/token", params={"token": user, "timeLimitDefault": "null"}))
    [shown] = ok(api_client.get("/api/sdamanager/token", params={"token": user}))
    assert (shown["timeLimitDefault"], shown["timeLimitMax"]) == (None, 86400.0)
    error(api_client.put("/api/sdamanager/token", params={"token": user, "timeLimitMax": "soon"}), 600, "time limit")
    error(api_client.put("/api/sdamanager/token", params={"token": user, "timeLimitDefault": "2d"}), 602, "above the max")
    with api_server.client(user) as mine:  # a USER may not change its own limits
        assert mine.put("/api/sdamanager/token", params={"token": user, "timeLimitMax": "9d"}).status_code == 403

    created = ok(api_client.post("/api/sdamanager/token", params={"desc": "new", "timeLimitDefault": "30m"}))
    assert created["result"]["timeLimitDefault"] == 1800.0

    changed = ok(api_client.put("/api/sdamanager/sdamodel", params={"sdamodel": SMALL, "timeLimitMax": "4h"}))
    assert changed["result"]["timeLimitMax"] == 14400.0
    models = {m["id"]: m for m in ok(api_client.get("/api/sdamanager/sdamodel"))}
    assert (models[SMALL]["timeLimitDefault"], models[SMALL]["timeLimitMax"]) == (None, 14400.0)
    error(api_client.put("/api/sdamanager/sdamodel", params={"sdamodel": SMALL}), 600, "Nothing to change")
    error(api_client.put("/api/sdamanager/sdamodel", params={"sdamodel": 999, "timeLimitMax": "1h"}), 601, "999")


def test_the_queue_says_why_each_job_waits_and_when_it_should_start(
    api_server: ApiServer, api_client: httpx.Client
) -> None:
    big, small = api_server.make_token("big"), api_server.make_token("small")
    big_sda, small_sda = _sda(api_client, big, XLARGE), _sda(api_client, small)
    running = start_running_job(big, big_sda, store=api_server.store)
    with api_server.store.transaction("test: a limit, and a waiting job") as s:
        job = s.jobs.submit(
            small, small_sda, backend_id=s.backends.local_id("job-node"), launcher_pid=1, launcher_create_time=0.0,
            process_name="wait", time_limit=60.0,
        ).id
    queue = ok(api_client.get("/api/scheduler/queue"))
    assert [j["id"] for j in queue] == [running, job]
    assert "reasonCode" not in queue[0]
    waiting = queue[1]
    assert waiting["reasonCode"] in ("Resources", "Starting")
    assert waiting["reason"]
    assert waiting["timeLimit"] == 60.0
    # The running job has no limit: no plan can say when its devices come back.
    assert waiting["expectedStart"] is None or datetime.fromisoformat(waiting["expectedStart"])


def test_quota_endpoints(api_server: ApiServer, api_client: httpx.Client) -> None:
    user = api_server.make_token("member")
    sda = _sda(api_client, user)  # before the token joins a group (a grouped token uses the models its groups reach)
    ok(api_client.put("/api/sdamanager/token", params={"token": user, "targetSdaId": sda}))
    group = ok(api_client.post("/api/sdamanager/token/group", params={"label": "team"}))["result"]["id"]
    ok(api_client.post("/api/sdamanager/token/grouping", params={"group": group, "token": user}))
    devices = len(ok(api_client.get("/api/backend"))[0]["devices"])
    ok(api_client.put("/api/sdamanager/quota", params={"group": group, "backendGroup": 0, "nominal": 1, "borrow": 1}))
    [quota] = ok(api_client.get("/api/sdamanager/quota"))
    assert (quota["userGroupId"], quota["nominal"], quota["borrow"], quota["granted"]) == (group, 1, 1, 0)
    error(
        api_client.put("/api/sdamanager/quota", params={"group": group, "backendGroup": 0, "nominal": devices + 1}),
        602,
        "above the",
    )
    error(api_client.put("/api/sdamanager/quota", params={"group": group, "backendGroup": 0, "nominal": "x"}), 600, "nominal")
    [share] = ok(api_client.get("/api/sdamanager/fairshare"))
    assert (share["userGroupId"], share["factor"]) == (group, 1.0)

    with api_server.client(user) as mine:
        asked = ok(mine.post("/api/sdamanager/quota/request", params={"gpus": 1, "days": 2, "reason": "deadline"}))
        request_id = asked["result"]["id"]
        assert asked["result"]["status"] == "PENDING"
        assert [r["id"] for r in ok(mine.get("/api/sdamanager/quota/request"))] == [request_id]
        assert mine.get("/api/sdamanager/quota").status_code == 403
        assert mine.put("/api/sdamanager/quota/request", params={"id": request_id, "action": "approve"}).status_code == 403
        error(mine.post("/api/sdamanager/quota/request", params={"gpus": 0, "days": 2, "reason": "x"}), 602, "at least 1")
    decided = ok(api_client.put("/api/sdamanager/quota/request", params={"id": request_id, "action": "approve"}))
    assert decided["result"]["status"] == "APPROVED"
    assert ok(api_client.get("/api/sdamanager/quota"))[0]["effectiveNominal"] == 2
    error(api_client.put("/api/sdamanager/quota/request", params={"id": request_id, "action": "reject"}), 602, "already")
    error(api_client.put("/api/sdamanager/quota/request", params={"id": request_id, "action": "maybe"}), 600, "action")
    ok(api_client.put("/api/sdamanager/quota", params={"group": group, "backendGroup": 0, "nominal": "null"}))
    assert ok(api_client.get("/api/sdamanager/quota")) == []
