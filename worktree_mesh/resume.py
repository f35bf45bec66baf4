"""Reading an interrupted run back: from its ledger, and from git itself.

The ledger says what was started and finished; git says what landed. The compare-and-swap
on the landing ref is the commit point, so a unit counts as integrated exactly when a
commit carrying its ``Wtmesh-Run``/``Wtmesh-Unit`` trailers is on the landing ref —
whether or not the ledger got to say so before the crash.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import filelock

from . import ledger as ledger_mod
from .errors import UsageError
from .git import Git, Sha
from .ledger import LedgerDamaged
from .state import RunDir, StateDir, scratch_ref, stranded_ref, unit_ref_prefix


class RunLock:
    """Held by the process running a run for its whole life: the kernel releases it when
    that process dies, however it dies, so "is this run live?" never guesses from pids."""

    def __init__(self, run_dir: RunDir) -> None:
        self._lock = filelock.FileLock(str(run_dir.path / "run.lock"), fallback_to_soft=False)

    def try_acquire(self, timeout: float = 0) -> bool:
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def is_live(run_dir: RunDir) -> bool:
    if not (run_dir.path / "run.lock").exists():
        return False
    probe = RunLock(run_dir)
    if probe.try_acquire():
        probe.release()
        return False
    return True


def events(run_dir: RunDir) -> list[dict[str, Any]]:
    return ledger_mod.read(run_dir.ledger) if run_dir.ledger.exists() else []


def run_started(records: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in records if r["event"] == "run_started")


def run_finished(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    finished = [r for r in records if r["event"] == "run_finished"]
    return finished[-1] if finished else None


def find_run(state: StateDir, plan_path: Path, run_id: str | None) -> str:
    """The run to resume: the one named, else the newest unfinished run of this plan,
    else the newest run of this plan (which has finished)."""
    if run_id is not None:
        return state.existing_run(run_id).run_id
    mine: list[tuple[str, bool]] = []
    for rid in state.run_ids():
        try:
            records = events(state.run(rid))
        except LedgerDamaged:
            continue  # another run's damage must not stop resuming this plan's
        started = next((r for r in records if r["event"] == "run_started"), None)
        if started is None or Path(started["plan"]) != plan_path:
            continue
        mine.append((rid, run_finished(records) is not None))
    if not mine:
        raise UsageError(f"no run of {plan_path} to resume in this repository")
    unfinished = [rid for rid, done in mine if not done]
    return unfinished[-1] if unfinished else mine[-1][0]


def landed_commits(git: Git, run_id: str, ref: str, base: str) -> dict[str, Sha]:
    """Commits of this run on ``ref`` since ``base``, by unit id, oldest first."""
    if git.read_ref(ref) is None:
        return {}
    res = git.run("log", "--reverse", "--format=%H%x1f%(trailers:key=Wtmesh-Run,valueonly,"
                  "separator=%x2C)%x1f%(trailers:key=Wtmesh-Unit,valueonly,separator=%x2C)%x1e",
                  f"{base}..{ref}", "--")
    out: dict[str, Sha] = {}
    for record in res.text.split("\x1e"):
        fields = record.strip().split("\x1f")
        if len(fields) == 3 and fields[1].strip() == run_id:
            out[fields[2].strip()] = Sha(fields[0])
    return out


def _processes_of_run(run_id: str) -> Iterable[int]:
    """Processes started for this run (lanes, setup, proofs): they carry WTMESH_RUN_ID."""
    needle = f"WTMESH_RUN_ID={run_id}".encode()
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return []
    found = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_leftover_processes(run_id: str) -> list[int]:
    """Stop what a killed run left running (its lanes outlive it: they are in process
    groups of their own). Returns the process groups signalled."""
    groups: set[int] = set()
    for pid in _processes_of_run(run_id):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    own = os.getpgid(0)
    groups.discard(own)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(True for _ in _processes_of_run(run_id)):
        time.sleep(0.05)
    return sorted(groups)


@dataclass
class Recovery:
    run_id: str
    started: dict[str, Any]
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit_finished
    lanes_done: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    reruns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # after conflicts
    stranded: dict[str, Any] | None = None  # the stranded event: where the branch starts
    left_behind: dict[str, Any] | None = None  # the user's worktree did not follow
    pending_bring_along: dict[str, Any] | None = None  # recorded, not known to be done


def recover(run_dir: RunDir) -> Recovery:
    records = events(run_dir)
    recovery = Recovery(run_dir.run_id, run_started(records))
    for record in records:
        event = record["event"]
        unit = str(record.get("unit", ""))
        if event == "unit_finished":
            recovery.finished[unit] = record
        elif event == "lanes_done":
            recovery.lanes_done[unit] = record
        elif event == "rerun":  # the lanes before it no longer count
            recovery.reruns.setdefault(unit, []).append(record)
            recovery.lanes_done.pop(unit, None)
        elif event == "lane_started":
            recovery.attempts[unit] = max(recovery.attempts.get(unit, 0), record["attempt"])
        elif event == "stranded":
            recovery.stranded = record
        elif event == "bring_along":
            recovery.pending_bring_along = record
        elif event == "left_behind":
            recovery.left_behind = record
            recovery.pending_bring_along = None
        elif event == "landed":
            recovery.pending_bring_along = None
    return recovery


def landed_in_git(git: Git, recovery: Recovery) -> dict[str, Sha]:
    """Units of the run whose commit is on a landing ref: integrated, whatever the ledger
    managed to say. Oldest first."""
    started, run_id = recovery.started, recovery.run_id
    ref = (scratch_ref(run_id) if started["delivery_mode"] == "patch_first"
           else f"refs/heads/{started['target']}")
    landed = landed_commits(git, run_id, ref, started["base"])
    # The stranded branch once the ledger says the run stranded: that event is written
    # before the branch is made, so a branch without it is none of the run's (a lane can
    # make one by path, on commits carrying this run's trailers).
    if recovery.stranded is not None:
        landed.update(landed_commits(git, run_id, stranded_ref(run_id), started["base"]))
    return landed


StepKind = Literal["landed", "finished", "lanes_ended", "integrate", "rerun", "start"]


@dataclass(frozen=True)
class ResumeStep:
    """What resuming does with one unit, and why, in plain words."""

    kind: StepKind
    says: str
    result: Sha | None = None  # "integrate": the lanes' finished work


def resume_steps(git: Git, recovery: Recovery, unit_ids: Iterable[str],
                 landed: dict[str, Sha]) -> dict[str, ResumeStep]:
    """The one reading of an interrupted run that both ``--resume`` and ``status`` use."""
    steps: dict[str, ResumeStep] = {}
    for uid in unit_ids:
        record = recovery.finished.get(uid)
        lanes = recovery.lanes_done.get(uid)
        attempts = recovery.attempts.get(uid, 0)
        if uid in landed:
            steps[uid] = ResumeStep("landed", f"integrated as {landed[uid][:12]}: kept")
        elif record is not None:
            steps[uid] = ResumeStep("finished", f"ended {record['status']}: kept")
        elif lanes is not None and lanes["status"] != "accepted":
            steps[uid] = ResumeStep("lanes_ended", f"its lanes ended {lanes['status']}: "
                                    "recorded as such, not run again")
        elif (result := _result_since_rerun(git, recovery, uid)):
            steps[uid] = ResumeStep("integrate", "its lanes had finished: their work is "
                                    "integrated without running them again", result)
        elif attempts and uid in recovery.reruns and \
                recovery.reruns[uid][-1]["attempt"] > attempts:
            steps[uid] = ResumeStep("rerun", f"its change conflicted: runs again from the "
                                    f"head as attempt {attempts + 1}")
        elif attempts:
            steps[uid] = ResumeStep("rerun", f"cut off during attempt {attempts}: runs "
                                    f"again as attempt {attempts + 1}")
        else:
            steps[uid] = ResumeStep("start", "had not started: runs")
    return steps


def _result_since_rerun(git: Git, recovery: Recovery, uid: str) -> Sha | None:
    """The unit's finished work, unless it is the result a rerun replaced (its ref stays
    until the new lanes write theirs)."""
    result = git.read_ref(f"{unit_ref_prefix(recovery.run_id, uid)}/result")
    reruns = recovery.reruns.get(uid)
    if result is not None and reruns and result == reruns[-1].get("old_result"):
        return None
    return result
