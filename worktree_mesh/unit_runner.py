"""Run one unit's lanes in a worktree and report what they produced.

This is the executor seam: ``LocalExecutor.run(job, report)`` is a function of the
repository, the start commit, the lane commands and the environment, and returns a
``UnitWork`` record. It decides nothing about scheduling and never touches refs the user
sees; its only writes to the repository are objects and refs under ``refs/wtmesh/``, so
the work survives a crash. Lanes are untrusted: after each one (setup included) the run's
``RepoGuard`` puts back what it changed in the user's repository outside its worktree,
and a unit whose lane did that fails ``safety_regression_risk`` (SPEC 10). Before each
lane attempt it asks the run's ``Gate`` whether a new lane may start (``--max-cost-usd``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import apply_patch, diffs, faults, presets, proc  # presets: the catalogue only
from .diffs import UnitDiff
from .git import Git, Sha, clean_env
from .lanes import LaneResult, LaneRun, render, run_lane
from .plan import LaneSpec, SetupSpec, Unit
from .prepare import SetupFailed, prepare
from .repo_guard import RepoGuard, own_writes
from .sandbox import Confinement, Sandbox
from .state import write_atomic
from .worktrees import WorktreePool

Report = Callable[..., None]
# Asked before each lane attempt: why no new lane may start now, or None.
Gate = Callable[[], str | None]

# How many of the things a lane changed the unit's notes name (the ledger has them all).
NAMED_CHANGES = 5


@dataclass(frozen=True)
class UnitJob:
    run_id: str
    unit: Unit
    start: Sha
    first_attempt: int
    repo: Path  # the user's working tree (placeholders, copy_ignored)
    plan_dir: Path
    unit_dir: Path  # logs, results, the diff
    setup: SetupSpec
    ref_prefix: str  # refs/wtmesh/<run-id>/units/<unit-id>
    # A rerun after its change conflicted (SPEC 14): the file WTMESH_CONFLICT names.
    conflict: Path | None = None


@dataclass(frozen=True)
class UnitWork:
    unit_id: str
    status: str  # accepted | rejected | no_diff | failed | skipped (no lane could start)
    failure_code: str | None
    notes: str
    start: Sha
    result: Sha | None  # commit holding the unit's final worktree (parent: start)
    diff: UnitDiff | None
    diff_path: Path | None
    attempts: int
    lanes: tuple[LaneResult, ...]
    duration_s: float
    # Said in the landed commit's message beside the run and unit (a consensus unit's
    # chosen candidate and its votes).
    trailers: tuple[str, ...] = ()


class Ended(Exception):
    """The unit ended before producing a diff to integrate."""

    def __init__(self, status: str, code: str | None, notes: str) -> None:
        super().__init__(notes)
        self.status, self.code, self.notes = status, code, notes


@dataclass(frozen=True)
class Reading:
    """What a reading lane did: its result, the paths it changed (which it must not),
    or why it never ran to the end (``ended``: its status, code and notes)."""

    lane: LaneResult | None
    wrote: list[str]
    ended: Ended | None


class LocalExecutor:
    """Runs units as local processes in pooled worktrees."""

    def __init__(self, git: Git, pool: WorktreePool, sandbox: Sandbox | None = None,
                 guard: RepoGuard | None = None) -> None:
        self.git = git
        self.pool = pool
        self.sandbox = sandbox  # None: lanes and setup run unconfined
        self.guard = guard  # unconfined lanes: what they change in the repository is undone

    def run(self, job: UnitJob, report: Report, gate: Gate | None = None) -> UnitWork:
        started = time.monotonic()
        worktree = self.pool.acquire(job.start)
        attempt = [job.first_attempt]
        lanes: list[LaneResult] = []
        result: Sha | None = None
        unit_diff: UnitDiff | None = None
        diff_path: Path | None = None
        try:
            job.unit_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(job.unit_dir / "unit.json",
                         json.dumps(job.unit.as_record(), indent=2).encode() + b"\n")
            result = self._lanes(job, worktree, attempt, lanes, report, gate)
            diff_path = job.unit_dir / "unit.diff"
            unit_diff = diffs.collect(self.git, job.start, result, job.unit.scope, diff_path)
            if unit_diff.empty:
                raise Ended("no_diff", None, "the lanes changed nothing")
            if unit_diff.violations:
                raise Ended("failed", "scope_violation", "; ".join(unit_diff.violations))
            status, code, notes = "accepted", None, lanes[-1].notes if lanes else ""
        except Ended as ended:
            status, code, notes = ended.status, ended.code, ended.notes
        finally:
            self.pool.release(worktree)
        return UnitWork(job.unit.id, status, code, notes, job.start, result, unit_diff,
                        diff_path, attempt[0], tuple(lanes), time.monotonic() - started)

    def run_reader(self, job: UnitJob, spec: LaneSpec, report: Report,
                   gate: Gate | None = None) -> Reading:
        """One lane that only reads (a critic), in a worktree at the job's start after
        setup, retried as any lane. What it changed there is said, and thrown away."""
        worktree = self.pool.acquire(job.start)
        attempt = [job.first_attempt]
        try:
            job.unit_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(job.unit_dir / "unit.json",
                         json.dumps(job.unit.as_record(), indent=2).encode() + b"\n")
            _refuse_if_spent(gate, job, spec, None)
            self._setup(job, worktree, report)
            before = self.git.tree_of(self.git.snapshot(worktree, job.start, "wtmesh reader"))
            lane = self._lane_with_retries(job, spec, worktree, attempt, job.start, None,
                                           report, gate)
            after = self.git.tree_of(self.git.snapshot(worktree, job.start, "wtmesh reader"))
            wrote = [p for c in self.git.changes(before, after) for p in c.paths]
            return Reading(lane, wrote, None)
        except Ended as ended:
            return Reading(None, [], ended)
        finally:
            self.pool.release(worktree)

    # -- lanes -------------------------------------------------------------------------

    def _lanes(self, job: UnitJob, worktree: Path, attempt: list[int],
               lanes: list[LaneResult], report: Report, gate: Gate | None) -> Sha:
        _refuse_if_spent(gate, job, job.unit.coder, None)  # before setup: spare its work
        self._setup(job, worktree, report)
        coder = self._lane_with_retries(job, job.unit.coder, worktree, attempt, job.start,
                                        None, report, gate)
        lanes.append(coder)
        self._check_decision(coder)
        if coder.decision == "no_diff":
            raise Ended("no_diff", None, coder.notes or "the coder reported no change")
        self._apply_result_patch(coder, worktree)
        after_coder = self._snapshot(job, worktree, "coder")
        fixer_spec = job.unit.fixer
        if fixer_spec is None:  # the coder's work is the result: both refs at once
            self.set_refs({f"{job.ref_prefix}/coder": after_coder,
                            f"{job.ref_prefix}/result": after_coder})
        else:
            self.set_refs({f"{job.ref_prefix}/coder": after_coder})
        if self.git.tree_of(after_coder) == self.git.tree_of(job.start):
            raise Ended("no_diff", None, "the coder changed nothing")
        if fixer_spec is None:
            final = after_coder
        else:
            diff_file = job.unit_dir / "coder.diff"
            write_atomic(diff_file, self.git.diff(job.start, after_coder))
            fixer = self._lane_with_retries(job, fixer_spec, worktree, attempt, after_coder,
                                            diff_file, report, gate)
            lanes.append(fixer)
            self._check_decision(fixer)
            # The fixer's word is final; its "no_diff" means it had nothing to add, so the
            # coder's change stands.
            self._apply_result_patch(fixer, worktree)
            coder_paths = [p for c in self.git.changes(job.start, after_coder) for p in c.paths]
            final = self._snapshot(job, worktree, "result", coder_paths)
            self.set_refs({f"{job.ref_prefix}/result": final})
        faults.point("lanes-done")
        return final

    def _snapshot(self, job: UnitJob, worktree: Path, what: str,
                  earlier: list[str] | None = None) -> Sha:
        """The worktree committed onto the unit's start. What a checkout could not
        reproduce fails the unit first (SPEC 10): a path the change touches in a
        repository embedded in the worktree (its files would not land, or not with its
        history), or a link git refuses to record. ``earlier``: paths an earlier snapshot
        already took up (the worktree's index has them, so they are not pending)."""
        paths = self.git.pending_paths(worktree) + (earlier or [])
        embedded = diffs.embedded_repositories(worktree, paths)
        if embedded:
            raise Ended("failed", "scope_violation",
                         "embedded git repository (its files cannot land): "
                         + ", ".join(embedded))
        refused = diffs.links_git_refuses(worktree, paths)
        if refused:
            raise Ended("failed", "scope_violation",
                         "symlink git refuses to record: " + ", ".join(refused))
        return self.git.snapshot(worktree, job.start, f"wtmesh {job.unit.id}: {what}")

    def set_refs(self, refs: dict[str, Sha]) -> None:
        """The unit's refs, written where the guard expects them (a lane that moves or
        deletes one later is caught)."""
        with own_writes(self.guard) as expect:
            self.git.set_refs(refs)
            expect(dict(refs))

    def _undo_repo_changes(self, job: UnitJob, lane: str, report: Report) -> None:
        """After a lane: whatever it changed in the user's repository outside its
        worktree is put back, and the unit fails, naming it."""
        if self.guard is None:
            return
        touched = self.guard.restore()
        if not touched:
            return
        left = self.guard.check()
        report("repo_changed", unit=job.unit.id, lane=lane, changed=touched, not_undone=left)
        named = "; ".join(touched[:NAMED_CHANGES])
        if len(touched) > NAMED_CHANGES:
            named += f"; and {len(touched) - NAMED_CHANGES} more (see the ledger)"
        undone = (f"; could not undo: {'; '.join(left[:NAMED_CHANGES])}" if left
                  else "; all of it was undone")
        raise Ended("failed", "safety_regression_risk",
                     f"the {lane} changed the repository outside its worktree: {named}{undone}")

    @staticmethod
    def _check_decision(lane: LaneResult) -> None:
        if lane.decision != "reject":
            return
        runner_said = lane.timed_out or lane.could_not_start
        raise Ended("failed" if runner_said else "rejected", lane.failure_code,
                     lane.notes or f"the {lane.lane} rejected the change")

    def _apply_result_patch(self, lane: LaneResult, worktree: Path) -> None:
        """A lane may propose a patch instead of editing: a unified diff or Codex's
        ``*** Begin Patch`` format. One that does not apply is invalid output."""
        if not lane.patch or not lane.patch.strip():
            return
        if apply_patch.is_apply_patch(lane.patch):
            try:
                apply_patch.apply(lane.patch, worktree)
            except apply_patch.PatchFormatError as exc:
                raise Ended("rejected", "invalid_output_schema",
                             f"{lane.lane} patch does not apply: {exc}") from None
            return
        applied = self.git.run("apply", "--binary", "--whitespace=nowarn", "-",
                               cwd=worktree, input=lane.patch.encode("utf-8", "surrogateescape"),
                               check=False)
        if applied.returncode != 0:
            why = applied.stderr.decode("utf-8", "replace").strip().splitlines() or [
                "git apply failed"]
            raise Ended("rejected", "invalid_output_schema",
                         f"{lane.lane} patch does not apply: {why[0]}")

    def _lane_with_retries(self, job: UnitJob, spec: LaneSpec, worktree: Path,
                           attempt: list[int], reset_to: Sha, diff_file: Path | None,
                           report: Report, gate: Gate | None) -> LaneResult:
        tries = 0
        last: LaneResult | None = None
        while True:
            if proc.RUNNING_GROUPS.stopping.is_set():
                raise Ended("failed", "interrupted", "the run was interrupted")
            _refuse_if_spent(gate, job, spec, last)
            if tries:
                attempt[0] += 1
                # Retries start from a clean worktree at the lane's starting point.
                self.git.checkout_clean(worktree, reset_to)
                self._setup(job, worktree, report)
            tries += 1
            lane_run = self._lane_run(job, spec, worktree, attempt[0], diff_file)
            report("lane_started", unit=job.unit.id, lane=spec.name, attempt=attempt[0])
            if lane_run is None:
                result = LaneResult(spec.name, attempt[0], "reject", "tooling_unavailable",
                                    f"preset {spec.preset!r} is not available in this version",
                                    None, None, None, False, 0.0, None, could_not_start=True)
            else:
                def spawned(pid: int) -> None:
                    report("lane_spawned", unit=job.unit.id, lane=spec.name,
                           attempt=attempt[0], pgid=pid)
                    faults.point("lane")

                result = run_lane(lane_run, on_spawn=spawned)
            report("lane_finished", unit=job.unit.id, **result.as_record())
            self._undo_repo_changes(job, spec.name, report)
            if not result.retryable or tries > spec.retries:
                return result
            last = result

    def _lane_run(self, job: UnitJob, spec: LaneSpec, worktree: Path, attempt: int,
                  diff_file: Path | None) -> LaneRun | None:
        if spec.command is not None:
            command = render(spec.command, self._placeholders(job, worktree))
        elif spec.preset in presets.PRESETS:
            # A preset is an ordinary lane whose command is the preset runner; it reads
            # the environment below and writes the result file itself (SPEC 9). Its args
            # take placeholders as an argv command does.
            command = render(presets.command(spec.preset, spec.name, spec.options),
                             self._placeholders(job, worktree))
        else:
            return None
        name = f"{spec.name}-{attempt}"
        env = self._env(job, worktree, diff_file)
        env.update({
            "WTMESH_LANE": spec.name,
            "WTMESH_ATTEMPT": str(attempt),
            "WTMESH_RESULT_JSON": str(job.unit_dir / f"{name}.result.json"),
        })
        env.update(spec.env)
        return LaneRun(
            lane=spec.name, unit_id=job.unit.id, attempt=attempt,
            command=command,
            cwd=worktree, env=env, timeout_s=spec.timeout_s,
            result_path=job.unit_dir / f"{name}.result.json",
            stdout_log=job.unit_dir / f"{name}.stdout.log",
            stderr_log=job.unit_dir / f"{name}.stderr.log",
            confinement=self._confine(job, worktree, env, spec.preset),
        )

    def _confine(self, job: UnitJob, worktree: Path, env: dict[str, str],
                 preset: str | None = None) -> Confinement | None:
        """A lane or setup may write its worktree and its unit's directory only."""
        if self.sandbox is None:
            return None
        return self.sandbox.confine(worktree, env=env, unit_dir=job.unit_dir, preset=preset)

    @staticmethod
    def _placeholders(job: UnitJob, worktree: Path) -> dict[str, str]:
        return {"id": job.unit.id, "objective": job.unit.objective,
                "plan_dir": str(job.plan_dir), "repo": str(job.repo),
                "worktree": str(worktree), "run_id": job.run_id}

    @staticmethod
    def _env(job: UnitJob, worktree: Path, diff_file: Path | None) -> dict[str, str]:
        env = clean_env()
        env.update({
            "WTMESH_RUN_ID": job.run_id,
            "WTMESH_UNIT_ID": job.unit.id,
            "WTMESH_UNIT_JSON": str(job.unit_dir / "unit.json"),
            "WTMESH_BASE_SHA": job.start,
            "WTMESH_WORKTREE": str(worktree),
            "WTMESH_REPO": str(job.repo),
            "WTMESH_PLAN_DIR": str(job.plan_dir),
            "PWD": str(worktree),
        })
        if diff_file is not None:
            env["WTMESH_DIFF"] = str(diff_file)
        if job.conflict is not None:
            env["WTMESH_CONFLICT"] = str(job.conflict)
        return env

    # -- setup -------------------------------------------------------------------------

    def _setup(self, job: UnitJob, worktree: Path, report: Report) -> None:
        env = self._env(job, worktree, None)
        try:
            prepare(self.git, job.setup, repo=job.repo, worktree=worktree,
                    placeholders=self._placeholders(job, worktree), env=env,
                    log=job.unit_dir / "setup.log",
                    confinement=self._confine(job, worktree, env))
        except SetupFailed as exc:
            if job.setup.command is not None:
                self._undo_repo_changes(job, "setup", report)
            report("setup_failed", unit=job.unit.id, notes=str(exc))
            raise Ended("failed", "tooling_unavailable", str(exc)) from None
        if job.setup.command is not None:  # copying ignored files alone runs nothing
            self._undo_repo_changes(job, "setup", report)


def _refuse_if_spent(gate: Gate | None, job: UnitJob, spec: LaneSpec,
                     last: LaneResult | None) -> None:
    """No new lane once the run's budget is spent (SPEC 17). A unit none of whose lanes
    ever started is ``skipped``; one stopped half-way ``failed``: a coder's change the
    fixer never saw must not land unreviewed (it stays under the unit's ``coder`` ref)."""
    why = gate() if gate is not None else None
    if why is None:
        return
    if last is not None:
        raise Ended("failed", "budget_exhausted",
                     f"the {spec.name}'s attempt {last.attempt} ended {last.failure_code}: "
                     f"{last.notes}; no retry: {why}")
    if spec is job.unit.coder and job.first_attempt == 1:
        raise Ended("skipped", "budget_exhausted", f"no lane started: {why}")
    if spec is job.unit.coder:
        raise Ended("failed", "budget_exhausted",
                     f"cut off during attempt {job.first_attempt - 1}, not run again: {why}")
    raise Ended("failed", "budget_exhausted",
                 f"the coder's change was not reviewed: no {spec.name} started: {why}")


def lane_records(work: UnitWork) -> list[dict[str, Any]]:
    return [lane.as_record() for lane in work.lanes]
