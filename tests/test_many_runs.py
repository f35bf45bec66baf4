"""Many runs on one repository, and runs killed at arbitrary moments (SPEC 5)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import git, no_worktrees_left, wtmesh


def slow_plan(tmp_path: Path, name: str, ids: list[str], lane_s: float = 1.0,
              proof_s: float = 0.5) -> Path:
    """Units writing their own file after ``lane_s`` seconds; a proof of ``proof_s`` (on
    the base, which has none of their files, at once)."""
    plan = tmp_path / f"{name}.json"
    plan.write_text(json.dumps({
        "max_active": 2,
        "proof_command": f"if ls *.txt >/dev/null 2>&1; then sleep {proof_s}; fi; "
                         "test ! -e broken.txt",
        "lanes": {"coder": {"command": f"sleep {lane_s}; echo {{id}} > {{id}}.txt"}},
        "units": [{"id": uid, "objective": f"write {uid}", "unit_scope": f"{uid}.txt"}
                  for uid in ids]}))
    return plan


# Events that say the run got further (a resume's own bookkeeping does not count).
PROGRESS = (b'"event": "lane_finished"', b'"event": "proof_finished"', b'"event": "landed"')


def ledger_events(repo: Path) -> int:
    """How many progress events the (only) run's ledger holds; 0 before it exists."""
    ledgers = list((repo / ".git" / "wtmesh" / "runs").glob("*/ledger.jsonl"))
    if not ledgers:
        return 0
    text = ledgers[0].read_bytes()
    return sum(text.count(marker) for marker in PROGRESS)


def ledger_grows(repo: Path, run: subprocess.Popen[bytes], by: int,
                 timeout_s: float = 300) -> bool:
    """Wait until the run's ledger holds ``by`` more events than now, or the run ends
    (True: it ended by itself)."""
    target = ledger_events(repo) + by
    deadline = time.monotonic() + timeout_s
    while ledger_events(repo) < target:
        if run.poll() is not None:
            return True
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    return run.poll() is not None


def start(plan: Path, repo: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan), *args],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def test_two_runs_on_different_plans_both_land_everything(repo: Path, tmp_path: Path) -> None:
    first = slow_plan(tmp_path, "first", ["a1", "a2", "a3"], lane_s=0.3, proof_s=0.2)
    second = slow_plan(tmp_path, "second", ["b1", "b2", "b3"], lane_s=0.3, proof_s=0.2)
    runs = [start(first, repo, "--json"), start(second, repo, "--json")]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err.decode()
    summaries = [json.loads(out) for out, _err in outputs]
    assert all(s["counts"]["integrated"] == 3 for s in summaries)
    on_main = set(git(repo, "log", "--format=%H", "main").splitlines())
    for summary in summaries:
        assert {u["commit"] for u in summary["units"]} <= on_main
    subjects = git(repo, "log", "--format=%s", "main").splitlines()
    assert len(subjects) == 7  # six units and the initial commit: nothing overwritten
    assert {f"{u}.txt" for u in ("a1", "a2", "a3", "b1", "b2", "b3")} <= {
        p.name for p in repo.iterdir()}
    assert git(repo, "status", "--porcelain") == ""
    assert no_worktrees_left(repo)


def test_a_second_run_waiting_for_the_lock_says_so(repo: Path, tmp_path: Path) -> None:
    """While one run holds the integrator lock for a slow proof, the other says it waits
    and who holds it, then lands when the lock is free."""
    slow = slow_plan(tmp_path, "slow", ["s1"], lane_s=0.0, proof_s=3.0)
    quick = slow_plan(tmp_path, "quick", ["q1"], lane_s=0.5, proof_s=0.0)
    first = start(slow, repo)
    time.sleep(1.0)
    second = start(quick, repo)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert b"waiting for the integrator lock" in out + err
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert len(git(repo, "log", "--format=%s", "main").splitlines()) == 3


SIX = ["u1", "u2", "u3", "u4", "u5", "u6"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(
        repo: Path, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    plan = slow_plan(tmp_path, "six", SIX, lane_s=1.0, proof_s=0.4)
    reference = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(repo), str(reference)], check=True)
    assert wtmesh("run", plan, cwd=reference).returncode == 0
    want_tree = git(reference, "rev-parse", "main^{tree}")

    kills = 0
    args: list[str] = []
    while True:
        run = start(plan, repo, *args)
        # Killed once the run has got further by a random number of events, not after
        # a random time: on a busy machine a resumed run can take longer than any fixed
        # time to do anything, and then it would be killed for ever.
        if not ledger_grows(repo, run, by=rng.randint(1, 3)):
            run.send_signal(signal.SIGKILL)  # no cleanup at all; its lanes live on
            run.wait()
            kills += 1
        out, err = run.communicate()
        assert b"Traceback" not in err, err.decode()
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, err.decode()
        assert kills < 60
        # Killed before its run existed (a busy machine starts slowly): start afresh.
        started = any((repo / ".git" / "wtmesh" / "runs").glob("*/ledger.jsonl"))
        args = ["--resume"] if started else []
    assert kills >= 1, "the run was never killed: the test proved nothing"

    assert git(repo, "rev-parse", "main^{tree}") == want_tree
    subjects = git(repo, "log", "--format=%s", "main").splitlines()
    assert len(subjects) == 7, subjects  # each unit landed exactly once
    assert sorted(s.split(":")[0] for s in subjects[:6]) == SIX
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
    assert wtmesh("gc", cwd=repo).returncode == 0
    assert git(repo, "for-each-ref", "refs/wtmesh/") == ""
    assert no_worktrees_left(repo)
