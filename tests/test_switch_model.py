"""moreh-switch-model: the reference's picker on real standard input (pipe and terminal), and --model."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from state.session import Session
from state.store import StateStore
from tests.conftest import BIN, Result, state_unchanged
from tests.test_moreh_smi import REFERENCE_MODELS, User, admin, refused

SWITCH = str(BIN / "moreh-switch-model")
PROMPT = "Selection (1-13, q, Q): "

Run = Callable[..., Result]


def listing(current: str) -> list[str]:
    """The reference's numbered list with ``  *`` on the current model."""
    return [f"{n}. {m}" + ("  *" if m == current else "") for n, m in enumerate(REFERENCE_MODELS, 1)]


@pytest.fixture(autouse=True)
def user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token unless a test gives one; the tool runs on 'vm-host'."""
    monkeypatch.setenv("MOREH_HOSTNAME", "vm-host")
    monkeypatch.setenv("MOREH_TOKEN_FILE", "/nonexistent/moreh-token")
    monkeypatch.delenv("MOREH_SDA_TOKEN", raising=False)


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch) -> User:
    """A token whose current device is a Medium.128GB, and a backend back01 of 8 GPUs."""

    def setup(s: Session) -> User:
        s.backends.create("back01", "10.0.0.1", 8)
        token = s.tokens.create("user@gmail.com_vm")
        return User(token, s.sdas.create(token, "", 2))

    made: User = admin(setup)
    monkeypatch.setenv("MOREH_SDA_TOKEN", made.token)
    return made


@pytest.fixture
def switch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(argv)`` in this process with ``stdin`` as standard input."""
    from moreh_tools.switch_model.main import main

    def run(*argv: str, stdin: str = "") -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(captured.out, captured.err, code)

    return run


def model_of(user: User) -> tuple[str, int | None]:
    with StateStore().reading() as s:
        sda = s.sdas.get(user.device)
        return s.models.get(sda.model_id).name, sda.model_group_id


def test_piped_picker_matches_the_reference_session(user: User) -> None:
    done = subprocess.run([SWITCH], input="1\nq\n", capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "Current Moreh SDA: Medium.128GB",
        "",
        *listing("Medium.128GB"),
        "",
        PROMPT + "1",
        'The Moreh SDA model is successfully switched to  "Small.64GB".',
        "",
        *listing("Small.64GB"),
        "",
        PROMPT + "q",
        "",
    ]
    assert model_of(user) == ("Small.64GB", None)


def test_anything_else_reprompts_with_a_hint_and_changes_nothing(switch: Run, user: User) -> None:
    with state_unchanged():
        result = switch(stdin="x\n0\n14\n\n-1\n2.5\nQ\n")
    assert result.code == 0
    assert result.out.count(PROMPT) == 7
    assert result.err.splitlines() == ["Type a model number from 1 to 13, or q to quit."] * 6


def test_end_of_input_is_one_line_and_non_zero(switch: Run, user: User) -> None:
    with state_unchanged():
        result = switch(stdin="")
    assert result.code == 1
    assert result.err.splitlines() == [
        "The input ended at the selection prompt; type q to quit. Nothing more was changed."
    ]
    assert result.out.endswith(PROMPT + "\n")


def test_the_group_aware_picker_of_the_seed_faq(switch: Run, user: User) -> None:
    def groups(s: Session) -> None:
        micro = s.models.create("micro", 1)
        small = s.models.create("small", 2)
        large = s.models.create("large", 4)
        mg1 = s.model_groups.create("mg1", 0, [micro, small, large])
        ug1 = s.user_groups.create("ug1", "", [user.token])
        s.memberships.add(ug1, mg1)
        s.sdas.update_model(user.token, small, mg1)

    admin(groups)
    result = switch(stdin="3\nq\n")
    assert result.out.splitlines()[:7] == [
        "Current Moreh SDA: small at mg1",
        "",
        "1. micro mg1",
        "2. small mg1 *",
        "3. large mg1",
        "",
        "Selection (1-3, q, Q): 3",
    ]
    assert 'The Moreh SDA model is successfully switched to  "large".' in result.out
    assert "3. large mg1 *" in result.out
    assert model_of(user)[0] == "large"


def test_only_the_models_the_token_may_use_are_listed(switch: Run, user: User) -> None:
    def restrict(s: Session) -> None:
        group = s.model_groups.create("mg1", 0, [2, 3])
        s.memberships.add(s.user_groups.create("ug1", "", [user.token]), group)
        s.sdas.update_model(user.token, 2, group)

    admin(restrict)
    out = switch(stdin="q\n").out
    assert "1. Medium.128GB mg1 *\n2. Large.256GB mg1\n\nSelection (1-2, q, Q): q\n" in out
    with state_unchanged():
        refused(switch("--model", "Small.64GB"), 1, "'Small.64GB' is not a model this token may use")


def test_model_option_switches_without_asking(switch: Run, user: User) -> None:
    result = switch("--model", "Large.256GB")
    assert (result.code, result.out, result.err) == (
        0,
        'The Moreh SDA model is successfully switched to  "Large.256GB".\n',
        "",
    )
    assert switch("--model", "4").out == 'The Moreh SDA model is successfully switched to  "xLarge.512GB".\n'
    assert switch("--model", "xlarge.512GB").out == 'The Moreh SDA model is already "xLarge.512GB".\n'
    assert model_of(user) == ("xLarge.512GB", None)
    with state_unchanged():
        refused(switch("--model", "99"), 1, "no model number 99")
        refused(switch("--model"), 2, "expected one argument")
        refused(switch("--bogus"), 2, "unrecognized arguments: --bogus")


def test_a_device_in_use_is_refused_in_one_line(switch: Run, user: User) -> None:
    def start(s: Session) -> int:
        job = s.jobs.submit(
            user.token,
            user.device,
            backend_id=s.backends.local_id("back01"),
            launcher_pid=9,
            launcher_create_time=0.0,
            process_name="python train.py",
        )
        s.jobs.run_scheduling_pass()
        s.jobs.mark_running(job.id, 10, 0.0)
        return job.id

    job = admin(start)
    with state_unchanged():
        line = refused(switch("--model", "Small.64GB"), 1)
        picked = switch(stdin="1\n")
    assert line.startswith("The model cannot be switched while the Moreh SDA is in use: ")
    assert f"job {job} (RUNNING) runs on device {user.device}" in line
    assert picked.code == 1
    assert picked.err.splitlines() == [line]


def test_without_a_token_or_a_device(switch: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert refused(switch(), 1) == "SDA token is not given."
    monkeypatch.setenv("MOREH_SDA_TOKEN", admin(lambda s: s.tokens.create("new@x.com_vm")))
    assert refused(switch(), 1) == "This token has no Moreh SDA yet; add one with 'moreh-smi device --add'."
    monkeypatch.setenv("MOREH_SDA_TOKEN", "bm9zdWNoMTcwMDAwMDAwMDAwMA==")
    refused(switch("--model", "1"), 1, "moreh::InvalidToken")


def test_help_loads_nothing_heavy() -> None:
    probe = (
        "import sys; from moreh_tools.switch_model.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('duckdb', 'filelock', 'psutil', 'pynvml', 'textual') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "--model MODEL" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


# -- on a terminal ---------------------------------------------------------------------------------


class Terminal:
    """A console script on a pseudo-terminal, driven like a person at the keyboard."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the script
            os.execv(argv[0], argv)
        self.screen = ""

    def wait_for(self, text: str, timeout: float = 20.0, *, times: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.screen.count(text) < times:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the screen was:\n{self.screen}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.screen += self._read()

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def _read(self) -> str:
        try:
            return os.read(self.fd, 65536).decode(errors="replace")
        except OSError:  # EIO: the child closed the terminal
            return ""

    def finish(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                self.screen += self._read()
            if done:
                self.screen += self._drain()
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"the script did not exit; the screen was:\n{self.screen}")

    def _drain(self) -> str:
        text = ""
        while select.select([self.fd], [], [], 0.05)[0]:
            chunk = self._read()
            if not chunk:
                break
            text += chunk
        return text


def test_on_a_terminal_keys_echo_and_ctrl_c_leaves_one_line(user: User) -> None:
    term = Terminal([SWITCH])
    term.wait_for(PROMPT)
    term.type("3\r")
    term.wait_for('switched to  "Large.256GB".')
    term.wait_for("3. Large.256GB  *")
    term.wait_for(PROMPT, times=2)
    term.type("\x03")  # Ctrl-C at the second prompt, as soon as it shows
    code = term.finish()
    lines = term.screen.replace("\r\n", "\n").splitlines()
    assert code == 130
    assert PROMPT + "3" in lines  # the terminal echoed the key; the tool did not echo it twice
    assert lines[-1] == "Interrupted; nothing more was changed."
    assert "Traceback" not in term.screen
    assert model_of(user) == ("Large.256GB", None)


# A Ctrl-C whose handler runs while the prompt's reader is not in a position to notice it: CPython only
# sets a flag, and a read() that starts (or goes on) after that waits for input that never comes. Here the
# signal is handled on a second thread, so the reading thread is certainly not interrupted by it.
LATE_SIGNAL = """
import signal, sys, threading, time
from moreh_tools.smi.prompt import ask

prompted = threading.Event()

class Screen:
    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()
        prompted.set()

def ctrl_c_while_waiting():
    prompted.wait()
    time.sleep(0.5)  # the reader is blocked by now
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # handled on this thread, not the reader's

threading.Thread(target=ctrl_c_while_waiting, daemon=True).start()
try:
    ask("Pick one: ", lambda answer: answer or None, "Type something.", stdout=Screen())
except KeyboardInterrupt:
    print("\\nInterrupted.")
    sys.exit(130)
print("\\nNo interrupt.")
"""


def test_the_prompt_on_a_terminal_never_loses_a_ctrl_c_handled_while_it_waits() -> None:
    term = Terminal([sys.executable, "-c", LATE_SIGNAL])
    term.wait_for("Pick one: ")
    code = term.finish(timeout=10.0)
    assert code == 130
    assert term.screen.replace("\r\n", "\n").endswith("Pick one: \nInterrupted.\n")
