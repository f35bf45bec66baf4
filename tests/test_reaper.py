"""The reaper: every process a command starts ends with it, daemons included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import alive

from worktree_mesh import reaper

REAPER = [sys.executable, "-I", "-S", reaper.__file__]


def test_daemons_and_background_jobs_end_with_the_command(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (f'setsid sh -c "sleep 1000" & echo $! >> {pids}; '
              f'nohup sleep 999 >/dev/null 2>&1 & echo $! >> {pids}; '
              f'(setsid sh -c "sleep 998 & echo \\$! >> {pids}; wait" &); '
              f'while [ "$(wc -l < {pids})" -lt 3 ]; do sleep 0.01; done; exit 3')
    done = subprocess.run([*REAPER, "sh", "-c", script], check=False, timeout=60)
    assert done.returncode == 3
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3
    assert not any(alive(pid) for pid in started)


def test_its_status_is_the_commands(tmp_path: Path) -> None:
    assert subprocess.run([*REAPER, "true"], check=False).returncode == 0
    assert subprocess.run([*REAPER, "sh", "-c", "exit 7"], check=False).returncode == 7
    killed = subprocess.run([*REAPER, "sh", "-c", "kill -TERM $$"], check=False)
    assert killed.returncode == 128 + signal.SIGTERM
    missing = subprocess.run([*REAPER, str(tmp_path / "no-such-program")], check=False,
                             capture_output=True)
    assert missing.returncode == 127


def test_told_to_stop_it_stops_the_command_and_everything_beneath(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (f'setsid sh -c "sleep 1000" & echo $! >> {pids}; echo $$ >> {pids}; '
              "while true; do sleep 0.05; done")
    run = subprocess.Popen([*REAPER, "sh", "-c", script], start_new_session=True)
    try:
        while not pids.exists() or len(pids.read_text().split()) < 2:
            assert run.poll() is None, "the command ended on its own"
            time.sleep(0.01)
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert not any(alive(int(pid)) for pid in pids.read_text().split())
