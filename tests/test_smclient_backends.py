"""Backends, devices, backend groups, worker versions and the server version in moreh_smclient."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Smc, fails, grid_lines, id_of, ok, start_running_job, state_unchanged

from moreh_tools import __version__

NewToken = Callable[..., str]
Cases = list[tuple[str, int, tuple[str, ...]]]

BACKEND_HEADER_PARTS = ("|  ID  |", "|  Group  |   Status   |       Device       |       Device       |")


def check_failures(smc: Smc, cases: Cases, **values: str) -> None:
    """Every line fails with its code and needles, and none of them changes the state."""
    with state_unchanged():
        for line, code, needles in cases:
            fails(smc(line.format(**values)), code, *(n.format(**values) for n in needles))


def records(smc: Smc, line: str) -> list[dict[str, Any]]:
    """The ``--json`` records of a show/get command."""
    found: list[dict[str, Any]] = ok(smc(line, json=True)).json
    return found


def last_event(smc: Smc) -> dict[str, Any]:
    """The newest event."""
    event: dict[str, Any] = ok(smc("show eventlog 1", json=True)).json[0]
    return event


# -- backends and devices ----------------------------------------------------------------------


def test_show_backend_prints_devices_two_per_row(smc: Smc) -> None:
    assert id_of(ok(smc("create backend back01 192.168.110.0 8"), "Create Backend Success (id : 1)")) == 1
    ok(smc("create backend back02 192.168.110.1 3"))
    ok(smc("create backend empty 192.168.110.2 0"))
    ok(smc("update device all 1 PROCESSING"), "Update All Device Status success.")
    assert ok(smc("show backend")).lines == grid_lines(
        "|  ID  |   Name   |       Ip        |  Group  |   Status   |       Device       |       Device       |",
        "|  1   |  back01  |  192.168.110.0  |         |  ACTIVE    |  0  |  PROCESSING  |  1  |  PROCESSING  |",
        "|      |          |                 |         |            |  2  |  PROCESSING  |  3  |  PROCESSING  |",
        "|      |          |                 |         |            |  4  |  PROCESSING  |  5  |  PROCESSING  |",
        "|      |          |                 |         |            |  6  |  PROCESSING  |  7  |  PROCESSING  |",
        "|  2   |  back02  |  192.168.110.1  |         |  ACTIVE    |  0  |  IDLE        |  1  |  IDLE        |",
        "|      |          |                 |         |            |  2  |  IDLE        |     |              |",
        "|  3   |  empty   |  192.168.110.2  |         |  ACTIVE    |     |              |     |              |",
    )
    assert records(smc, "show backend")[1] == {
        "id": 2,
        "name": "back02",
        "ip": "192.168.110.1",
        "group": {"id": 0, "name": "default_backend_group"},
        "status": "ACTIVE",
        "devices": [{"index": 0, "status": "IDLE"}, {"index": 1, "status": "IDLE"}, {"index": 2, "status": "IDLE"}],
    }


def test_show_backend_orders_by_id_name_or_group_and_names_non_default_groups(smc: Smc) -> None:
    for host in ("zeta", "alpha", "mid"):
        ok(smc(f"create backend {host} 10.0.0.{len(host)} 1"))
    ok(smc("create backendgroup bg1 1"))  # zeta moves to bg1
    assert [b["name"] for b in records(smc, "show backend")] == ["zeta", "alpha", "mid"]
    assert [b["name"] for b in records(smc, "show backend name")] == ["alpha", "mid", "zeta"]
    assert [b["name"] for b in records(smc, "show backend group")] == ["alpha", "mid", "zeta"]
    table = ok(smc("show backend group")).lines
    assert table[-2].startswith("|  1   |  zeta   |  10.0.0.4  |  bg1    |  ACTIVE    |")
    assert table[3].startswith("|  2   |  alpha  |  10.0.0.5  |         |")


def test_get_backend_by_id_group_and_name(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 2"))
    ok(smc("create backend n2 10.0.0.2 2"))
    ok(smc("create backendgroup bg1 2"))
    assert [b["id"] for b in records(smc, "get backend beid 2")] == [2]
    assert [b["id"] for b in records(smc, "get backend group bg1")] == [2]
    assert [b["id"] for b in records(smc, "get backend group 1")] == [2]
    assert [b["id"] for b in records(smc, "get backend group 0")] == [1]
    assert [b["id"] for b in records(smc, "get backend name n1")] == [1]
    assert ok(smc("get backend beid 1")).lines[3].startswith("|  1   |  n1    |  10.0.0.1  |         |  ACTIVE    |")


def test_update_backend_host_ip_status_group(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 1"))
    ok(smc("create backendgroup bg1"))
    ok(smc("update backend host 1 renamed"), "Update Backend Host success.")
    ok(smc("update backend ip 1 10.1.1.1"), "Update Backend Ip success.")
    ok(smc("update backend status 1 shutdown"), "Update Backend Status success.")
    ok(smc("update backend group 1 1"), "Update Backend Group success.")
    backend = records(smc, "get backend beid 1")[0]
    assert (backend["name"], backend["ip"], backend["status"]) == ("renamed", "10.1.1.1", "SHUTDOWN")
    assert backend["group"] == {"id": 1, "name": "bg1"}
    assert last_event(smc)["detail"] == "id=1 group=1"
    ok(smc("update backend group 1 null"))
    assert records(smc, "get backend beid 1")[0]["group"]["id"] == 0
    ok(smc("update backend group 1 1"))
    ok(smc("update backend group 1"))  # no group given: back to the default group
    assert records(smc, "get backend beid 1")[0]["group"]["id"] == 0
    ok(smc("update backend ip 1 fe80::1"))
    assert records(smc, "get backend beid 1")[0]["ip"] == "fe80::1"


def test_update_device_one_and_all(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 4"))
    ok(smc("update device 1 2 shutdown"), "Update Device Status success.")
    assert [d["status"] for d in records(smc, "get backend beid 1")[0]["devices"]] == [
        "IDLE",
        "IDLE",
        "SHUTDOWN",
        "IDLE",
    ]
    for status in ("PREPARING", "PROCESSING", "CLEANING", "IDLE"):
        ok(smc(f"update device all 1 {status}"))
        assert {d["status"] for d in records(smc, "get backend beid 1")[0]["devices"]} == {status}
    assert last_event(smc)["detail"] == "backend=1 device=all status=IDLE"


def test_delete_backend(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 2"))
    ok(smc("create backend n2 10.0.0.2 2"))
    ok(smc("delete backend 1"), "Delete Backend success.")
    assert [b["name"] for b in records(smc, "show backend")] == ["n2"]
    assert last_event(smc)["action"] == "DELETE_BACKEND"


def test_devices_held_by_a_job_cannot_be_changed_or_deleted(smc: Smc, new_token: NewToken) -> None:
    token = new_token()
    ok(smc(f"create sda {token} d 1"))
    job = start_running_job(token, 1)
    check_failures(
        smc,
        [
            ("update device 1 0 IDLE", 1, (f"device 0 is held by job {job}",)),
            ("update device all 1 SHUTDOWN", 1, (f"held by job {job}",)),
            ("delete backend 1", 1, (f"held by job {job}", "release it first")),
        ],
    )
    ok(smc("update device 1 5 SHUTDOWN"))  # devices the job does not hold stay manageable


def test_backend_commands_reject_bad_input(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 2"))
    ok(smc("create backend n2 10.0.0.2 2"))
    cases: Cases = [
        ("create backend n1 10.0.0.3 1", 1, ("A backend named 'n1' already exists (id 1)",)),
        ("create backend bad/host 10.0.0.3 1", 1, ("'bad/host' is not a valid host name",)),
        ("create backend n3 300.0.0.1 1", 1, ("'300.0.0.1' is not an IP address",)),
        ("create backend n3 10.0.0.3 -1", 1, ("Device count -1 is out of range",)),
        ("create backend n3 10.0.0.3 1025", 1, ("Device count 1025 is out of range",)),
        ("create backend n3 10.0.0.3 eight", 2, ("device count must be an integer",)),
        ("create backend n3 10.0.0.3", 2, ("usages : create backend {{host name}} {{ip}} {{device count}}",)),
        ("delete backend 9", 1, ("Backend 9 not found", "show backend")),
        ("delete backend x", 2, ("backend id must be an integer",)),
        ("get backend beid 9", 1, ("Backend 9 not found",)),
        ("get backend group nosuch", 1, ("Backend group 'nosuch' not found",)),
        ("get backend group 9", 1, ("Backend group 9 not found",)),
        ("get backend name nosuch", 1, ("No backend named 'nosuch'",)),
        ("get backend name", 2, ("usages : get backend name {{backend name}}",)),
        ("update backend host 1 n2", 1, ("A backend named 'n2' already exists (id 2)",)),
        ("update backend host 9 x", 1, ("Backend 9 not found",)),
        ("update backend ip 1 nowhere", 1, ("'nowhere' is not an IP address",)),
        ("update backend status 1 BROKEN", 1, ("Unknown backend status 'BROKEN'", "SHUTDOWN|ACTIVE")),
        ("update backend status 9 ACTIVE", 1, ("Backend 9 not found",)),
        ("update backend group 1 7", 1, ("Backend group 7 not found",)),
        ("update backend group 9 0", 1, ("Backend 9 not found",)),
        ("update device 1 5 IDLE", 1, ("Backend 1 has no device 5; its devices are 0, 1",)),
        ("update device 1 0 BUSY", 1, ("Unknown device status 'BUSY'", "SHUTDOWN|IDLE|PREPARING|PROCESSING|CLEANING")),
        ("update device 9 0 IDLE", 1, ("Backend 9 not found",)),
        ("update device 1 0", 2, ("usages : update device {{backend id}} {{device index}} {{status}}",)),
        ("update device all 1 NOPE", 1, ("Unknown device status 'NOPE'",)),
        ("update device all 9 IDLE", 1, ("Backend 9 not found",)),
        ("show backend extra", 2, ("takes 0 argument(s), got 1",)),
    ]
    check_failures(smc, cases)


# -- backend groups ----------------------------------------------------------------------------


def test_show_backendgroup_like_the_seed(smc: Smc) -> None:
    ok(smc("create backend rx6900-7 10.0.0.7 8"))
    assert id_of(ok(smc("create backendgroup bg1"), "Create Group Success (id : 1)")) == 1
    assert ok(smc("show backendgroup")).lines == grid_lines(
        "|  ID  |          Name           |   Childs   |",
        "|   0  |  default_backend_group  |  rx6900-7  |",
        "|   1  |  bg1                    |            |",
    )
    assert records(smc, "show backendgroup 0") == [
        {"id": 0, "name": "default_backend_group", "backends": [{"id": 1, "name": "rx6900-7"}]}
    ]


def test_backendgroup_list_add_remove_rename_and_delete(smc: Smc) -> None:
    for n in range(1, 5):
        ok(smc(f"create backend n{n} 10.0.0.{n} 1"))
    group = id_of(ok(smc("create backendgroup bg1 1,2")))

    def members(group_id: int) -> list[int]:
        return [b["id"] for b in records(smc, f"show backendgroup {group_id}")[0]["backends"]]

    assert (members(group), members(0)) == ([1, 2], [3, 4])
    ok(smc(f"update backendgroup list {group} 2,3"), "Update BackendGroup Backend list success.")
    assert (members(group), members(0)) == ([2, 3], [1, 4])  # 1 went back to the default group
    ok(smc(f"update backendgroup list {group} null"))
    assert members(group) == []
    ok(smc(f"add backendgroup {group} 4"), "Add Backend to Backend Group success.")
    assert members(group) == [4]
    ok(smc(f"remove backendgroup {group} 4"), "Remove Backend from Backend Group success.")
    assert members(0) == [1, 2, 3, 4]
    ok(smc(f"update backendgroup name {group} renamed"), "Update BackendGroup Name success.")
    assert records(smc, f"show backendgroup {group}")[0]["name"] == "renamed"
    ok(smc(f"delete backendgroup {group}"), "Delete BackendGroup success.")
    assert [g["id"] for g in records(smc, "show backendgroup")] == [0]


def test_force_deleting_a_backendgroup_returns_its_backends_and_model_groups_to_group_0(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 1"))
    ok(smc("create backendgroup bg1 1"))
    ok(smc("create sdamodelgroup mg 1 1"))
    check_failures(smc, [("delete backendgroup 1", 1, ("Backend group 1 still has 1 backend(s)", "true"))])
    ok(smc("delete backendgroup 1 true"), "Delete BackendGroup success.")
    assert records(smc, "get backend beid 1")[0]["group"]["id"] == 0
    assert records(smc, "show sdamodelgroup 1")[0]["backend_group"]["id"] == 0


def test_a_backend_belongs_to_one_group_only(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 1"))
    ok(smc("create backend n2 10.0.0.2 1"))
    ok(smc("create backendgroup bg1 1"))
    ok(smc("create backendgroup bg2"))
    cases: Cases = [
        ("create backendgroup bg3 1", 1, ("Backend 1 belongs to backend group 1", "remove backendgroup 1 1")),
        ("update backendgroup list 2 1,2", 1, ("Backend 1 belongs to backend group 1",)),
        ("add backendgroup 2 1", 1, ("Backend 1 belongs to backend group 1",)),
        ("add backendgroup 1 1", 1, ("Backend 1 is already in backend group 1",)),
    ]
    check_failures(smc, cases)
    groups = {g["id"]: [b["id"] for b in g["backends"]] for g in records(smc, "show backendgroup")}
    assert groups == {0: [2], 1: [1], 2: []}


def test_backendgroup_commands_reject_bad_input(smc: Smc) -> None:
    ok(smc("create backend n1 10.0.0.1 1"))
    ok(smc("create backendgroup bg1"))
    cases: Cases = [
        ("create backendgroup bg1", 1, ("A backend group named 'bg1' already exists (id 1)",)),
        ("create backendgroup default_backend_group", 1, ("already exists (id 0)",)),
        ("create backendgroup g 9", 1, ("Backend 9 not found",)),
        ("create backendgroup g 1,1", 1, ("names the same backend twice",)),
        ("create backendgroup g x", 2, ("backend id must be an integer",)),
        ("create backendgroup", 2, ("usages : create backendgroup {{name}}",)),
        ("delete backendgroup 0", 1, ("The default backend group 0 cannot be deleted",)),
        ("delete backendgroup 0 true", 1, ("cannot be deleted",)),
        ("delete backendgroup 9", 1, ("Backend group 9 not found",)),
        ("delete backendgroup 1 perhaps", 2, ("force delete flag must be true or false",)),
        ("update backendgroup name 0 x", 1, ("The default backend group 0 cannot be renamed",)),
        ("update backendgroup name 9 x", 1, ("Backend group 9 not found",)),
        ("update backendgroup name 1 default_backend_group", 1, ("already exists (id 0)",)),
        ("update backendgroup list 0 1", 1, ("The default backend group 0 cannot be given a backend list",)),
        ("update backendgroup list 9 null", 1, ("Backend group 9 not found",)),
        ("update backendgroup list 1 9", 1, ("Backend 9 not found",)),
        ("add backendgroup 0 1", 1, ("The default backend group 0 cannot be added to directly",)),
        ("add backendgroup 1 9", 1, ("Backend 9 not found",)),
        ("remove backendgroup 0 1", 1, ("The default backend group 0 cannot be emptied",)),
        ("remove backendgroup 1 1", 1, ("Backend 1 is not in backend group 1",)),
        ("remove backendgroup 1", 2, ("usages : remove backendgroup {{backend group id}} {{backend id}}",)),
        ("show backendgroup 9", 1, ("Backend group 9 not found",)),
    ]
    check_failures(smc, cases)


# -- worker versions ---------------------------------------------------------------------------


def test_version_lifecycle(smc: Smc) -> None:
    ok(smc("create version 23.9.2 /opt/moreh/23.9.2"), "Create Version success.")
    ok(smc("create version 24.1.0 /opt/moreh/24.1.0"))
    ok(smc("update version path 23.9.2 /srv/moreh/23.9.2"), "Update Version success.")
    ok(smc("update version query 23.9.2 'moreh-query --json'"), "Update Version success.")
    ok(smc("update version worker 23.9.2 moreh-worker"), "Update Version success.")
    ok(smc("update version health_check 23.9.2 'nvidia-smi -L'"), "Update Version success.")
    ok(smc("update version latest 23.9.2"), "Update Version success.")
    ok(smc("add worker env 23.9.2 MOREH_LOG info"), "Add Worker Env success.")
    ok(smc("add worker env 23.9.2 OMP_NUM_THREADS 4"))
    assert ok(smc("show version 23.9.2")).lines == grid_lines(
        "|  Version  |  Supported  |  Latest  |   Installed Path    |     Query Command    |  Worker Command  "
        "|  Health Check Command  |             Worker ENV              |",
        "|  23.9.2   |  True       |  True    |  /srv/moreh/23.9.2  |  moreh-query --json  |  moreh-worker    "
        "|  nvidia-smi -L         |  MOREH_LOG=info, OMP_NUM_THREADS=4  |",
    )
    ok(smc("remove worker env 23.9.2 MOREH_LOG"), "Remove Worker Env success.")
    ok(smc("update version latest 24.1.0"))
    assert [(v["version"], v["latest"], v["env"]) for v in records(smc, "show version")] == [
        ("23.9.2", False, {"OMP_NUM_THREADS": "4"}),
        ("24.1.0", True, {}),
    ]
    ok(smc("update version support 23.9.2 false"), "Update Version success.")
    assert records(smc, "show version 23.9.2")[0]["supported"] is False
    ok(smc("delete version 23.9.2"), "Delete Version success.")
    assert [v["version"] for v in records(smc, "show version")] == ["24.1.0"]
    assert last_event(smc)["action"] == "DELETE_VERSION"


def test_version_commands_reject_bad_input(smc: Smc) -> None:
    ok(smc("create version 1.0 /opt/1.0"))
    ok(smc("create version 2.0 /opt/2.0"))
    ok(smc("update version support 2.0 false"))
    ok(smc("update version latest 1.0"))
    cases: Cases = [
        ("create version 1.0 /x", 1, ("Version '1.0' already exists", "update version path")),
        ("create version 'bad name' /x", 1, ("'bad name' is not a version name",)),
        ("create version 3.0", 2, ("usages : create version {{version}} {{installed path}}",)),
        ("delete version 9.9", 1, ("Version '9.9' not found", "show version")),
        ("show version 9.9", 1, ("Version '9.9' not found",)),
        ("update version path 9.9 /x", 1, ("Version '9.9' not found",)),
        ("update version query 9.9 q", 1, ("Version '9.9' not found",)),
        ("update version worker 1.0", 2, ("usages : update version worker {{version}} {{command}}",)),
        ("update version health_check 9.9 h", 1, ("Version '9.9' not found",)),
        ("update version latest 2.0", 1, ("Version '2.0' is not supported", "update version support 2.0 true")),
        ("update version support 1.0 false", 1, ("Version '1.0' is the latest",)),
        ("update version support 1.0 sometimes", 2, ("supported flag must be true or false, not 'sometimes'",)),
        ("add worker env 1.0 9X v", 1, ("'9X' is not a valid environment variable name",)),
        ("add worker env 9.9 X v", 1, ("Version '9.9' not found",)),
        ("remove worker env 1.0 NOPE", 1, ("Version '1.0' has no worker environment variable 'NOPE'",)),
        ("remove worker env 1.0", 2, ("usages : remove worker env {{version}} {{name}}",)),
    ]
    check_failures(smc, cases)


def test_show_server_version(smc: Smc, moreh_home: Path) -> None:
    ok(smc("create version 23.9.2 /opt/moreh"))
    ok(smc("update version latest 23.9.2"))
    info = records(smc, "show server version")[0]
    assert info["Server"] == f"moreh-tools {__version__}"
    assert info["Latest Worker"] == "23.9.2"
    assert info["State File"] == str(moreh_home / "state.duckdb")
    assert info["Python"] == platform.python_version()
    lines = ok(smc("show server version")).lines
    assert lines[1].startswith("|      Name       |")
    assert lines[3].startswith(f"|  Server         |  moreh-tools {__version__}  ")


def test_get_backend_group_with_a_name_that_int_cannot_read(smc: Smc) -> None:
    for name in ("--5", "²"):
        fails(smc(f"get backend group {name}"), 1, f"Backend group '{name}' not found")
