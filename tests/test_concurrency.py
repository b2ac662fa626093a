"""Many real moreh_smclient processes changing one state at once: nothing lost, nothing duplicated."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest
from conftest import SMCLIENT, Smc, ok

from state.store import StateStore

WORKERS = 16
RACERS = 12
CREATED = re.compile(r"^Create (?:SDA|Group|SDAModel|Backend) Success \((?:Token|id) : (\S+)\)$")


@pytest.fixture(autouse=True)
def patient_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen processes queue for one lock on a busy 2-core machine: let them wait."""
    monkeypatch.setenv("MOREH_LOCK_TIMEOUT", "120")


def start_all(scripts: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start one console per script (lines piped on stdin) all at once, then collect them all."""
    procs = [
        subprocess.Popen([SMCLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in scripts
    ]
    done = []
    for proc, script in zip(procs, scripts, strict=True):
        out, err = proc.communicate("\n".join(script) + "\n", timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_sixteen_processes_mixing_creates_updates_and_deletes_lose_nothing(smc: Smc) -> None:
    with StateStore().transaction("test: per-worker tokens") as s:
        s.user_groups.create("shared", "", [])
        keep = [s.tokens.create(f"keep-{i}") for i in range(WORKERS)]
        doomed = [s.tokens.create(f"doomed-{i}") for i in range(WORKERS)]
    setup_events = 1 + 2 * WORKERS
    scripts = [
        [
            f"create token w{i}-a {i % 10}",
            f"create usergroup ug-{i}",
            f"create backend host-{i} 10.1.{i}.1 2",
            f"create sda {keep[i]} d 1",
            f"update sda {keep[i]} 2",
            f"add token env {keep[i]} WORKER {i}",
            f"add usergroup 1 {keep[i]}",
            f"add usergroup 1 {doomed[i]}",
            f"delete token {doomed[i]}",
        ]
        for i in range(WORKERS)
    ]
    results = start_all(scripts)
    for i, done in enumerate(results):
        assert (done.returncode, done.stderr) == (0, ""), (i, done.stderr)
    created = [[m[1] for m in map(CREATED.match, done.stdout.splitlines()) if m] for done in results]
    assert all(len(c) == 3 for c in created)

    tokens = {t["token"]: t for t in ok(smc("show token", json=True)).json}
    new_tokens = [c[0] for c in created]
    assert len(set(new_tokens)) == WORKERS
    assert set(tokens) == set(new_tokens) | set(keep)  # every doomed token is gone, nothing else
    for i, c in enumerate(created):
        assert (tokens[c[0]]["description"], tokens[c[0]]["priority"]) == (f"w{i}-a", i % 10)
        assert tokens[keep[i]]["env"] == {"WORKER": str(i)}

    user_groups = {g["id"]: g for g in ok(smc("show usergroup", json=True)).json}
    assert sorted(int(c[1]) for c in created) == list(range(2, WORKERS + 2))  # ids unique, none skipped
    assert set(user_groups) == {1, *(int(c[1]) for c in created)}
    assert {user_groups[int(c[1])]["name"] for c in created} == {f"ug-{i}" for i in range(WORKERS)}
    # Every add kept, every delete applied, no duplicates: the shared group holds exactly the keepers.
    assert Counter(user_groups[1]["tokens"]) == Counter(keep)

    backends = ok(smc("show backend", json=True)).json
    assert sorted(b["id"] for b in backends) == sorted(int(c[2]) for c in created) == list(range(1, WORKERS + 1))
    assert {b["name"] for b in backends} == {f"host-{i}" for i in range(WORKERS)}
    assert all(len(b["devices"]) == 2 for b in backends)

    sdas = ok(smc("show sda", json=True)).json
    assert sorted(sda["token"] for sda in sdas) == sorted(keep)
    assert {sda["sdamodel"] for sda in sdas} == {2}
    assert len({sda["id"] for sda in sdas}) == WORKERS

    with StateStore().reading() as s:
        events = s.events.tail()
    assert len(events) == setup_events + sum(len(script) for script in scripts)  # one per change, none lost
    assert len({e.id for e in events}) == len(events)


def test_racing_for_a_tokens_last_sda_exactly_one_wins(smc: Smc) -> None:
    token = ok(smc("create token contested", json=True)).json["token"]
    results = start_all([[f"create sda {token} racer-{i} 1"] for i in range(RACERS)])
    winners = [done for done in results if done.returncode == 0]
    losers = [done for done in results if done.returncode != 0]
    assert len(winners) == 1
    assert winners[0].stdout == "Create SDA success.\n"
    assert winners[0].stderr == ""
    for done in losers:
        assert done.returncode == 1
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("Error: ")
        assert f"Token '{token}' already holds 1 SDA(s), its max SDA" in line
    sdas = ok(smc(f"get sda {token}", json=True)).json
    assert len(sdas) == 1
    assert ok(smc(f"get token {token}", json=True)).json[0]["current_sda"] == sdas[0]["id"]
