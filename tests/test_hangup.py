"""A closed terminal or ssh session (SIGHUP) stops a run as Ctrl-C does: lanes stopped,
the interruption recorded, exit 130, and ``--resume`` finishes the run."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY, alive, git, wtmesh


def slow_lane_plan(tmp_path: Path) -> tuple[Path, Path]:
    """One unit whose first attempt records its pid and then runs for ten minutes; its
    second writes a.txt at once."""
    pid_file = tmp_path / "lane.pid"
    command = (f'if [ "$WTMESH_ATTEMPT" = 1 ]; then echo $$ > {pid_file}.tmp; '
               f"mv {pid_file}.tmp {pid_file}; exec sleep 600; fi; echo a > a.txt")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": command}}}]}))
    return plan, pid_file


def wait_for_lane(pid_file: Path, run: subprocess.Popen[bytes],
                  drain: int | None = None) -> int:
    """The lane's pid, once it has written it; ``drain``: a terminal to keep reading
    meanwhile, so that wtmesh never blocks writing to it."""
    give_up = time.monotonic() + 120
    while not pid_file.exists():
        assert run.poll() is None, f"wtmesh ended first: {run.returncode}"
        assert time.monotonic() < give_up, "the lane never started"
        if drain is not None and select.select([drain], [], [], 0.05)[0]:
            os.read(drain, 65536)
        else:
            time.sleep(0.02)
    return int(pid_file.read_text())


def interrupted_then_resumed(repo: Path, plan: Path, run: subprocess.Popen[bytes],
                             lane_pid: int) -> None:
    assert run.wait(timeout=120) == 130
    (run_dir,) = (repo / ".git/wtmesh/runs").iterdir()
    events = [json.loads(line)["event"]
              for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert events[-1] == "run_interrupted", events
    assert not alive(lane_pid), "the lane runs on, orphaned"
    status = wtmesh("status", "--json", cwd=repo)
    assert status.returncode == 0, status.stderr
    assert status.json()["state"] == "interrupted"
    resumed = wtmesh("run", plan, "--resume", "--json", "--sandbox", "none", cwd=repo)
    assert resumed.returncode == 0, resumed.stderr
    assert [(u["status"], u["attempts"]) for u in resumed.json()["units"]] == [
        ("integrated", 2)]
    assert git(repo, "show", "main:a.txt") == "a"


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_sighup_stops_the_lanes_and_the_run_resumes(repo: Path, tmp_path: Path) -> None:
    plan, pid_file = slow_lane_plan(tmp_path)
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        # Unsandboxed: the test reads the lane's pid, which a PID namespace would hide.
        run = subprocess.Popen([PY, "-m", "worktree_mesh", "run", str(plan), "--sandbox", "none"],
                               cwd=repo,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    lane_pid = None
    try:
        lane_pid = wait_for_lane(pid_file, run)
        run.send_signal(signal.SIGHUP)
        interrupted_then_resumed(repo, plan, run, lane_pid)
        err_text = (tmp_path / "err").read_text()
        assert "wtmesh: interrupted" in err_text and "--resume" in err_text
        assert "Traceback" not in err_text
    finally:
        run.kill()
        kill_if_alive(lane_pid)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux setsid --ctty")
def test_closing_the_terminal_stops_the_lanes_and_the_run_resumes(
        repo: Path, tmp_path: Path) -> None:
    """wtmesh on a terminal of its own (its live view drawing there) that then hangs up,
    as when a terminal window or an ssh session is closed: the kernel sends SIGHUP, and
    every write to the terminal fails from then on."""
    plan, pid_file = slow_lane_plan(tmp_path)
    master, slave = os.openpty()
    run = subprocess.Popen(["setsid", "--ctty", PY, "-m", "worktree_mesh", "run", str(plan),
                            "--sandbox", "none"],
                           cwd=repo, stdin=slave, stdout=slave, stderr=slave,
                           env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    lane_pid = None
    try:
        lane_pid = wait_for_lane(pid_file, run, drain=master)
    finally:
        os.close(master)  # the terminal is gone
    try:
        interrupted_then_resumed(repo, plan, run, lane_pid)
    finally:
        run.kill()
        kill_if_alive(lane_pid)
