"""The embedded default in a real pseudo-terminal, as a user meets it.

A Ctrl+C typed at a terminal is not a signal to one process: the terminal's line discipline
sends SIGINT to its whole foreground process group. Here the keystroke (byte 0x03) is
written to the pty master, exactly as a terminal emulator would. The private redis-server
and the mock must survive it (they run in their own sessions); the producer asks, cancels on
`c`, and writes a whole report. SIGTERM and SIGKILL of the producer leave no helper behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from .conftest import REPO, stub_plan, write_plan

CASES = 40


def children_of(pid: int) -> set[int]:
    """The processes ``pid`` started (the embedded redis-server; the mock when a plan uses it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and
            (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")}


def slow_plan(tmp_path: Path) -> Path:
    # 40 cases of 0.3 s at concurrency 2: about 6 s, time to type.
    return write_plan(tmp_path, stub_plan([{"id": f"c{i:02d}"} for i in range(CASES)],
                                          stub={"simulated_delay": 0.3}, execution={"concurrency": 2}))


class Terminal:
    """A child process on a pseudo-terminal of 120 x 40, read and typed into like a screen."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
        env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its own session, the pty as its controlling terminal
            # A shell starts a terminal's programs with SIGINT at its default; a suite run as a
            # background job (`nohup ... &`) would hand its own ignored SIGINT down instead.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.screen = b""

    def read_until(self, needle: bytes, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while needle not in self.screen:
            assert time.monotonic() < end, f"{needle!r} never appeared:\n{self.screen.decode(errors='replace')}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                self.screen += chunk
        assert needle in self.screen, self.screen.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float = 120) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                self.screen += os.read(self.fd, 65536)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the producer did not end:\n" + self.screen.decode(errors="replace"))


def test_ctrl_c_typed_at_a_terminal_cancels_and_reports_every_case(tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "dify_runner", "run", str(slow_plan(tmp_path)),
                     "--out", str(tmp_path / "runs")], cwd=REPO)
    term.read_until(b"succeeded")  # live progress shows cases ending
    helpers = children_of(term.pid)
    assert helpers, "no private redis-server"
    term.type(b"\x03")  # Ctrl+C: SIGINT to the terminal's foreground process group
    term.read_until(b"Enter to keep waiting")
    assert alive(helpers) == helpers, "the private redis-server died with the keystroke"
    term.type(b"c\r")
    code = term.wait()
    screen = term.screen.decode(errors="replace")
    assert code == 130, screen
    assert "cancelling" in screen and "reports:" in screen and "Traceback" not in screen
    [run_dir] = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    statuses = [r["metadata"]["task_status"] for r in report["results"]]
    assert len(statuses) == CASES and set(statuses) <= {"succeeded", "cancelled"} and "cancelled" in statuses
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == CASES
    assert not alive(helpers)  # stopped on the way out


def test_enter_at_the_prompt_keeps_waiting(tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "dify_runner", "run", str(slow_plan(tmp_path)),
                     "--out", str(tmp_path / "runs")], cwd=REPO)
    term.read_until(b"succeeded")
    term.type(b"\x03")
    term.read_until(b"Enter to keep waiting")
    term.type(b"\r")
    assert term.wait() == 0, term.screen.decode(errors="replace")
    [run_dir] = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["statistics"]["succeeded_tasks"] == CASES


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_producer_leaves_no_helper_behind(tmp_path: Path, signum: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    producer = subprocess.Popen([sys.executable, "-m", "dify_runner", "run", str(slow_plan(tmp_path)),
                                 "--out", str(tmp_path / "runs")], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert producer.stdout is not None
    line = producer.stdout.readline()
    while line and not line.startswith("progress"):
        line = producer.stdout.readline()
    helpers = children_of(producer.pid)
    assert helpers
    producer.send_signal(signum)
    out, err = producer.communicate(timeout=120)
    end = time.monotonic() + 30
    while alive(helpers) and time.monotonic() < end:
        time.sleep(0.1)  # SIGKILL: the kernel's parent-death signal stops the helpers
    assert not alive(helpers)
    if signum == signal.SIGTERM:
        assert producer.returncode == 130, out + err
        [run_dir] = (tmp_path / "runs").iterdir()
        assert len(json.loads((run_dir / "report.json").read_text())["results"]) == CASES
