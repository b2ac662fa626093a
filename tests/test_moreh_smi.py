"""moreh-smi through its real entry point: the reference's tables and messages, read from the state.

Most tests call ``main(argv)`` in this process; a few run the installed console script, and one
drives a real job through ``moreh-run`` on 8 simulated GPUs. Jobs here run on a backend named
``back01`` while the tool runs on ``vm-host`` (as on the real platform), so moreh-smi shows the
recorded samples and never samples GPUs itself, except in the test that checks it does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from state.records import Device
from state.session import Session
from state.store import StateStore
from tests.conftest import BIN, Result, state_unchanged

MOREH_SMI = str(BIN / "moreh-smi")
MOREH_RUN = str(BIN / "moreh-run")
GPU_NAME = "NVIDIA A100-SXM4-80GB"
GPU_MIB = 81920

# The 13 models of the reference, in the order its lists show them (by size).
REFERENCE_MODELS = [
    "Small.64GB",
    "Medium.128GB",
    "Large.256GB",
    "xLarge.512GB",
    "1.5xLarge.768GB",
    "2xLarge.1024GB",
    "3xLarge.1536GB",
    "4xLarge.2048GB",
    "6xLarge.3072GB",
    "8xLarge.4096GB",
    "12xLarge.6144GB",
    "24xLarge.12288GB",
    "48xLarge.24576GB",
]

Run = Callable[..., Result]

SHORT_HEADER = "|  Device  |    Name     |     Model     |"  # the device table with Large.256GB
WIDE_HEADER = "|  Device  |    Name     |       Model      |"  # ... with 8xLarge.4096GB


def rule(header: str, line: str = "-") -> str:
    """The grid's border (or ``=`` rule) for a header row: as wide as the row."""
    return "+" + line * (len(header) - 2) + "+"


#: The state ``admin`` changes: the file, unless a test's daemon runs in this process and owns it.
OWNED: list[Any] = []


def admin(change: Callable[[Session], Any]) -> Any:
    """Apply an admin-side change to the state in one transaction and return what it returns."""
    with (OWNED[-1] if OWNED else StateStore()).transaction("test setup") as s:
        return change(s)


@dataclass
class User:
    """A token with its first device (SDA)."""

    token: str
    device: int


@pytest.fixture(autouse=True)
def user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool runs on 'vm-host'; no token unless a test gives one; real GPUs never consulted."""
    monkeypatch.setenv("MOREH_HOSTNAME", "vm-host")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    monkeypatch.setenv("MOREH_FAKE_GPUS", "8")
    monkeypatch.setenv("MOREH_RELEASE_GRACE", "1")
    for name in ("MOREH_SDA_TOKEN", "MOREH_VISIBLE_DEVICE", "MOREH_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch) -> User:
    """A token (max 5 devices) with one Large.256GB device, and a backend back01 of 8 GPUs."""

    def setup(s: Session) -> User:
        s.backends.register_local("back01", "10.0.0.1", [(f"GPU-{i}", GPU_NAME, GPU_MIB) for i in range(8)])
        token = s.tokens.create("user@gmail.com_vm")
        s.tokens.update_max_sda(token, 5)
        return User(token, s.sdas.create(token, "", 3))

    made: User = admin(setup)
    monkeypatch.setenv("MOREH_SDA_TOKEN", made.token)
    return made


@pytest.fixture
def smi(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(argv)`` in this process, with ``stdin`` as standard input when given."""
    from moreh_tools.smi.main import main

    def run(*argv: str, stdin: str | None = None) -> Result:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(captured.out, captured.err, code)

    return run


def script(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
    """Run the installed console script."""
    done = subprocess.run(
        [MOREH_SMI, *argv], input=stdin, capture_output=True, text=True, env=env or dict(os.environ), timeout=60
    )
    return Result(done.stdout, done.stderr, done.returncode)


def refused(result: Result, code: int, *needles: str) -> str:
    """Assert one line on stderr naming every needle, nothing on stdout, exit ``code``."""
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_job(user: User, device: int | None = None, *, used: int = 886, util: int = 60, pid: int = 170394) -> int:
    """A job of ``device`` running on back01 with sampled figures; returns its id."""

    def start(s: Session) -> int:
        job = s.jobs.submit(
            user.token,
            device or user.device,
            backend_id=s.backends.local_id("back01"),
            launcher_pid=pid - 1,
            launcher_create_time=0.0,
            process_name="python train.py",
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, pid, 0.0)
        devices = s.jobs.get(job.id).devices
        backend = devices[0].backend_id
        s.backends.record_samples(
            backend,
            [
                Device(
                    backend,
                    d.index,
                    "",
                    memory_total_mib=GPU_MIB,
                    memory_used_mib=used,
                    util_gpu=util + 2 * n,
                    util_mem=3,
                    temp_gpu=36 + n,
                    temp_mem=43 + n,
                )
                for n, d in enumerate(devices)
            ],
        )
        s.jobs.record_processes(job.id, [(pid, "python", used, d.backend_id, d.index) for d in devices])
        return job.id

    job_id: int = admin(start)
    return job_id


def queue_job(user: User, device: int) -> int:
    """A job of ``device`` that stays queued; returns its id."""

    def submit(s: Session) -> int:
        # No scheduling pass runs here (as when no daemon runs): the job stays QUEUED.
        job = s.jobs.submit(
            user.token, device, backend_id=s.backends.local_id("back01"), launcher_pid=555, launcher_create_time=0.0, process_name="python big.py"
        )
        return job.id

    job_id: int = admin(submit)
    return job_id


def latest_24_5(s: Session) -> None:
    """The admin registers worker version 24.5.0 as the latest."""
    s.versions.create("24.5.0", "/opt/moreh/24.5.0")
    s.versions.set_latest("24.5.0")


def add_device(user: User, model_id: int) -> int:
    sda_id: int = admin(lambda s: s.sdas.create(user.token, "", model_id))
    return sda_id


# -- the token -------------------------------------------------------------------------------------


def test_without_a_token_both_the_script_and_main_say_it_is_not_given(smi: Run) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOREH_SDA_TOKEN"}
    assert refused(script(env=env), 1) == "SDA token is not given."
    assert refused(smi("device", "--list"), 1) == "SDA token is not given."


def test_the_token_file_is_read_when_the_variable_is_unset(
    smi: Run, user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(user.token + "\n")
    monkeypatch.delenv("MOREH_SDA_TOKEN")
    monkeypatch.setenv("MOREH_TOKEN_FILE", str(token_file))
    result = smi()
    assert result.code == 0, result.err
    assert "|  * 1     |  Moreh SDA  |  Large.256GB  |" in result.out


def test_an_unknown_token_is_refused_in_one_line(smi: Run, user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_SDA_TOKEN", "bm9zdWNoMTcwMDAwMDAwMDAwMA==")
    for argv in ([], ["-t"], ["-p"], ["-r"], ["device", "--add", "1"], ["device", "--switch", "1"]):
        with state_unchanged():
            line = refused(smi(*argv), 1, "moreh::InvalidToken", "MOREH_SDA_TOKEN")
        assert line.startswith("Invalid SDA token")


# -- the status table --------------------------------------------------------------------------------


def test_an_idle_device_prints_the_reference_layout(smi: Run, user: User) -> None:
    admin(latest_24_5)
    result = smi()
    assert result.code == 0
    assert result.err == ""
    assert result.out == (
        "+------------------------------------------------------------------------------------------+\n"
        "|                                         Current Version: 24.5.0  Latest Version: 24.5.0  |\n"
        "+------------------------------------------------------------------------------------------+\n"
        "|  Device  |    Name     |     Model     |  Memory Usage  |  Total Memory  |  Utilization  |\n"
        "+==========================================================================================+\n"
        "|  * 1     |  Moreh SDA  |  Large.256GB  |  -             |  -             |  -            |\n"
        "+------------------------------------------------------------------------------------------+\n"
    )
    assert len({len(line) for line in result.out.splitlines()}) == 1  # every line as wide as the border


def test_a_running_job_shows_its_memory_total_utilization_and_processes(smi: Run, user: User) -> None:
    second = add_device(user, 1)
    job = run_job(user, used=886, util=60)  # Large: 4 GPUs at 60, 62, 64, 66 %
    out = smi().out.splitlines()
    assert out[5] == "|  * 1     |  Moreh SDA  |  Large.256GB  |  3544 MiB      |  327680 MiB    |   63 %        |"
    assert (
        out[6] == f"|    {second}     |  Moreh SDA  |  Small.64GB   |  -             |  -             |  -            |"
    )
    header = "|  Device  |  Job ID  |    PID   |      Process      |  Memory Usage  |"
    assert out[8:] == [
        "",
        "Processes:",
        rule(header),
        header,
        rule(header, "="),
        f"|       1  |       {job}  |  170394  |  python train.py  |  3544 MiB      |",
        rule(header),
    ]


def test_simulated_gpus_are_labelled(smi: Run, user: User) -> None:
    admin(lambda s: s.execute("UPDATE devices SET name = 'Simulated GPU (moreh-tools)'"))
    assert "simulated" not in smi().out  # idle: no figure is shown, so nothing to label
    run_job(user)
    assert smi().out.splitlines()[-1] == (
        "Note: the GPU figures come from simulated GPUs (MOREH_FAKE_GPUS or no NVIDIA GPU found)."
    )
    assert "simulated GPUs" in smi("-p").out


def test_the_simulated_name_matches_the_provider() -> None:
    from moreh_tools.gpus.simulated import SIMULATED_GPU_NAME
    from moreh_tools.services.records import SIMULATED_GPU_NAME as SHOWN_AS_SIMULATED

    assert SIMULATED_GPU_NAME == SHOWN_AS_SIMULATED


def test_a_queued_job_says_it_waits_and_for_what(smi: Run, user: User) -> None:
    big = add_device(user, 4)  # xLarge: all 8 GPUs of back01, 4 of which the Large job holds
    run_job(user)
    waiting = queue_job(user, big)
    out = smi().out
    assert "Waiting jobs:" in out
    row = next(line for line in out.splitlines() if line.startswith(f"|       {big}  |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == [str(big), str(waiting), "555", "python big.py", "1"]
    assert "8 device(s)" in cells[5]
    assert "4 idle" in cells[5]
    data = json.loads(smi("--json").out)
    assert data["waiting"][0]["job_id"] == waiting
    assert [d["state"] for d in data["devices"]] == ["running", "waiting"]


def test_idx_narrows_the_view_to_one_device(smi: Run, user: User) -> None:
    second = add_device(user, 2)
    run_job(user)
    out = smi("-i", str(second)).out
    assert f"|    {second}     |  Moreh SDA  |  Medium.128GB  |" in out
    assert "|  * 1" not in out
    assert "Processes:" not in out
    assert "Processes:" in smi("--idx", "1").out


def test_idx_refuses_a_device_of_someone_else_or_a_non_number(smi: Run, user: User) -> None:
    other = admin(lambda s: s.sdas.create(s.tokens.create("other@x.com_vm"), "", 1))
    assert refused(smi("-i", str(other)), 1) == f"Device {other} is not one of your devices; your devices are: 1."
    refused(smi("-i", "one"), 2, "-i takes a device id")


def test_token_table(smi: Run, user: User) -> None:
    result = smi("-t")
    header = "|  Device  |    Name     |            Token           |     Model     |"
    assert result.out.splitlines() == [
        rule(header),
        header,
        rule(header, "="),
        f"|  * 1     |  Moreh SDA  |  {user.token}  |  Large.256GB  |",
        rule(header),
    ]


def test_hardware_table_centres_the_figures_like_the_reference(smi: Run, user: User) -> None:
    idle = smi("-p").out.splitlines()
    assert idle[1] == "|  Dev  |  Location  |  Dev Temp  |  Mem Temp  |  Dev Util  |  Mem Util  |  Mem Usage  |"
    assert idle[-1] == "Device 1 holds no GPU now: a device gets its GPUs while a job runs on it."
    run_job(user, used=819, util=35)
    rows = smi("-p").out.splitlines()[3:7]
    assert rows == [
        "|    0  |  back01:0  |    36 C    |    43 C    |    35 %    |     3 %    |     1 %     |",
        "|    1  |  back01:1  |    37 C    |    44 C    |    37 %    |     3 %    |     1 %     |",
        "|    2  |  back01:2  |    38 C    |    45 C    |    39 %    |     3 %    |     1 %     |",
        "|    3  |  back01:3  |    39 C    |    46 C    |    41 %    |     3 %    |     1 %     |",
    ]
    gpus = json.loads(smi("-p", "--json").out)["gpus"]
    assert [g["location"] for g in gpus] == ["back01:0", "back01:1", "back01:2", "back01:3"]


def test_a_token_without_devices_says_how_to_add_one(smi: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOREH_SDA_TOKEN", admin(lambda s: s.tokens.create("new@x.com_vm")))
    result = smi()
    assert result.code == 0
    assert result.out.splitlines()[-1] == "This token has no device yet; add one with 'moreh-smi device --add'."


def test_json_status_carries_the_figures(smi: Run, user: User) -> None:
    run_job(user, used=100, util=10)
    data = json.loads(smi("--json").out)
    device = data["devices"][0]
    assert (device["id"], device["current"], device["model"], device["state"]) == (1, True, "Large.256GB", "running")
    assert (device["memory_used_mib"], device["memory_total_mib"], device["utilization"]) == (400, 4 * GPU_MIB, 13)
    assert data["processes"][0]["memory_mib"] == 400


# -- options -----------------------------------------------------------------------------------------


def test_help_is_the_reference_text_and_loads_nothing_heavy(smi: Run) -> None:
    result = smi("--help")
    lines = result.out.splitlines()
    assert lines[0].startswith("Usage: moreh-smi [-h | --help] [-r | --reset] [-s | --server-version]")
    for expected in (
        "  -h, --help             provide information about available command switches and their options",
        "  -s, --server-version   print Moreh Framework version information",
        # -r also cancels waiting jobs (issue 15): the help says so.
        "  -r, --reset            stop the running process and cancel the waiting ones (of every device, or of the",
        "  device --add [model_id]       add a device corresponding to model_id",
        "  device --switch [device_id]   switch to the device corresponding to [device_id]",
        "Device Options operate interactively if there are no optional arguments([model_id], [device_id]).",
        "  moreh-smi -i 2",
    ):
        assert expected in lines
    probe = (
        "import sys; from moreh_tools.smi.main import main; main(['--help']); main(['-v']); "
        "print(sorted(m for m in ('duckdb', '_duckdb', 'filelock', 'psutil', 'pynvml', 'textual', 'rich') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"


def test_plain_status_loads_only_what_it_shows(user: User) -> None:
    # `watch moreh-smi` pays for every import at each start (issue 4's start-up bound): the plain view
    # needs DuckDB's engine but not its Python layer, and a waiting job's reason needs the scheduler,
    # not the repositories (the plain records come with the services' result types).
    run_job(user)
    queue_job(user, add_device(user, 4))
    probe = (
        "import sys; from moreh_tools.smi.main import main; code = main([]); "
        "print(code, sorted(m for m in ('duckdb', 'argparse', 'state.jobs', 'state.tokens') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "Processes:" in done.stdout, done.stdout
    assert "Waiting jobs:" in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1] == "0 []"


def test_version_and_server_version(smi: Run, user: User) -> None:
    assert smi("-v").out == "moreh-smi 0.1.0 (moreh-tools)\n"
    admin(latest_24_5)
    out = smi("-s").out
    assert "|  Latest Version      |  24.5.0             |" in out
    assert json.loads(smi("-s", "--json").out)["Latest Version"] == "24.5.0"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-t", "-p"], "use one of -t, -p at a time"),
        (["device"], "say what to do: device --list"),
        (["device", "--add", "1", "--rm", "1"], "one device option at a time"),
        (["devices", "--list"], "unknown argument 'devices'"),
        (["device", "--list", "--json"], "--json goes with the status views"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(smi: Run, user: User, argv: list[str], needle: str) -> None:
    with state_unchanged():
        refused(smi(*argv), 2, needle)


def test_reset_releases_the_tokens_job_or_says_none_runs(smi: Run, user: User) -> None:
    assert refused(smi("-r"), 1) == "Device release failed. (Not running job.)"
    job = queue_job(user, user.device)
    other = admin(lambda s: s.sdas.create(s.tokens.create("other@x.com_vm"), "", 1))
    assert refused(smi("-r", "-i", str(other)), 1).startswith(f"Device {other} is not one of your devices")
    result = smi("--reset")
    assert (result.code, result.out, result.err) == (0, "Device release success.\n", "")
    with StateStore().reading() as s:
        assert s.jobs.find(job) is None
        entry = s.jobs.history_entry(job)
        assert entry is not None
        assert entry.end_reason == "released"


# -- device options ----------------------------------------------------------------------------------


def test_device_list_is_the_numbered_model_list(smi: Run, user: User) -> None:
    assert smi("device", "--list").out.splitlines() == [f"{n}. {m}" for n, m in enumerate(REFERENCE_MODELS, 1)]


def test_device_add_keeps_the_current_device_and_ids_are_never_renumbered(smi: Run, user: User) -> None:
    added = smi("device", "--add", "10")
    assert added.code == 0, added.err
    assert added.out.splitlines() == [
        rule(WIDE_HEADER),
        WIDE_HEADER,
        rule(WIDE_HEADER, "="),
        "|  * 1     |  Moreh SDA  |  Large.256GB     |",
        "|    2     |  Moreh SDA  |  8xLarge.4096GB  |",
        rule(WIDE_HEADER),
        "Create device success.",
    ]
    assert smi("device", "--add", "small.64gb").code == 0  # a name works too, in any case
    removed = smi("device", "--rm", "2")
    assert removed.out.splitlines()[3:6] == [
        "|  * 1     |  Moreh SDA  |  Large.256GB  |",
        "|    3     |  Moreh SDA  |  Small.64GB   |",
        rule(SHORT_HEADER),
    ]
    assert removed.out.endswith("Remove device success.\n")
    assert "|    4     |  Moreh SDA  |  Medium.128GB  |" in smi("device", "--add", "2").out


def test_rm_works_without_the_device_word_and_moves_the_current_device(smi: Run, user: User) -> None:
    second = add_device(user, 1)
    result = smi("--rm", "1")
    assert result.code == 0, result.err
    assert f"|  * {second}     |  Moreh SDA  |  Small.64GB  |" in result.out


def test_switch_makes_another_device_current(smi: Run, user: User) -> None:
    second = add_device(user, 1)
    result = smi("device", "--switch", str(second))
    assert result.out.splitlines() == [
        "",
        rule(SHORT_HEADER),
        SHORT_HEADER,
        rule(SHORT_HEADER, "="),
        "|    1     |  Moreh SDA  |  Large.256GB  |",
        f"|  * {second}     |  Moreh SDA  |  Small.64GB   |",
        rule(SHORT_HEADER),
        "Switch Current Device success.",
    ]
    assert f"|  * {second}     |" in smi().out


def test_device_changes_that_must_fail_change_nothing(smi: Run, user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    other = admin(lambda s: s.sdas.create(s.tokens.create("other@x.com_vm"), "", 1))
    admin(lambda s: s.tokens.update_max_sda(user.token, 2))
    add_device(user, 1)
    run_job(user)
    with state_unchanged():
        assert refused(smi("device", "--add", "1"), 1).startswith(
            "You already have 2 device(s), the most this token may have (2)"
        )
        refused(smi("device", "--rm", str(other)), 1, f"Device {other} is not one of your devices")
        refused(smi("device", "--switch", "x"), 2, "'x' is not a device id")
        refused(smi("device", "--rm", "1"), 1, "Device 1 cannot be removed while it is in use", "job 1 (RUNNING)")
    admin(lambda s: s.tokens.update_max_sda(user.token, 5))
    with state_unchanged():
        refused(smi("device", "--add", "14"), 1, "no model number 14", "1 to 13")
        refused(smi("device", "--add", "Huge.1TB"), 1, "'Huge.1TB' is not a model this token may use")


def test_only_models_the_token_may_use_are_offered(smi: Run, user: User) -> None:
    def restrict(s: Session) -> None:
        group = s.model_groups.create("mg1", 0, [1, 2])
        users = s.user_groups.create("ug1", "", [user.token])
        s.memberships.add(users, group)

    admin(restrict)
    assert smi("device", "--list").out == "1. Small.64GB mg1\n2. Medium.128GB mg1\n"
    with state_unchanged():
        refused(smi("device", "--add", "Large.256GB"), 1, "'Large.256GB' is not a model this token may use")
    assert "|    2     |  Moreh SDA  |  Medium.128GB  |" in smi("device", "--add", "Medium.128GB@mg1").out


def test_interactive_add_loops_until_q_like_the_reference(user: User) -> None:
    result = script("device", "--add", stdin="3\nx\n1\nq\n")
    listing = [f"{n}. {m}" for n, m in enumerate(REFERENCE_MODELS, 1)]
    prompt = "Selection (1-13, q, Q): "
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        *listing,
        "",
        prompt + "3",
        rule(SHORT_HEADER),
        SHORT_HEADER,
        rule(SHORT_HEADER, "="),
        "|  * 1     |  Moreh SDA  |  Large.256GB  |",
        "|    2     |  Moreh SDA  |  Large.256GB  |",
        rule(SHORT_HEADER),
        "Create device success.",
        *listing,
        "",
        prompt + "x",
        prompt + "1",
        rule(SHORT_HEADER),
        SHORT_HEADER,
        rule(SHORT_HEADER, "="),
        "|  * 1     |  Moreh SDA  |  Large.256GB  |",
        "|    2     |  Moreh SDA  |  Large.256GB  |",
        "|    3     |  Moreh SDA  |  Small.64GB   |",
        rule(SHORT_HEADER),
        "Create device success.",
        *listing,
        "",
        prompt + "q",
        "",
    ]
    assert result.err == "Type a model number from 1 to 13, or q to quit.\n"


def test_interactive_switch_and_rm_read_the_device_id(smi: Run, user: User) -> None:
    second = add_device(user, 1)
    switched = smi("device", "--switch", stdin=f"7\n{second}\n")
    assert switched.code == 0
    assert f"Selection (1-{second}, q, Q): 7\n" in switched.out
    assert switched.err == f"Type one of your device ids (1, {second}), or q to quit.\n"
    assert switched.out.endswith("Switch Current Device success.\n")
    with state_unchanged():
        quit_rm = smi("device", "--rm", stdin="Q\n")
    assert quit_rm.code == 0
    assert quit_rm.out.endswith("Selection (1-2, q, Q): Q\n\n")


def test_end_of_input_at_a_prompt_is_one_line_and_changes_nothing(smi: Run, user: User) -> None:
    with state_unchanged():
        result = smi("device", "--add", stdin="")
    assert result.code == 1
    assert result.err.splitlines() == [
        "The input ended at the selection prompt; type q to quit. Nothing more was changed."
    ]


# -- live figures ------------------------------------------------------------------------------------


def test_stale_figures_of_a_local_job_are_sampled_from_the_simulated_gpus(smi: Run, user: User) -> None:
    def local_job(s: Session) -> int:
        s.backends.register_local(
            "vm-host", "127.0.0.1", [(f"GPU-SIM-{i}", "Simulated GPU (moreh-tools)", 1000) for i in range(8)]
        )
        sda = s.sdas.create(user.token, "", 1)
        job = s.jobs.submit(
            user.token, sda, backend_id=s.backends.local_id("vm-host"), launcher_pid=1, launcher_create_time=0.0, process_name="python local.py"
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 1, 0.0)
        return sda

    sda = admin(local_job)
    with StateStore().reading() as s:
        assert s.one(
            "SELECT count(sampled_at) FROM devices d JOIN backends b ON b.id = d.backend_id WHERE b.host = 'vm-host'"
        ) == (0,)
    out = smi("-i", str(sda)).out
    row = next(line for line in out.splitlines() if line.startswith(f"|  * {sda}") or line.startswith(f"|    {sda}"))
    assert "81920 MiB" in row  # MOREH_FAKE_GPUS=8: 8 simulated GPUs of 81920 MiB, now sampled
    assert out.splitlines()[-1].startswith("Note: the GPU figures come from simulated GPUs")


@pytest.fixture
def running_job(user: User, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``moreh-run`` of a sleeping job on this host, whose GPUs (simulated) hold 1234 MiB each."""
    env = dict(os.environ, MOREH_HOSTNAME="vm-host", MOREH_FAKE_GPU_MEMORY_MIB="1234")
    admin(lambda s: s.sdas.update_model(user.token, 2))  # Medium: 2 GPUs
    proc = subprocess.Popen(
        [MOREH_RUN, "--", "sleep", "30"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_a_moreh_run_job_shows_the_simulated_memory_and_its_gpus(
    running_job: subprocess.Popen[str], user: User
) -> None:
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline and "2468 MiB" not in out:
        out = script().out
        time.sleep(0.2)
    assert "|  * 1     |  Moreh SDA  |  Medium.128GB  |  2468 MiB      |  163840 MiB    |" in out, out
    process_row = out.split("Processes:")[1].splitlines()[4]
    assert "|  sleep 30  |  2468 MiB      |" in process_row
    gpus = script("-p").out.splitlines()
    assert [line.split("|")[2].strip() for line in gpus[3:5]] == ["vm-host:0", "vm-host:1"]
    released = script("-r")
    assert (released.code, released.out) == (0, "Device release success.\n")
    assert running_job.wait(timeout=15) != 0
    assert "Processes:" not in script().out


def test_model_numbers_stay_put_when_an_admin_regroups_models(smi: Run, user: User, smc: Any) -> None:
    """Issue 15: the number a user types keeps naming the same model after ``create sdamodelgroup``."""
    before = smi("device", "--list").out.splitlines()
    assert before[:3] == ["1. Small.64GB", "2. Medium.128GB", "3. Large.256GB"]
    assert smc("create sdamodelgroup mg1 0 1,2").code == 0
    after = smi("device", "--list").out.splitlines()
    assert [line.split(" ")[:2] for line in after[: len(before)]] == [line.split(" ")[:2] for line in before]
    assert "|    2     |  Moreh SDA  |  Small.64GB   |" in smi("device", "--add", "1").out
    assert "|    3     |  Moreh SDA  |  Large.256GB  |" in smi("device", "--add", "id:3").out  # the model id too
