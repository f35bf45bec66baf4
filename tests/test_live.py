"""The live view, read off a terminal emulator: `wtmesh run` under a pseudo-terminal."""

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

import pyte
from conftest import lane


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """wtmesh on a pseudo-terminal, its output fed to an emulated screen."""

    def __init__(self, argv: list[str], cwd: Path, rows: int, cols: int) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        master, slave = pty.openpty()
        set_size(slave, rows, cols)
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)  # rich must ask the terminal, so that a resize is seen
        env.pop("LINES", None)
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                                     env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.snapshots: list[str] = []

    def resize(self, rows: int, cols: int) -> None:
        set_size(self.master, rows, cols)
        self.screen.resize(rows, cols)
        os.killpg(self.proc.pid, signal.SIGWINCH)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            self.stream.feed(data)
            self.snapshots.append("\n".join(self.screen.display))

    def pump_until(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in " ".join(s.split()) for s in self.snapshots[-3:]):
            assert time.monotonic() < deadline, f"{text!r} never appeared"
            self.pump(0.1)

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.2)
        self.pump(0.5)
        os.close(self.master)
        return self.proc.wait(timeout=5)

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)


def plan_for(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.json"
    units = [{"id": f"unit-{n}", "objective": f"write {n}", "unit_scope": f"f{n}.txt",
              "lanes": {"coder": {"command": lane("act.py", "sleep:1.5",
                                                  f"write:f{n}.txt={n}\\n")}}}
             for n in range(4)]
    units.append({"id": "breaks", "objective": "break", "unit_scope": "broken.txt",
                  "lanes": {"coder": {"command": lane("act.py", "write:broken.txt=x")}}})
    plan.write_text(json.dumps({"max_active": 2, "proof_command": "test ! -e broken.txt",
                                "units": units}))
    return plan


def rows_of(screen_text: str, unit: str) -> list[str]:
    return [line for line in screen_text.splitlines() if line.lstrip().startswith(unit)]


def test_live_view_shows_rows_changing_then_the_final_table(repo: Path,
                                                            tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(plan_for(tmp_path))],
                    repo, rows=40, cols=110)
    code = term.finish()
    assert code == 1  # "breaks" fails its proof
    # While running, the live table showed units running and, later, integrated.
    live = [s for s in term.snapshots if "units finished" in s]
    assert live, "no live view was drawn"
    assert any("running" in line for s in live for line in rows_of(s, "unit-0"))
    assert any("integrated" in line for s in live for line in rows_of(s, "unit-0"))
    assert any("integrator:" in s for s in live)
    # At the end the live view is gone and the final table shows every unit.
    final = term.text
    assert "units finished" not in final
    for n in range(4):
        (row,) = rows_of(final.replace("│", " "), f"unit-{n}")
        assert "integrated" in row
    (row,) = rows_of(final.replace("│", " "), "breaks")
    assert "failed" in row and "proof_failed" in row
    assert "4 integrated, 1 failed" in final


def test_live_view_survives_a_narrow_terminal_and_a_resize(repo: Path,
                                                           tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(plan_for(tmp_path))],
                    repo, rows=30, cols=40)
    term.pump_until("integrator:")
    term.resize(30, 120)
    term.pump(0.6)
    term.resize(20, 30)
    after_resizes = len(term.snapshots)
    term.pump(0.8)
    # The live view went on drawing after both resizes.
    drawn = any("integrat" in snap for snap in term.snapshots[after_resizes:])
    code = term.finish()
    assert drawn
    assert code == 1
    assert "Traceback" not in "\n".join(term.snapshots)
    assert "4 integrated, 1 failed" in term.text.replace("\n", " ")


def test_not_a_terminal_gives_plain_lines(repo: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "worktree_mesh", "run",
                          str(plan_for(tmp_path))], cwd=repo, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 1
    assert "\x1b[" not in res.stdout  # no cursor movement, no colours
    assert "unit-0               integrated" in res.stdout


def test_a_test_first_group_is_shown_first_and_its_tests_red(repo: Path,
                                                             tmp_path: Path) -> None:
    """Listed last in the plan, the test-first unit has the first row (its group starts
    first), and shows red while its implementation runs."""
    go = tmp_path / "go"
    test = ("tests/test_power.py=import unittest\\n\\nfrom calc.ops import power\\n\\n\\n"
            "class P(unittest.TestCase):\\n    def test_power(self):\\n"
            "        self.assertEqual(power(2, 3), 8)\\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "proof_command": [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
        "sandbox_writable": [str(tmp_path)], "units": [
            {"id": "docs", "objective": "o", "unit_scope": "docs/",
             "lanes": {"coder": {"command": lane("act.py", "write:docs/a.md=a\\n")}}},
            {"id": "impl", "objective": "o", "unit_scope": "calc/", "depends_on": ["pin"],
             "lanes": {"coder": {"command": lane(
                 "act.py", f"await:{go}",
                 "append:calc/ops.py=\\n\\ndef power(a, b):\\n    return a ** b\\n"),
                 "timeout_s": 120}}},
            {"id": "pin", "objective": "o", "unit_scope": "tests/", "test_first": True,
             "lanes": {"coder": {"command": lane("act.py", f"write:{test}")}}}]}))
    term = Terminal([sys.executable, "-m", "worktree_mesh", "run", str(plan)],
                    repo, rows=30, cols=110)
    try:
        deadline = time.monotonic() + 60
        while not any(" red" in row for s in term.snapshots[-3:] for row in rows_of(s, "pin")):
            assert time.monotonic() < deadline, "the test-first unit never showed red"
            term.pump(0.1)
        shown = [line.split()[0] for line in term.snapshots[-1].replace("│", " ").splitlines()
                 if line.split() and line.split()[0] in ("docs", "impl", "pin")]
        assert shown == ["pin", "impl", "docs"], shown
    finally:
        go.touch()
    assert term.finish() == 0
    assert "3 integrated" in term.text
