"""``sdamanager`` owning the state, under faults: killed mid-request, stale sockets, bad and slow clients.

While the daemon runs, every tool goes through its socket without DuckDB; once it is killed (``kill -9``
leaves its socket file behind) the tools use the state file again without a word; a client of another
protocol version, a request the daemon cannot parse, and a client that sends half a request and then
nothing each get an answer (or a closed connection) while everyone else is served. The crash test kills
the daemon again and again while clients add devices, change priorities and run jobs through it, and
then checks that everything a client was told is done is in the state.

The crash test's killing phase lasts ``MOREH_DAEMON_CRASH_SECONDS`` (default 10, and at least 4 kills); for a long run::

    MOREH_DAEMON_CRASH_SECONDS=600 .venv/bin/python -m pytest tests/test_daemon_faults.py -k kill_9
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from moreh_tools.port.ops import PROTOCOL
from tests import test_daemon
from tests.conftest import BIN, Smc, ok
from tests.invariants import violations
from tests.test_moreh_run import PY, moreh_run

simulated_host = test_daemon.simulated_host
no_leftovers = test_daemon.no_leftovers
no_leftover_daemon = test_daemon.no_leftover_daemon
user = test_daemon.user
start_daemon = test_daemon.start_daemon

CRASH_SECONDS = float(os.environ.get("MOREH_DAEMON_CRASH_SECONDS", "10"))
CLIENT_SCRIPT = Path(__file__).with_name("daemon_client.py")
REPO = Path(__file__).resolve().parent.parent


def tool(name: str, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    if token is not None:
        full["MOREH_SDA_TOKEN"] = token
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=full, timeout=60)


def quiet(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert the tool succeeded with nothing on stderr."""
    assert (run.returncode, run.stderr) == (0, ""), run.stderr[-3000:]
    return run


def raw_exchange(home: Path, request: bytes, timeout: float = 30) -> bytes:
    """Send ``request`` on the daemon's socket and read the answer until the daemon closes or answers fully."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(home / "sdamanager.sock"))
        sock.sendall(request)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0]):
                break
        return answer


def op_request(name: str, body: bytes, protocol: str = str(PROTOCOL)) -> bytes:
    return (
        f"POST /api/v1/op/{name} HTTP/1.1\r\nHost: sdamanager\r\nContent-Type: application/json\r\n"
        f"X-Moreh-Protocol: {protocol}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def status_and_json(answer: bytes) -> tuple[int, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def test_tools_reach_a_running_daemon_without_loading_duckdb(user: Callable[..., str]) -> None:
    token = user(1)
    start_daemon()
    for args in (["moreh-smi"], ["moreh-run", "--", "true"]):
        # -X importtime writes each import to stderr as it happens (os._exit at the end skips atexit hooks).
        run = subprocess.run(
            [PY, "-X", "importtime", str(BIN / args[0]), *args[1:]],
            capture_output=True, text=True, env={**os.environ, "MOREH_SDA_TOKEN": token}, timeout=60,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
        assert "duckdb" not in imported, f"{args[0]} loaded DuckDB although sdamanager serves the state"
        assert "state.store" not in imported, f"{args[0]} loaded the state store although sdamanager serves the state"


def test_a_killed_daemon_leaves_a_socket_the_tools_step_past(moreh_home: Path, user: Callable[..., str]) -> None:
    token = user(1)
    daemon, _ = start_daemon()
    served = quiet(tool("moreh-smi", token=token))
    daemon.kill()
    daemon.wait()
    assert (moreh_home / "sdamanager.sock").exists(), "the test needs the stale socket a killed daemon leaves"
    alone = tool("moreh-smi", token=token)
    assert (alone.returncode, alone.stderr) == (0, ""), alone.stderr
    assert alone.stdout.splitlines()[:3] == served.stdout.splitlines()[:3]
    ran = moreh_run("--", "true", token=token)
    assert (ran.returncode, ran.stderr) == (0, ""), ran.stderr
    start_daemon()  # a new daemon replaces the stale socket and serves again
    again = tool("moreh-smi", token=token)
    assert (again.returncode, again.stderr) == (0, ""), again.stderr


def test_a_client_of_another_protocol_version_gets_one_line(user: Callable[..., str]) -> None:
    token = user(1)
    start_daemon()
    older = (
        "import sys\n"
        "import moreh_tools.port as port, moreh_tools.port.ops as ops\n"
        "ops.PROTOCOL = port.PROTOCOL = 0\n"
        "from moreh_tools.smi.main import main\n"
        "sys.exit(main([]))\n"
    )
    run = subprocess.run([PY, "-c", older], capture_output=True, text=True, env={**os.environ, "MOREH_SDA_TOKEN": token}, timeout=60)
    assert run.returncode != 0
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert "protocol 0" in run.stderr, run.stderr
    assert "same moreh-tools version" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GARBAGE\r\n\r\n", 400, ""),
        (op_request("status", b"{not json"), 400, "not valid JSON"),
        (op_request("status", b"\xff\xfe\xfd"), 400, "JSON"),
        (op_request("status", b"[" * 100_000 + b"]" * 100_000), 400, "nests deeper than 64"),
        (op_request("device_add", b'{"model": ["not", "a", "model"]}'), 400, "model should be text"),
        (op_request("device_add", b'{"colour": "blue"}'), 400, "takes no argument colour"),
        (op_request("no_such_op", b"{}"), 400, "No operation 'no_such_op'"),
        (op_request("status", b"{}", protocol="999"), 400, "speaks protocol 999"),
    ],
    ids=["not-http", "not-json", "not-utf8", "deeply-nested", "wrong-type", "unknown-argument", "unknown-op", "protocol"],
)
def test_a_request_the_daemon_cannot_parse_gets_an_error_reply(
    moreh_home: Path, user: Callable[..., str], request_bytes: bytes, status: int, says: str
) -> None:
    token = user(1)
    daemon, _ = start_daemon()
    answer = raw_exchange(moreh_home, request_bytes)
    got, payload = status_and_json(answer)
    assert got == status, answer[:500]
    if isinstance(payload, dict):  # one line saying what was wrong, in the op or the REST form
        message = payload["error"]["message"] if "error" in payload else payload["details"]
        assert says in message, payload
        assert "\n" not in message, payload
        assert "Traceback" not in message, payload
    else:
        assert not says, payload
    assert daemon.poll() is None, "the daemon died of a bad request"
    after = tool("moreh-smi", token=token)
    assert (after.returncode, after.stderr) == (0, ""), after.stderr


def test_half_requests_neither_block_others_nor_keep_their_connection(
    moreh_home: Path, user: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = user(1)
    monkeypatch.setenv("MOREH_API_REQUEST_TIMEOUT", "1")
    start_daemon()
    partial = [
        b"",  # connects and says nothing
        b"POST /api/v1/op/status HTTP/1.1\r\nHost: x\r\n",  # half the headers
        op_request("status", b'{"a": 1}')[:-3],  # the whole head, part of the body
    ]
    stalled: list[socket.socket] = []
    for index in range(30):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(moreh_home / "sdamanager.sock"))
        sock.sendall(partial[index % len(partial)])
        stalled.append(sock)
    try:
        served = tool("moreh-smi", token=token)
        assert (served.returncode, served.stderr) == (0, ""), served.stderr
        for sock in stalled:
            sock.settimeout(30)  # the daemon closes each within its 1 s deadline; 30 s only bounds a failure
            assert sock.recv(65536) == b"", "a half request kept its connection past the request deadline"
    finally:
        for sock in stalled:
            sock.close()


# -- kill -9 of the daemon while clients use it --------------------------------------------------------------


def _admin(smc: Smc, line: str) -> None:
    ok(smc(line))


def _allowed_priorities(lines: list[list[str]]) -> tuple[set[int], int]:
    """The priorities a token may have now: its last acknowledged one, or any tried after it; and the ack count."""
    allowed: set[int] = set()
    acked = 0
    for words in lines:
        if words[0] == "try":
            allowed.add(int(words[3]))
        elif words[0] == "priority":
            allowed = {int(words[2])}
            acked += 1
    return allowed, acked


def test_kill_9_of_the_daemon_mid_request_loses_nothing_acknowledged(
    smc: Smc, moreh_home: Path, user: Callable[..., str], tmp_path: Path
) -> None:
    from state.store import StateStore

    rng = random.Random(20261203)
    clients = [user(1) for _ in range(3)]
    runners = [user(1) for _ in range(2)]
    for token in clients:
        _admin(smc, f"update token sda max {token} 64")
    start_daemon()
    quiet(tool("moreh-smi", token=runners[0]))  # the host is registered before the kills start

    acks = tmp_path / "acks"
    acks.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOREH_LOCK_TIMEOUT": "60"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(CLIENT_SCRIPT), str(moreh_home), str(acks / f"{n}.log"), token, str(rng.randrange(2**32))],
            stdout=subprocess.DEVNULL, stderr=(acks / f"{n}.err").open("wb"), env=env,
        )
        for n, token in enumerate(clients)
    ]
    finished_jobs: list[tuple[str, int]] = []  # (token, job id) of each moreh-run that said its job ended well
    failed_runs: list[str] = []
    stop = threading.Event()

    def run_jobs(token: str) -> None:
        while not stop.is_set():
            mark = tmp_path / f"job-{token[:8]}-{time.monotonic_ns()}"
            run = moreh_run("--", "sh", "-c", f'echo "$MOREH_JOB_ID" > {mark}', token=token, timeout=120)
            if run.returncode == 0:
                finished_jobs.append((token, int(mark.read_text())))
            else:
                failed_runs.append(f"exit {run.returncode}: {run.stderr.strip()}")

    threads = [threading.Thread(target=run_jobs, args=(token,), daemon=True) for token in runners]
    for thread in threads:
        thread.start()
    kills = 0
    deadline = time.monotonic() + CRASH_SECONDS
    # At least 4 kills however slowly a loaded machine restarts the daemon (bounded: a minute more at most).
    last_chance = deadline + 60
    try:
        while (time.monotonic() < deadline or kills < 4) and time.monotonic() < last_chance:
            time.sleep(rng.uniform(0.3, 1.5))
            daemon = test_daemon._daemons[-1]
            daemon.kill()
            daemon.wait()
            kills += 1
            time.sleep(rng.uniform(0.0, 1.0))  # meanwhile the clients use the state file
            start_daemon()
    finally:
        stop.set()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=90) for proc in procs]
        for thread in threads:
            thread.join(timeout=150)
        last = test_daemon._daemons[-1]
        last.terminate()
        assert last.wait(timeout=60) == 0, "the last daemon did not stop cleanly on SIGTERM"

    outcomes: Counter[str] = Counter()
    broken: list[str] = [f"client {n} exited {code}" for n, code in enumerate(codes) if code != 0]
    for n, token in enumerate(clients):
        lines = [line.split(" ") for line in (acks / f"{n}.log").read_text().splitlines()]
        outcomes.update(words[0] if words[0] != "unsure" else f"unsure {words[1]}" for words in lines)
        err = (acks / f"{n}.err").read_text(errors="replace")
        assert "Traceback" not in err, err[-3000:]
        for words in lines:
            if words[0] == "refused":
                assert "\\n" not in " ".join(words[2:]), words  # each refusal was one line
        allowed, _ = _allowed_priorities(lines)
        done = Counter(words[0] for words in lines)
        unsure = Counter(words[1] for words in lines if words[0] == "unsure")
        with StateStore(moreh_home).reading() as s:
            sdas = len(s.sdas.of_token(token)) - 1  # the one user() made
            priority = s.tokens.get(token).priority
        least = done["sda"] - done["rm"] - unsure["rm"]
        most = done["sda"] + unsure["sda"] - done["rm"]
        if not least <= sdas <= most:
            broken.append(f"{token}: devices added/removed {done['sda']}/{done['rm']} (unsure {dict(unsure)}) but {sdas} in the state")
        if allowed and priority not in allowed:
            broken.append(f"{token}: priority {priority}, but the last acknowledged change allows only {sorted(allowed)}")
    with StateStore(moreh_home).reading() as s:
        ended = {int(r[0]): (r[1], r[2]) for r in s.all("SELECT id, end_reason, exit_code FROM job_history")}
        broken += violations(s)
    for token, job_id in finished_jobs:
        if ended.get(job_id, (None, None))[1] != 0:
            broken.append(f"job {job_id} of {token[:8]} ended well for its moreh-run but the history has {ended.get(job_id)}")
    report = f"{kills} kills, client outcomes {dict(outcomes)}, {len(finished_jobs)} jobs done, runs failed: {failed_runs[:5]}"
    print(report)
    assert kills >= 4, report
    assert all(outcomes[kind] for kind in ("sda", "rm", "priority")), report
    assert finished_jobs, report
    assert not broken, report + "\n  " + "\n  ".join(broken)
    assert not [f for f in failed_runs if "Traceback" in f], failed_runs


# -- a full disk and a read-only state directory ------------------------------------------------------------

DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=24m moreh-test "$DISK" || exit 77
export MOREH_HOME="$DISK/home"
say() { echo "$1 rc=$2 err=$(printf %s "$3" | base64 -w0)" >> "$OUT"; }
run() { local name=$1; shift; local err; err=$("$@" 2>&1 >/dev/null); say "$name" $? "$err"; }
shown() { "$BIN/moreh_smclient" -c "show token" > "$OUT.$1" 2>&1; }
fill() { dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null; sync; }

run before "$BIN/moreh_smclient" -c "create token before"
if [ "$DAEMON" = 1 ]; then
    "$BIN/sdamanager" --interval 0.2 2>>"$OUT.daemon" &
    daemon=$!
    for i in $(seq 100); do [ -S "$MOREH_HOME/sdamanager.sock" ] && break; sleep 0.1; done
fi
fill
# A change may still fit in the last page of the write-ahead log: go on until one does not.
for n in 1 2 3 4 5 6 7 8 9 10 11 12; do
    err=$("$BIN/moreh_smclient" -c "create token full$n" 2>&1 >/dev/null); rc=$?
    say "full$n" $rc "$err"
    [ $rc != 0 ] && break
done
shown full
rm -f "$DISK/filler"
run freed "$BIN/moreh_smclient" -c "create token freed"
if [ "$DAEMON" = 1 ]; then
    kill -0 "$daemon" && echo "daemon alive" >> "$OUT"
    kill -TERM "$daemon"; wait "$daemon"; echo "daemon exit $?" >> "$OUT"
fi
mount -o remount,ro "$DISK"
run readonly "$BIN/moreh_smclient" -c "create token readonly"
mount -o remount,rw "$DISK"
shown end
umount "$DISK"
"""


def _disk_outcomes(tmp_path: Path, daemon: bool) -> tuple[dict[str, tuple[int, str]], str, str]:
    import base64
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs in a private mount namespace")
    disk, out = tmp_path / "disk", tmp_path / "outcomes"
    disk.mkdir()
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", DISK_SCRIPT],
        env={**os.environ, "DISK": str(disk), "OUT": str(out), "BIN": str(BIN), "DAEMON": "1" if daemon else "0",
             "MOREH_FAKE_GPUS": "2"},
        capture_output=True, text=True, timeout=300,
    )
    if run.returncode == 77 or "unshare failed" in run.stderr:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN in a mount namespace): {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
    outcomes: dict[str, tuple[int, str]] = {}
    extra = []
    for line in out.read_text().splitlines():
        words = line.split(" ")
        if len(words) == 3 and words[1].startswith("rc="):
            outcomes[words[0]] = (int(words[1][3:]), base64.b64decode(words[2][4:]).decode())
        else:
            extra.append(line)
    daemon_log = (tmp_path / "outcomes.daemon").read_text() if daemon else ""
    return outcomes, "\n".join(extra), (tmp_path / "outcomes.full").read_text() + (tmp_path / "outcomes.end").read_text() + daemon_log


@pytest.mark.parametrize("daemon", [False, True], ids=["state-file", "through-sdamanager"])
def test_a_full_disk_and_a_read_only_directory_are_one_line_and_lose_nothing(tmp_path: Path, daemon: bool) -> None:
    outcomes, extra, shown = _disk_outcomes(tmp_path, daemon)
    assert outcomes["before"] == (0, ""), outcomes
    tries = [name for name in outcomes if name.startswith("full")]
    *fitted, refused = tries
    code, err = outcomes[refused]
    assert code == 1, outcomes
    assert len(err.splitlines()) == 1, err
    assert "is full; nothing was changed" in err, err
    assert "Traceback" not in shown, shown
    for name in fitted:  # acknowledged on a disk that still had room in the log's last page
        assert outcomes[name] == (0, ""), outcomes
        assert f"| {name} " in " ".join(shown.split("  ")), (name, shown)
    assert f"| {refused} " not in " ".join(shown.split("  ")), shown
    assert outcomes["freed"] == (0, ""), outcomes  # space back: the tools (and the daemon) write again
    code, err = outcomes["readonly"]
    assert code != 0, outcomes
    assert len(err.splitlines()) == 1, err
    assert "read-only file system" in err.lower(), err
    assert "before" in shown
    if daemon:
        assert "daemon alive" in extra, extra
        assert "daemon exit 0" in extra, extra
