"""The REST API's user areas against a real ``sdamanager --api``: SDA, Token, Scheduler, Membership, Usage, Log.

Each endpoint is called with good and bad input, and USER tokens try to read and change another token's SDAs,
jobs, usage and events: every such call is refused exactly as a missing thing is, and no response to a USER
ever holds another token's value.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import ApiServer, start_running_job

SMALL, XLARGE = 1, 4  # seeded SDA models: 1 and 8 devices


def ok(response: httpx.Response) -> Any:
    """The body of a 200 answer."""
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def syntax_error(response: httpx.Response, name: str) -> str:
    """Assert a 600 that names parameter ``name``; return its details."""
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == 600, body
    assert f"'{name}'" in body["details"], body
    return str(body["details"])


def refused(response: httpx.Response, status: int = 404, code: int = 601) -> str:
    """Assert a refusal (601 not found by default); return its details."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["details"])


def same_refusal(other: httpx.Response, missing: httpx.Response, other_value: str, missing_value: str) -> None:
    """Another token's thing is refused exactly as a missing one: same status, code and (value-blind) text."""
    assert other.status_code == missing.status_code == 404, (other.text, missing.text)
    first, second = other.json(), missing.json()
    assert first["code"] == second["code"] == 601
    assert first["details"].replace(other_value, "X") == second["details"].replace(missing_value, "X")


class Leaks:
    """Records every response a USER got, to check that none holds a foreign token value it did not send."""

    def __init__(self, client: httpx.Client, *foreign: str) -> None:
        self.client = client
        self.foreign = foreign
        self.seen: list[tuple[str, str]] = []

    def __call__(self, method: str, path: str, **params: Any) -> httpx.Response:
        response = self.client.request(method, path, params=params)
        self.seen.append((str(response.request.url), response.text))
        return response

    def check(self) -> None:
        assert self.seen
        for url, text in self.seen:
            for value in self.foreign:
                if str(httpx.QueryParams({"v": value}))[2:] not in url:  # an echo of what was sent is no leak
                    assert value not in text, (value, url, text)


def _sda(client: httpx.Client, token: str, model: int = SMALL, desc: str = "sda") -> int:
    body = ok(client.post("/api/sdamanager/sda", params={"model": model, "token": token, "desc": desc}))
    assert body["code"] == "SUCCESS"
    return int(body["result"]["id"])


def _queue_job(server: ApiServer, token: str, sda_id: int, host: str = "job-node") -> int:
    with server.store.transaction("test: queue a job") as s:
        return s.jobs.submit(
            token, sda_id, backend_id=s.backends.local_id(host), launcher_pid=1, launcher_create_time=0.0, process_name="python wait.py"
        ).id


# -- SDA ------------------------------------------------------------------------------------------------------------


def test_sda_endpoints_for_admin_and_the_owning_user(api_server: ApiServer, api_client: httpx.Client) -> None:
    user = api_server.make_token("sda-user")
    created = ok(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": user, "desc": "first"}))
    sda = created["result"]
    assert created["code"] == "SUCCESS"
    assert (sda["modelId"], sda["numDevices"], sda["sdamodelName"]) == (SMALL, 1, "Small.64GB")
    assert (sda["token"]["value"], sda["reserved"], sda["description"], sda["backends"]) == (user, False, "first", [])

    listed = ok(api_client.get("/api/sdamanager/sda", params={"token": user}))
    assert [s["id"] for s in listed] == [sda["id"]]
    assert sda["id"] in [s["id"] for s in ok(api_client.get("/api/sdamanager/sda"))]

    ok(api_client.put("/api/sdamanager/token", params={"token": user, "maxSdaCount": 2}))
    with api_server.client(user) as mine:
        assert [s["id"] for s in ok(mine.get("/api/sdamanager/sda"))] == [sda["id"]]
        assert ok(mine.get("/api/sdamanager/sda", params={"sdaId": sda["id"]}))["id"] == sda["id"]
        # The body form works as well as the query string.
        second = ok(mine.post("/api/sdamanager/sda", json={"model": SMALL, "token": user, "desc": "second"}))["result"]
        switched = ok(mine.put("/api/sdamanager/sda", params={"token": user, "sdaId": second["id"], "model": 2}))
        assert (switched["result"]["id"], switched["result"]["modelId"]) == (second["id"], 2)
        ok(mine.put("/api/sdamanager/token", params={"token": user, "targetSdaId": second["id"]}))
        assert ok(mine.get("/api/sdamanager/token"))[0]["targetSdaId"] == second["id"]
        refused(mine.post("/api/sdamanager/sda", params={"model": SMALL, "token": user, "reserved": "true"}), 403)
        assert ok(mine.delete("/api/sdamanager/sda", params={"token": user, "sdaId": second["id"]})) == {
            "code": "SUCCESS"
        }
        assert [s["id"] for s in ok(mine.get("/api/sdamanager/sda"))] == [sda["id"]]
        refused(mine.get("/api/sdamanager/sda", params={"sdaId": second["id"]}))

    # Bad input: 600 naming the parameter, 601 for unknown things, 602 for what the state refuses.
    syntax_error(api_client.post("/api/sdamanager/sda", params={"token": user}), "model")
    syntax_error(api_client.post("/api/sdamanager/sda", params={"model": "one", "token": user}), "model")
    syntax_error(api_client.post("/api/sdamanager/sda", params={"model": SMALL}), "token")
    syntax_error(api_client.put("/api/sdamanager/sda", params={"token": user, "model": SMALL, "sdaId": "x"}), "sdaId")
    syntax_error(api_client.delete("/api/sdamanager/sda"), "token")
    refused(api_client.post("/api/sdamanager/sda", params={"model": 999, "token": user}))
    refused(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": "no-such-token"}))
    ok(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": user}))  # desc may be left out
    refused(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": user}), 409, 602)  # max SDA 2
    refused(api_client.get("/api/sdamanager/sda", params={"token": "no-such-token"}))
    refused(api_client.delete("/api/sdamanager/sda", params={"token": user, "sdaId": 999}))

    assert ok(api_client.delete("/api/sdamanager/sda", params={"token": user})) == {"code": "SUCCESS"}
    assert ok(api_client.get("/api/sdamanager/sda", params={"token": user})) == []
    refused(api_client.delete("/api/sdamanager/sda", params={"token": user}))  # nothing left to delete


def test_sda_utilizations_show_the_running_job_its_devices_and_processes(
    api_server: ApiServer, api_client: httpx.Client
) -> None:
    user = api_server.make_token("busy-user")
    sda_id = _sda(api_client, user, XLARGE)
    job_id = start_running_job(user, sda_id, store=api_server.store)
    with api_server.store.transaction("test: sample the job's processes") as s:
        backend = s.backends.local_id("job-node")
        s.jobs.record_processes(job_id, [(4242, "python train.py", 1500, backend, 0)])

    with api_server.client(user) as mine:
        body = ok(mine.get("/api/sdamanager/sdautilizations"))
    assert (body["code"], body["id"], body["pid"], body["processName"]) == ("SUCCESS", job_id, 1, "python train.py")
    [util] = body["sdautils"]
    assert util["sda"]["id"] == sda_id
    [held] = util["sda"]["backends"]
    assert (held["name"], len(held["devices"])) == ("job-node", 8)
    [job] = body["jobs"]
    assert job["processes"] == [
        {"pid": 4242, "name": "python train.py", "memoryMiB": 1500, "backendId": backend, "deviceIndex": 0}
    ]
    # The SDA's devices show in the SDA listing too, and a busy SDA cannot be deleted (602).
    assert len(ok(api_client.get("/api/sdamanager/sda", params={"token": user}))[0]["backends"][0]["devices"]) == 8
    refused(api_client.delete("/api/sdamanager/sda", params={"token": user}), 409, 602)
    refused(api_client.get("/api/sdamanager/sdautilizations", params={"token": "no-such-token"}))


def test_a_user_cannot_read_or_change_another_tokens_sdas(api_server: ApiServer, api_client: httpx.Client) -> None:
    alice, bob = api_server.make_token("alice"), api_server.make_token("bob")
    bob_sda = _sda(api_client, bob)
    missing = "no-such-token-value-00="
    with api_server.client(alice) as client:
        call = Leaks(client, bob, api_server.admin_token)
        for method, extra in (
            ("GET", {}),
            ("POST", {"model": SMALL}),
            ("PUT", {"model": 2, "sdaId": bob_sda}),
            ("DELETE", {}),
        ):
            same_refusal(
                call(method, "/api/sdamanager/sda", token=bob, **extra),
                call(method, "/api/sdamanager/sda", token=missing, **extra),
                bob,
                missing,
            )
        same_refusal(
            call("GET", "/api/sdamanager/sdautilizations", token=bob),
            call("GET", "/api/sdamanager/sdautilizations", token=missing),
            bob,
            missing,
        )
        # Bob's SDA id under Alice's own token: not found, as an id that does not exist.
        assert refused(call("GET", "/api/sdamanager/sda", sdaId=bob_sda)) == f"SDA {bob_sda} not found."
        refused(call("PUT", "/api/sdamanager/sda", token=alice, sdaId=bob_sda, model=2))
        refused(call("DELETE", "/api/sdamanager/sda", token=alice, sdaId=bob_sda))
        refused(call("PUT", "/api/sdamanager/token", token=alice, targetSdaId=bob_sda))
        assert ok(call("GET", "/api/sdamanager/sda")) == []
        call.check()
    [still] = ok(api_client.get("/api/sdamanager/sda", params={"token": bob}))
    assert (still["id"], still["modelId"]) == (bob_sda, SMALL)


# -- Token ----------------------------------------------------------------------------------------------------------


def test_token_endpoints(api_server: ApiServer, api_client: httpx.Client) -> None:
    created = ok(api_client.post("/api/sdamanager/token", json={"desc": "new@example.com", "priority": 3}))
    token = created["result"]
    value = token["value"]
    assert (token["description"], token["priority"], token["maxDuplicates"], token["accessLevel"]) == (
        "new@example.com",
        3,
        1,
        "USER",
    )
    dup = ok(api_client.post("/api/sdamanager/token", params={"desc": "dup", "priority": 0, "maxDuplicates": 0}))
    assert dup["result"]["maxDuplicates"] == 0

    assert [t["value"] for t in ok(api_client.get("/api/sdamanager/token", params={"token": value}))] == [value]
    only_unlimited = ok(api_client.get("/api/sdamanager/token", params={"maxDuplicates": 0}))
    assert [t["value"] for t in only_unlimited] == [dup["result"]["value"]]
    assert {api_server.admin_token, value} <= {t["value"] for t in ok(api_client.get("/api/sdamanager/token"))}

    ok(api_client.put("/api/sdamanager/token", params={"token": value, "desc": "renamed", "priority": -4, "maxSdaCount": 3}))
    [changed] = ok(api_client.get("/api/sdamanager/token", params={"token": value}))
    assert (changed["description"], changed["priority"], changed["maxSdaCount"]) == ("renamed", -4, 3)

    # A USER sees and renames only itself; everything else about tokens is ADMIN work.
    with api_server.client(value) as mine:
        assert [t["value"] for t in ok(mine.get("/api/sdamanager/token"))] == [value]
        ok(mine.put("/api/sdamanager/token", params={"token": value, "desc": "self-named"}))
        refused(mine.put("/api/sdamanager/token", params={"token": value, "priority": 99}), 403)
        refused(mine.post("/api/sdamanager/token", params={"desc": "x", "priority": 0, "maxDuplicates": 1}), 403)
        refused(mine.delete("/api/sdamanager/token", params={"token": value}), 403)
        refused(mine.get("/api/sdamanager/token", params={"token": api_server.admin_token}))
        assert api_server.admin_token not in mine.get("/api/sdamanager/token").text
    # Raising the access level takes effect at once.
    ok(api_client.put("/api/sdamanager/token", params={"token": value, "accessLevel": "admin"}))
    with api_server.client(value) as promoted:
        assert api_server.admin_token in promoted.get("/api/sdamanager/token").text

    syntax_error(api_client.post("/api/sdamanager/token", params={"priority": 1}), "desc")
    syntax_error(api_client.post("/api/sdamanager/token", params={"desc": "x", "priority": "high"}), "priority")
    syntax_error(api_client.put("/api/sdamanager/token", params={"token": value}), "desc")
    syntax_error(api_client.put("/api/sdamanager/token", params={"desc": "x"}), "token")
    # One transaction per request: a refused part leaves nothing of the rest behind.
    before = ok(api_client.get("/api/sdamanager/token"))
    refused(api_client.post("/api/sdamanager/token", params={"desc": "half", "maxDuplicates": 5000}), 400, 602)
    refused(api_client.put("/api/sdamanager/token", params={"token": value, "desc": "half", "priority": 500}), 400, 602)
    assert ok(api_client.get("/api/sdamanager/token")) == before
    refused(api_client.put("/api/sdamanager/token", params={"token": "no-such-token", "desc": "x"}))
    refused(api_client.get("/api/sdamanager/token", params={"token": "no-such-token"}))

    assert ok(api_client.delete("/api/sdamanager/token", params={"token": value})) == {"code": "SUCCESS"}
    refused(api_client.get("/api/sdamanager/token", params={"token": value}))
    refused(api_client.delete("/api/sdamanager/token", params={"token": value}))
    with api_server.client(value) as gone:
        refused(gone.get("/api/sdamanager/token"), 401)


def test_token_groups_grouping_and_memberships(api_server: ApiServer, api_client: httpx.Client) -> None:
    alice, bob, loner = (api_server.make_token(n) for n in ("alice", "bob", "loner"))
    group = ok(api_client.post("/api/sdamanager/token/group", params={"label": "team"}))["result"]
    assert (group["name"], group["tokenlist"]) == ("team", [])
    for member in (alice, bob):
        assert ok(api_client.post("/api/sdamanager/token/grouping", params={"group": group["id"], "token": member})) == {
            "code": "SUCCESS"
        }
    [listed] = [g for g in ok(api_client.get("/api/sdamanager/token/group")) if g["id"] == group["id"]]
    assert [t["value"] for t in listed["tokenlist"]] == [alice, bob]
    ok(api_client.put("/api/sdamanager/token/group", params={"id": group["id"], "label": "team-a"}))

    with api_server.store.transaction("test: an SDA model group") as s:
        model_group = s.model_groups.create("small-only", 0, [SMALL])
    added = ok(api_client.post("/api/membership", params={"parentId": group["id"], "childId": model_group}))
    assert added["result"]["name"] == "team-a"
    assert [c["id"] for c in added["result"]["children"]] == [model_group]
    [linked] = [g for g in ok(api_client.get("/api/membership")) if g["id"] == group["id"]]
    assert linked["children"][0]["sdamodels"] == [{"id": SMALL, "name": "Small.64GB", "numDevices": 1}]
    # The membership now limits alice to the group's models.
    refused(api_client.post("/api/sdamanager/sda", params={"model": 2, "token": alice}), 409, 602)

    # A member sees its groups with the other members' values hidden; a non-member sees none.
    with api_server.client(alice) as mine:
        call = Leaks(mine, bob, loner, api_server.admin_token)
        [seen] = ok(call("GET", "/api/sdamanager/token/group"))
        assert seen["tokenlist"][0]["value"] == alice
        assert seen["tokenlist"][1]["value"].startswith("hidden-")
        [seen_link] = ok(call("GET", "/api/membership"))
        assert seen_link["children"][0]["id"] == model_group
        refused(call("POST", "/api/sdamanager/token/group", label="mine"), 403)
        refused(call("POST", "/api/sdamanager/token/grouping", group=group["id"], token=loner), 403)
        refused(call("DELETE", "/api/membership", parentId=group["id"], childId=model_group), 403)
        call.check()
    with api_server.client(loner) as outsider:
        assert ok(outsider.get("/api/sdamanager/token/group")) == []
        assert ok(outsider.get("/api/membership")) == []
    # A DEVELOPER reads groups and the event log (whose details name the members) with the values hidden.
    with api_server.client(api_server.make_token("dev", "DEVELOPER")) as dev:
        events = dev.get("/api/log/sdamanager/event", params={"action": "ADD_USERGROUP"})
        assert len(ok(events)) == 2
        for text in (events.text, dev.get("/api/sdamanager/token/group").text, dev.get("/api/membership").text):
            assert alice not in text
            assert bob not in text
            assert "hidden-" in text

    syntax_error(api_client.post("/api/sdamanager/token/group"), "label")
    syntax_error(api_client.post("/api/sdamanager/token/grouping", params={"group": "a", "token": alice}), "group")
    syntax_error(api_client.post("/api/membership", params={"parentId": group["id"]}), "childId")
    syntax_error(api_client.delete("/api/membership", params={"parentId": "x", "childId": 1}), "parentId")
    refused(api_client.post("/api/sdamanager/token/grouping", params={"group": 999, "token": alice}))
    refused(api_client.post("/api/sdamanager/token/grouping", params={"group": group["id"], "token": alice}), 409, 602)
    refused(api_client.post("/api/membership", params={"parentId": group["id"], "childId": 999}))
    refused(api_client.delete("/api/sdamanager/token/group", params={"id": group["id"]}), 409, 602)  # not empty

    removed = ok(api_client.delete("/api/membership", params={"parentId": group["id"], "childId": model_group}))
    assert removed["result"]["children"] == []
    refused(api_client.delete("/api/membership", params={"parentId": group["id"], "childId": model_group}))
    ok(api_client.delete("/api/sdamanager/token/grouping", params={"group": group["id"], "token": bob}))
    refused(api_client.delete("/api/sdamanager/token/grouping", params={"group": group["id"], "token": bob}))
    ok(api_client.delete("/api/sdamanager/token/group", params={"id": group["id"], "force": "true"}))
    refused(api_client.put("/api/sdamanager/token/group", params={"id": group["id"], "label": "again"}))
    refused(api_client.delete("/api/sdamanager/token/group", params={"id": group["id"]}))


# -- Scheduler, Usage, Log -------------------------------------------------------------------------------------------


@pytest.fixture
def cluster(api_server: ApiServer, api_client: httpx.Client) -> dict[str, Any]:
    """Bob runs a job on all 8 devices of job-node; Alice (priority 5) and Bob (0) each wait with one more."""
    alice = api_server.make_token("alice", priority=5)
    bob = api_server.make_token("bob")
    alice_sda, bob_sda = _sda(api_client, alice), _sda(api_client, bob, XLARGE)
    running = start_running_job(bob, bob_sda, store=api_server.store)
    return {
        "alice": alice,
        "bob": bob,
        "running": running,
        "alice_waits": _queue_job(api_server, alice, alice_sda),
        "bob_waits": _queue_job(api_server, bob, bob_sda),
    }


def test_queue_priority_and_release(api_server: ApiServer, api_client: httpx.Client, cluster: dict[str, Any]) -> None:
    alice, bob = cluster["alice"], cluster["bob"]
    running, alice_waits, bob_waits = cluster["running"], cluster["alice_waits"], cluster["bob_waits"]
    queue = ok(api_client.get("/api/scheduler/queue"))
    assert [(j["id"], j["status"], j["queuePosition"]) for j in queue] == [
        (running, "Running", None),
        (alice_waits, "Waiting", 1),
        (bob_waits, "Waiting", 2),
    ]
    first = queue[0]
    assert (first["token"]["value"], first["deviceCount"], first["processName"]) == (bob, 8, "python train.py")
    assert first["deviceInfo"] == '{"device_info":[{"host":"job-node","devices":[0,1,2,3,4,5,6,7]}]}'
    assert [j["id"] for j in ok(api_client.get("/api/scheduler/queue", params={"status": "running"}))] == [running]
    assert [j["id"] for j in ok(api_client.get("/api/scheduler/queue", params={"id": bob_waits}))] == [bob_waits]
    syntax_error(api_client.get("/api/scheduler/queue", params={"status": "sleeping"}), "status")
    syntax_error(api_client.put("/api/scheduler/queue", params={"id": alice_waits}), "priority")

    with api_server.client(alice) as mine:
        call = Leaks(mine, bob, api_server.admin_token)
        assert [j["id"] for j in ok(call("GET", "/api/scheduler/queue"))] == [alice_waits]
        assert ok(call("GET", "/api/scheduler/queue", id=bob_waits)) == []
        # Bob's jobs are refused exactly as a job that does not exist.
        for method, extra in (("PUT", {"priority": 0}), ("DELETE", {"isWeb": "true"})):
            other, missing = call(method, "/api/scheduler/queue", id=bob_waits, **extra), call(
                method, "/api/scheduler/queue", id=987654, **extra
            )
            same_refusal(other, missing, str(bob_waits), "987654")
        refused(call("PUT", "/api/scheduler/queue", id=alice_waits, priority=6), 403)  # above its token's 5
        assert ok(call("PUT", "/api/scheduler/queue", id=alice_waits, priority=-1)) == {"code": "SUCCESS"}
        call.check()
    waiting = ok(api_client.get("/api/scheduler/queue", params={"status": "waiting"}))
    assert [(j["id"], j["priority"]) for j in waiting] == [(bob_waits, 0), (alice_waits, -1)]
    refused(api_client.put("/api/scheduler/queue", params={"id": running, "priority": 1}), 409, 602)  # not waiting
    refused(api_client.put("/api/scheduler/queue", params={"id": bob_waits, "priority": 100}), 400, 602)

    with api_server.client(alice) as mine:
        assert ok(mine.delete("/api/scheduler/queue", params={"id": alice_waits, "isWeb": "true"})) == {"code": "SUCCESS"}
        assert ok(mine.get("/api/scheduler/queue")) == []
        assert "already ended" in refused(mine.delete("/api/scheduler/queue", params={"id": alice_waits}))
    # A running job elsewhere is flagged for its launcher there to stop.
    ok(api_client.delete("/api/scheduler/queue", params={"id": running}))
    [flagged] = ok(api_client.get("/api/scheduler/queue", params={"status": "running"}))
    assert flagged["releaseRequested"] is True
    syntax_error(api_client.delete("/api/scheduler/queue"), "id")
    refused(api_client.delete("/api/scheduler/queue", params={"id": 987654}))

    # A DEVELOPER reads the whole queue, with other tokens' values hidden.
    developer = api_server.make_token("dev", "DEVELOPER")
    with api_server.client(developer) as dev:
        text = dev.get("/api/scheduler/queue").text
        assert bob not in text
        assert "hidden-" in text
        refused(dev.put("/api/scheduler/queue", params={"id": bob_waits, "priority": 0}))


def test_history_usage_and_event_log(api_server: ApiServer, api_client: httpx.Client, cluster: dict[str, Any]) -> None:
    alice, bob = cluster["alice"], cluster["bob"]
    with api_server.store.transaction("test: jobs end") as s:
        s.jobs.finish(cluster["running"], 0, "finished")
        s.jobs.request_release(cluster["alice_waits"])
    history = ok(api_client.get("/api/scheduler/history"))
    assert history["totalCount"] == 2
    by_id = {j["id"]: j for j in history["jobs"]}
    assert (by_id[cluster["running"]]["status"], by_id[cluster["running"]]["exitCode"]) == ("Completed", 0)
    assert by_id[cluster["alice_waits"]]["status"] == "Canceled"
    assert by_id[cluster["running"]]["endTime"] is not None
    assert [j["id"] for j in ok(api_client.get("/api/scheduler/history", params={"status": "completed"}))["jobs"]] == [
        cluster["running"]
    ]
    assert ok(api_client.get("/api/scheduler/history", params={"status": "failed"})) == {"jobs": [], "totalCount": 0}
    assert [j["id"] for j in ok(api_client.get("/api/scheduler/history", params={"token": bob[3:12]}))["jobs"]] == [
        cluster["running"]
    ]
    page = ok(api_client.get("/api/scheduler/history", params={"limit": 1, "offset": 1}))
    assert (len(page["jobs"]), page["totalCount"]) == (1, 2)
    later = ok(api_client.get("/api/scheduler/history", params={"starttimeFrom": "2999-01-01 00:00"}))
    assert later == {"jobs": [], "totalCount": 0}
    syntax_error(api_client.get("/api/scheduler/history", params={"endtimeTo": "yesterday"}), "endtimeTo")
    syntax_error(api_client.get("/api/scheduler/history", params={"status": "done"}), "status")
    syntax_error(api_client.get("/api/scheduler/history", params={"limit": -1}), "limit")

    period = {"starttime": "2000-01-01 00:00:00", "endtime": "2999-01-01 00:00:00"}
    usage = ok(api_client.get("/api/usage", params=period))
    assert usage["code"] == "SUCCESS"
    assert usage["total_usage"]["total_devices"] == 10  # job-node's 8 and the server's 2 simulated GPUs
    [row] = usage["usage_list"]
    assert (row["token"]["value"], row["min"], row["max"], row["jobs"]) == (bob, 0, 8, 1)
    assert row["deviceSeconds"] > 0
    assert usage["total_usage"]["max_percentage"] == 80.0
    assert ok(api_client.get("/api/usage", params={**period, "token": alice}))["usage_list"] == []
    syntax_error(api_client.get("/api/usage", params={"endtime": period["endtime"]}), "starttime")
    syntax_error(api_client.get("/api/usage", params={**period, "endtime": "1999-01-01 00:00:00"}), "endtime")
    syntax_error(api_client.get("/api/usage", params={**period, "starttime": "soon"}), "starttime")
    refused(api_client.get("/api/usage", params={**period, "token": "no-such-token"}))

    events = ok(api_client.get("/api/log/sdamanager/event", params={"action": "CREATE_SDA"}))
    assert {e["token"]["value"] for e in events} == {alice, bob}
    assert all(e["referer"]["protocol"] == "HTTP" and e["eventTime"].endswith("Z") for e in events)
    assert ok(api_client.get("/api/log/sdamanager/event", params={"token": bob, "action": "END_JOB"}))[0][
        "action"
    ] == "END_JOB"
    syntax_error(api_client.get("/api/log/sdamanager/event", params={"limit": "many"}), "limit")

    missing = "no-such-token-value-00="
    with api_server.client(alice) as mine:
        call = Leaks(mine, bob, api_server.admin_token)
        own = ok(call("GET", "/api/scheduler/history"))
        assert [j["id"] for j in own["jobs"]] == [cluster["alice_waits"]]
        assert ok(call("GET", "/api/scheduler/history", token=bob)) == {"jobs": [], "totalCount": 0}
        assert ok(call("GET", "/api/scheduler/history", id=cluster["running"]))["totalCount"] == 0
        mine_only = ok(call("GET", "/api/usage", **period))
        assert mine_only["usage_list"] == []
        assert mine_only["total_usage"]["token"]["value"] == alice
        same_refusal(
            call("GET", "/api/usage", token=bob, **period), call("GET", "/api/usage", token=missing, **period), bob, missing
        )
        own_events = ok(call("GET", "/api/log/sdamanager/event"))
        assert own_events
        assert {e["token"]["value"] for e in own_events} == {alice}
        same_refusal(
            call("GET", "/api/log/sdamanager/event", token=bob),
            call("GET", "/api/log/sdamanager/event", token=missing),
            bob,
            missing,
        )
        call.check()


def test_a_user_cannot_submit_a_remote_job_above_its_token_priority(
    api_server: ApiServer, api_client: httpx.Client
) -> None:
    # PUT /api/scheduler/queue caps a USER at its token's priority; submitting must keep the same ceiling.
    user = api_server.make_token("climber", priority=5)
    sda = ok(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": user}))["result"]["id"]
    gpus = [{"uuid": "GPU-c", "name": "G", "memory_total_mib": 1000}]
    api_server.op("host_register", host="climb-node", ip="10.0.0.5", machine_id="climb-node", gpus=gpus)
    job = {"host": "climb-node", "ip": "10.0.0.5", "machine_id": "climb-node", "sda": sda, "process": "train",
           "launcher_pid": 4242, "launcher_create_time": 1.0}
    status, answer = api_server.op("job_submit", user, **job, priority=99)
    assert (status, answer["error"]["type"]) == (403, "PermissionDeniedError"), answer
    assert "up to its token priority (5)" in answer["error"]["message"]
    with api_server.client(user) as client:
        assert ok(client.get("/api/scheduler/queue")) == []
    status, answer = api_server.op("job_submit", user, **job, priority=5)
    assert status == 200, answer
    assert answer["result"]["job"]["priority"] == 5
    admin = api_server.admin_token
    sda = ok(api_client.post("/api/sdamanager/sda", params={"model": SMALL, "token": admin}))["result"]["id"]
    status, answer = api_server.op("job_submit", **{**job, "sda": sda, "launcher_pid": 4243}, priority=99)
    assert (status, answer["result"]["job"]["priority"]) == (200, 99), answer


def test_the_event_log_hides_other_tokens_env_values(api_server: ApiServer, api_client: httpx.Client) -> None:
    # A token's env is shown only to an ADMIN and its owner; the ADD_TOKEN_ENV event used to show it to DEVELOPERs.
    victim = api_server.make_token("env-owner")
    developer = api_server.make_token("env-reader", level="DEVELOPER")
    with api_server.store.transaction("test: add env") as s:
        s.tokens.add_env(victim, "SECRET_KEY", "hunter2")
    with api_server.client(developer) as client:
        events = [e for e in ok(client.get("/api/log/sdamanager/event")) if e["action"] == "ADD_TOKEN_ENV"]
        assert [e["request"] for e in events] == ['{"detail": "SECRET_KEY=(hidden)"}']
        assert "env" not in ok(client.get("/api/sdamanager/token", params={"token": victim}))[0]
    with api_server.client(victim) as client:
        events = [e for e in ok(client.get("/api/log/sdamanager/event")) if e["action"] == "ADD_TOKEN_ENV"]
        assert [e["request"] for e in events] == ['{"detail": "SECRET_KEY=hunter2"}']
    events = [e for e in ok(api_client.get("/api/log/sdamanager/event")) if e["action"] == "ADD_TOKEN_ENV"]
    assert "hunter2" in events[0]["request"]
