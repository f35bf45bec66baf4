"""The run loop: decides when units start and when they integrate.

Lanes run on a pool of ``max_active`` threads (each lane is a subprocess); the integrator
runs on one thread of its own, taking units strictly in integration order. Every state
change goes to the ledger first, then to the observer that renders it.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import base_proof, conflict, faults, integrating, preflight, proc, test_first
from . import ledger as ledger_mod
from . import usage as usage_mod
from .consensus import comparison
from .consensus.flow import ConsensusUnit
from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EnvironmentRefused,
    WtmeshError,
)
from .git import Git, Sha
from .integrator import CandidateProof, Landing, RedProof, apply_on_objects
from .ledger import Ledger
from .plan import Unit, implementation_units, integration_order, test_first_groups
from .presets import versions
from .readiness import FINAL_STATES, Readiness
from .report import write_report
from .resume import (
    Recovery,
    ResumeStep,
    RunLock,
    landed_in_git,
    resume_steps,
    stop_leftover_processes,
)
from .run_options import RunOptions
from .slots import LaneSlots, Stopped
from .state import RunDir, StateDir, new_run_id, unit_ref_prefix, write_atomic
from .text import printable, printable_data, quote_path
from .toolkit import learnings, wave
from .toolkit.backpressure import Backpressure
from .unit_runner import LocalExecutor, UnitJob, UnitWork
from .usage import Budget, LaneSpend
from .worktrees import WorktreePool, fill_slots

Observer = Callable[[dict[str, Any]], None]
UNIT_STATES = ("pending", "running", "integrated", "no_diff", "rejected", "failed", "skipped",
               "no_consensus", "awaiting_choice")


@dataclass
class UnitProgress:
    unit: Unit
    state: str = "pending"
    phase: str | None = None  # coder | fixer | waiting | integrating
    failure_code: str | None = None
    notes: str = ""
    work: UnitWork | None = None
    landing: Landing | None = None
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    files: list[str] = field(default_factory=list)  # as written out (text.quote_path)
    earlier_s: float = 0.0  # time spent before a resume
    waiting_since: float | None = None  # when its lanes were done
    reruns: int = 0  # runs again after its change conflicted (optimistic overlap)
    conflict: Path | None = None  # what the last conflict was: WTMESH_CONFLICT
    staged: Sha | None = None  # test-first: its change proven red, not landed

    @property
    def duration_s(self) -> float:
        if self.started is None:
            return round(self.earlier_s, 3)
        return round(self.earlier_s + (self.finished or time.monotonic()) - self.started, 3)

    def summary(self, spends: list[LaneSpend], records: list[dict[str, Any]],
                run_dir: RunDir) -> dict[str, Any]:
        landing = self.landing
        return {
            "id": self.unit.id,
            "status": self.state,
            "failure_code": self.failure_code,
            "commit": landing.commit if landing and landing.status == "integrated" else None,
            "patch": landing.patch if landing else None,
            "files": self.files,
            "attempts": self.attempts,
            "reruns": self.reruns,
            "duration_s": self.duration_s,
            "usage": usage_mod.unit_usage(spends, self.unit.id),
            **({"labels": dict(self.unit.labels)} if self.unit.labels else {}),
            **(comparison.summary_fields(records, run_dir, self.unit.id, self.state)
               if self.unit.consensus is not None else {}),
        }


class Run:
    def __init__(self, options: RunOptions, git: Git, observer: Observer,
                 run_id: str | None = None) -> None:
        self.options = options
        self.git = git
        self.observer = observer
        self.run_id = run_id or new_run_id()
        self.state = StateDir.for_common_dir(git.common_dir)
        self.run_dir: RunDir = self.state.run(self.run_id)
        self.order = integration_order(options.plan)
        self.readiness = Readiness(self.order, options.plan.overlap)
        self.units = {u.id: UnitProgress(u) for u in self.order}
        self.groups = test_first_groups(self.order)  # test-first groups' members
        self.head: Sha = options.base  # where the next unit starts: the last landing
        self.ledger: Ledger | None = None
        self.run_lock = RunLock(self.run_dir)
        self.interrupted = False
        self.backpressure = Backpressure(options.max_active) if options.budget else None
        self.spending = Budget(options.max_cost_usd)  # --max-cost-usd (SPEC 17)
        self.said_uncounted = False  # warned that a lane's cost is not known
        self.integration = integrating.build(options, git, run_id=self.run_id,
                                             state=self.state, run_dir=self.run_dir,
                                             report=self.emit)
        self.guard = self.integration.guard
        self.integrator = self.integration.integrator
        self.patch_dir = self.integrator.patch_dir
        sandbox = self.integration.sandbox
        # The lanes' own git work (filling and resetting worktrees, taking snapshots and
        # diffs) runs nicer than the integrator's: landing is the one serial step, so
        # when the CPU is short it goes first. The lane commands keep normal priority.
        # One worker per lane and per fill, so that a fill (seconds) never holds up a
        # lane's snapshot.
        self.lane_git_runner = proc.LowPriorityRunner(
            workers=options.max_active + fill_slots())
        lane_git = git.running_with(self.lane_git_runner)
        self.pool = WorktreePool(lane_git, self.run_dir.worktrees, size=options.max_active)
        self.executor = LocalExecutor(lane_git, self.pool, sandbox, self.guard)
        # Every lane takes a slot: a unit's lanes one, a consensus unit's one per lane it
        # runs (SPEC 12).
        self.slots = LaneSlots(lambda: self.active_limit, proc.RUNNING_GROUPS.stopping,
                               on_give=self._slot_freed)
        self._wake: Future[None] | None = None  # done when a slot comes free
        self.integration_pool: ThreadPoolExecutor | None = None
        self.base_passed: set[str] = set()  # base proofs a resumed run need not run again
        self.base_blocked: str | None = None  # why the base fails its own proof

    # -- events ------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        if self.ledger is None:  # before the run exists (waiting for the lock to start)
            self.observer({"event": event, "run_id": self.run_id, **fields})
            return
        record = self.ledger.append(event, **fields)
        self.observer(record)

    def _set(self, progress: UnitProgress, state: str, phase: str | None = None,
             **who: str) -> None:
        """``who``: the candidate or critic of a consensus unit the change is about."""
        progress.state, progress.phase = state, phase
        self.emit("unit_state", unit=progress.unit.id, state=state, phase=phase, **who)

    def _finish(self, progress: UnitProgress, state: str, code: str | None, notes: str) -> None:
        progress.state, progress.phase = state, None
        progress.failure_code, progress.notes = code, notes
        progress.finished = time.monotonic()
        landing = progress.landing
        fields: dict[str, Any] = {"unit": progress.unit.id, "status": state,
                                  "failure_code": code, "notes": notes,
                                  "attempts": progress.attempts,
                                  "duration_s": progress.duration_s, "files": progress.files}
        if landing is not None and landing.status == "integrated":
            fields["commit"] = landing.commit
            if landing.patch:
                fields["patch"] = landing.patch
        self.emit("unit_finished", **fields)
        if progress.unit.consensus is not None:
            comparison.write(self.run_dir, progress.unit.id, progress.unit.objective,
                             ledger_mod.read(self.run_dir.ledger), self.patch_dir)
        self._after_unit(progress.unit, state, code, notes)

    def _after_unit(self, unit: Unit, state: str, code: str | None, notes: str) -> None:
        """A budget-aware run slows down after a unit goes badly (and says why in the
        ledger); --learnings keeps a record of what failed, written at once so a crash
        loses none."""
        if self.backpressure is not None:
            change = self.backpressure.unit_ended(unit.id, state, code)
            if change is not None:
                self.emit("backpressure", **change.as_record())
        if self.options.learnings is not None:
            learning = learnings.capture(unit.id, state, code, unit.objective,
                                         evidence=printable(notes), run_id=self.run_id)
            if learning is not None:
                try:
                    learnings.append_new(self.options.learnings, [learning])
                except OSError as exc:  # a side record: the run goes on, saying so
                    self.emit("warning", unit=unit.id,
                              message=f"could not write to --learnings "
                                      f"{self.options.learnings}: {exc.strerror or exc}")

    @property
    def active_limit(self) -> int:
        """How many units' lanes may run at once right now."""
        if self.backpressure is not None:
            return self.backpressure.limit
        return self.options.max_active

    # -- the run -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Refuse early (an unusable state directory, a dirty target) before anything is
        written."""
        preflight.check(self.order)  # a missing program: refused before anything exists
        self.state.check_usable()
        # First without the lock, so a refused start leaves no trace (not even a lock
        # file); then under it, as another run may be moving the worktree right now.
        self.integrator.check_start()
        with self.integrator.locked():
            self.integrator.check_start()
        self.run_dir.create()
        # Only `wtmesh gc` can hold a new run's lock, and only for a moment.
        if not self.run_lock.try_acquire(timeout=30):
            raise EnvironmentRefused(f"could not lock the new run {self.run_id}")
        write_atomic(self.run_dir.plan_copy,
                     json.dumps(self.options.plan.raw, indent=2).encode() + b"\n")
        self.ledger = Ledger(self.run_dir.ledger, self.run_id)
        opts = self.options
        clis = self._preset_clis()
        self.emit("run_started", plan=str(opts.plan.path), delivery_mode=opts.delivery_mode,
                  target=opts.target, base=opts.base, max_active=opts.max_active,
                  budget=opts.budget, batch=opts.batch, max_cost_usd=opts.max_cost_usd,
                  report=str(opts.report) if opts.report else None,
                  learnings=str(opts.learnings) if opts.learnings else None,
                  patch_dir=str(self.patch_dir) if self.patch_dir else None,
                  units=[u.id for u in self.order], pid=os.getpid(),
                  repo=str(opts.repo.toplevel) if opts.repo.toplevel else None,
                  sandbox=opts.sandbox.as_record(),
                  presets={cli.preset: cli.record() for cli in clis},
                  waves=self._waves(), overlap=opts.plan.overlap, executor="local")
        for cli in clis:  # flags and output formats drift between releases
            if cli.version is not None and not cli.tested:
                self.emit("warning", message=f"{cli.describe()}; it may not behave as the "
                          f"{cli.preset} preset expects")
        self.integrator.start_patch_series()
        self.integration.watch_repo()

    def _waves(self) -> int | None:
        """How many waves the plan's units take at ``max_active`` (None where a scope
        cannot be read: the run says it then, unit by unit)."""
        try:
            return wave.count(list(self.options.plan.raw.get("units") or []),
                              self.options.max_active)
        except (WtmeshError, ValueError, KeyError, TypeError):
            return None

    def _preset_clis(self) -> list[versions.Installed]:
        """The CLI of each preset the plan uses, as found on PATH."""
        return versions.installed_all(
            lane.preset for unit in self.order for lane in (unit.coder, unit.fixer)
            if lane is not None and lane.preset is not None)

    def resume(self, recovery: Recovery) -> None:
        """Continue an interrupted run: stop what it left running, undo a half-done move of
        the user's worktree, then take each unit's state from git and the ledger."""
        # A missing program is refused before anything is touched, for the units whose
        # lanes are still to run.
        early = resume_steps(self.git, recovery, (u.id for u in self.order),
                             landed_in_git(self.git, recovery))
        preflight.check([u for u in self.order if early[u.id].kind in ("rerun", "start")])
        self.state.check_usable()
        if not self.run_lock.try_acquire():
            raise EnvironmentRefused(f"run {self.run_id} is still running; it cannot be "
                                     "resumed from a second process")
        self.ledger = Ledger(self.run_dir.ledger, self.run_id)
        # What the interrupted process spent still counts against the budget.
        earlier = ledger_mod.read(self.run_dir.ledger)
        self.spending.spent = usage_mod.spent_usd(usage_mod.lane_spends(earlier))
        self.base_passed = base_proof.passed_before(earlier)
        stopped = stop_leftover_processes(self.run_id)
        # The dead process's worktrees: its pool is gone, and they may hold half a lane.
        self.git.remove_worktrees_under(self.run_dir.worktrees)
        for leftover in self.run_dir.tmp.glob("index-*"):  # the dead process's indexes
            leftover.unlink(missing_ok=True)
        with self.integrator.locked():
            # Before the start check: a move of the user's worktree the kill cut short
            # looks like uncommitted changes until it is finished.
            self.integrator.resume_landing(stranded=recovery.stranded,
                                           left_behind=recovery.left_behind,
                                           bring_along=recovery.pending_bring_along)
            self.integrator.check_start()
        landed = landed_in_git(self.git, recovery)
        steps = resume_steps(self.git, recovery, (u.id for u in self.order), landed)
        self.emit("run_resumed", pid=os.getpid(), stopped_process_groups=stopped,
                  sandbox=self.options.sandbox.as_record(),
                  max_cost_usd=self.options.max_cost_usd, spent_usd=self.spending.spent,
                  steps={uid: {"action": step.kind, "says": step.says}
                         for uid, step in steps.items()})
        self.integrator.start_patch_series()
        if landed:  # first: a unit whose lanes had finished is checked against it
            self.head = list(landed.values())[-1]
        for unit in self.order:
            self._restore(self.units[unit.id], recovery, steps[unit.id], landed)
        if self.options.delivery_mode == "patch_first":
            names = self.integrator.rewrite_series(list(landed.items()))
            for unit_id, name in names.items():
                landing = self.units[unit_id].landing
                if landing is not None:
                    self.units[unit_id].landing = Landing(**{**landing.__dict__, "patch": name})
        self.integration.watch_repo()

    def _restore(self, progress: UnitProgress, recovery: Recovery, step: ResumeStep,
                 landed: dict[str, Sha]) -> None:
        uid = progress.unit.id
        progress.attempts = recovery.attempts.get(uid, 0)
        reruns = recovery.reruns.get(uid, [])
        progress.reruns = len(reruns)
        if reruns:  # told again what its change met
            progress.conflict = Path(reruns[-1]["conflict"])
        record = recovery.finished.get(uid)
        if record is not None:
            progress.attempts = record.get("attempts", progress.attempts)
            progress.earlier_s = record.get("duration_s", 0.0)
            progress.files = record.get("files", [])
        if step.kind == "landed":
            commit = landed[uid]
            progress.landing = Landing(uid, "integrated", None, "", commit, None, None, 0.0)
            if record is None:  # landed, but the crash came before the ledger said so
                parent = self.git.resolve_commit(f"{commit}^") or self.options.base
                progress.files = [quote_path(p) for c in self.git.changes(parent, commit)
                                  for p in c.paths]
                self._finish(progress, "integrated", None, "landed before the interruption")
            else:
                progress.state = "integrated"
        elif step.kind == "finished":
            assert record is not None
            progress.state = record["status"]
            progress.failure_code, progress.notes = record["failure_code"], record["notes"]
        elif step.kind == "lanes_ended":
            lanes = recovery.lanes_done[uid]
            self._finish(progress, lanes["status"], lanes["failure_code"], lanes["notes"])
        elif step.kind == "integrate":
            assert step.result is not None
            work = integrating.work_from_result(self.git, self.run_dir, progress.unit, step.result,
                                                 progress.attempts,
                                                 self._chosen_trailers(progress.unit))
            self._lanes_done(progress, work)
        # "rerun" and "start": pending; it runs (again) with the next attempt number.

    def _chosen_trailers(self, unit: Unit) -> tuple[str, ...]:
        """A consensus unit's result is the candidate its ``chosen`` event names (written
        before the ref): the trailers its commit carries."""
        if unit.consensus is None:
            return ()
        chosen = [r for r in ledger_mod.read(self.run_dir.ledger)
                  if r["event"] == "chosen" and r.get("unit") == unit.id]
        return tuple(chosen[-1].get("trailers", ())) if chosen else ()

    def execute(self) -> dict[str, Any]:
        try:
            self._loop()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            try:
                if not self.options.keep_worktrees:
                    self.pool.remove_all(also=[self.integrator.worktree.path])
                    remove_if_empty(self.run_dir.worktrees, self.run_dir.tmp,
                                    self.run_dir.worktrees.parent)
            finally:
                self.lane_git_runner.close()
        self.integration.undo_unattributed(self.emit)
        if self.interrupted:
            return self._interrupted_summary()
        return self._finish_run()

    def _interrupted_summary(self) -> dict[str, Any]:
        in_flight = [p.unit.id for p in self.units.values() if p.state == "running"]
        self.emit("run_interrupted", units=in_flight)
        summary = self._summary(EXIT_INTERRUPTED)
        for unit in summary["units"]:
            if unit["id"] in in_flight:
                unit["status"], unit["failure_code"] = "failed", "interrupted"
        summary["counts"] = count_states(u["status"] for u in summary["units"])
        self._write_report(summary)
        return summary

    def _job(self, progress: UnitProgress) -> UnitJob:
        unit = progress.unit
        return UnitJob(
            run_id=self.run_id, unit=unit,
            start=test_first.start_of(unit, self.groups, self._staged(), self.head),
            first_attempt=progress.attempts + 1,
            repo=self.options.repo.toplevel or self.git.common_dir,
            plan_dir=self.options.plan.plan_dir, unit_dir=self.run_dir.unit_dir(unit.id),
            setup=self.options.plan.setup, ref_prefix=unit_ref_prefix(self.run_id, unit.id),
            conflict=progress.conflict)

    def _staged(self) -> dict[str, Sha]:
        return {uid: p.staged for uid, p in self.units.items() if p.staged is not None}

    def _run_unit(self, job: UnitJob) -> UnitWork:
        """A failure inside wtmesh while running one unit ends that unit, not the run."""
        try:
            if job.unit.consensus is not None:
                return self._consensus_unit(job).run()
            # The unit's slot is given back by the scheduler once it has seen how the
            # unit's lanes ended (``_lanes_done``): a lane waiting for a slot (a consensus
            # unit's) must not take it before a rejection has narrowed the limit.
            return self.executor.run(job, self._report_from_lane, self.spending.refusal)
        except Exception as exc:  # noqa: BLE001 - recorded with its traceback
            log = job.unit_dir / "error.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc(), "utf-8")
            return UnitWork(job.unit.id, "failed", "tooling_unavailable",
                            f"wtmesh could not run the unit: {exc} (see {log})", job.start,
                            None, None, None, job.first_attempt, (), 0.0)

    def _consensus_unit(self, job: UnitJob) -> ConsensusUnit:
        assert job.unit.consensus is not None
        earlier = [r for r in ledger_mod.read(self.run_dir.ledger)
                   if r.get("unit") == job.unit.id]
        return ConsensusUnit(
            job=job, spec=job.unit.consensus, git=self.executor.git, executor=self.executor,
            slots=self.slots, prove=self._prove_candidate,
            head=lambda: self.git.read_ref(self.integrator.landing_ref) or self.head,
            report=self._report_from_lane, gate=self.spending.refusal, earlier=earlier)

    def _prove_candidate(self, unit: Unit, work: UnitWork, name: str) -> CandidateProof:
        """On the integration thread, between landings: one proof at a time."""
        assert self.integration_pool is not None
        try:
            return self.integration_pool.submit(self.integrator.prove_candidate, unit, work,
                                                name).result()
        except CancelledError:
            raise Stopped from None

    def _slot_freed(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            try:
                wake.set_result(None)
            except InvalidStateError:  # another lane's release was first
                pass

    def _report_from_lane(self, event: str, **fields: Any) -> None:
        if event == "lane_started":
            progress = self.units[fields["unit"]]
            progress.attempts = max(progress.attempts, fields["attempt"])
            self._set(progress, "running", fields["lane"],
                      **{k: fields[k] for k in ("candidate", "critic") if k in fields})
        self.emit(event, **fields)
        if event == "lane_finished":
            self._count_spending(fields)

    def _count_spending(self, lane: dict[str, Any]) -> None:
        """A finished attempt's cost counts against ``--max-cost-usd`` once it is in the
        ledger (where a resumed run reads it back); a usage that was not taken is said."""
        said = f"{lane['unit']}: {lane['lane']} attempt {lane['attempt']}"
        if lane.get("usage_ignored"):
            self.emit("warning", unit=lane["unit"],
                      message=f"{said} reported a usage that was ignored: "
                              f"{lane['usage_ignored']}")
        cost = (lane.get("usage") or {}).get("cost_usd")
        if cost is None and self.spending.max_usd is not None and not self.said_uncounted:
            self.said_uncounted = True  # once: the budget cannot see such lanes at all
            self.emit("warning", unit=lane["unit"],
                      message=f"{said} did not report its cost: --max-cost-usd counts only "
                              "the costs lanes report")
        if self.spending.add(cost):
            self.emit("budget_exhausted", spent_usd=self.spending.spent,
                      max_cost_usd=self.spending.max_usd, unit=lane["unit"],
                      lane=lane["lane"], attempt=lane["attempt"])

    def _states(self) -> dict[str, str]:
        """Each unit's state as readiness reads it: a test-first unit proven red is
        ``red`` (its implementation units may start from it)."""
        return {uid: test_first.RED if p.phase == test_first.RED else p.state
                for uid, p in self.units.items()}

    def _loop(self) -> None:
        self._skip_orphans()
        self._skip_over_budget()
        if all(p.state in FINAL_STATES for p in self.units.values()):
            return  # a resumed run with nothing left to do: no worktree to make
        lanes_pool = ThreadPoolExecutor(max_workers=self.options.max_active,
                                        thread_name_prefix="lane")
        # A consensus unit's own thread holds no slot: its lanes take theirs.
        consensus_pool = ThreadPoolExecutor(
            max_workers=max(1, sum(1 for u in self.order if u.consensus is not None)),
            thread_name_prefix="consensus")
        integration_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="integrator")
        self.integration_pool = integration_pool
        running: dict[Future[UnitWork], UnitProgress] = {}
        integrating: tuple[Future[list[Landing]], list[UnitProgress]] | None = None
        red_checks: dict[Future[RedProof], UnitProgress] = {}  # test-first units' proofs
        # The one integration thread makes its worktree from the start, beside the first
        # unit's, and proves the base there: no landing can begin before both, and with
        # quick lanes the first unit is ready to land about as soon as its own worktree
        # is.
        integration_pool.submit(self.integrator.warm_up, self.head)
        base: Future[str | None] | None = integration_pool.submit(self._prove_base)
        try:
            while True:
                if base is not None and base.done():
                    self.base_blocked, base = base.result(), None
                    if self.base_blocked is not None:
                        self._block(list(running), self.base_blocked)
                        return
                self._skip_orphans()
                self._skip_over_budget()
                self._settle_groups()
                states = self._states()
                self._wake = Future()
                for unit in self.order:
                    if self.slots.in_use >= self.active_limit:
                        break
                    progress = self.units[unit.id]
                    if not self.readiness.ready(unit, states):
                        continue
                    if unit.consensus is not None:
                        pool = consensus_pool
                    elif self.slots.try_take():
                        pool = lanes_pool
                    else:
                        break
                    progress.started = time.monotonic()
                    self._set(progress, "running", "starting")
                    states[unit.id] = "running"
                    running[pool.submit(self._run_unit, self._job(progress))] = progress
                for progress in self.units.values():
                    if progress.phase == test_first.RED_CHECK and \
                            progress not in red_checks.values():
                        assert progress.work is not None
                        red_checks[integration_pool.submit(
                            self.integrator.prove_red, progress.unit, progress.work)] = progress
                # Until the integration worktree is made and the base proven, the
                # integrator could not start on any unit: units that come meanwhile
                # join the first batch.
                batch = self._next_batch() if integrating is None and base is None else []
                hold_s = self._gather_s(batch) if batch else None  # a batch gathering
                if batch and hold_s is None:
                    integrate = (self.integrator.integrate_group if batch[0].unit.test_first
                                 else self.integrator.integrate)
                    integrating = (integration_pool.submit(integrate, self._hand_over(batch)),
                                   batch)
                if all(p.state in FINAL_STATES for p in self.units.values()):
                    return
                waiting: list[Future[Any]] = [*running, *red_checks, self._wake]
                if base is not None:  # proven: units may land, or a red base stops the run
                    waiting.append(base)
                if integrating is not None:
                    waiting.append(integrating[0])
                if not waiting:  # pragma: no cover - readiness guarantees progress
                    raise AssertionError("scheduler stalled: no unit can start")
                done, _ = wait(waiting, timeout=hold_s, return_when=FIRST_COMPLETED)
                for future in done:
                    if integrating is not None and future is integrating[0]:
                        landings = {landing.unit_id: landing for landing in future.result()}
                        before = self.head
                        for progress in integrating[1]:
                            if progress.unit.id in landings:
                                self._landed(progress, landings[progress.unit.id])
                            else:  # not reached this time: handed again next time
                                self._set(progress, "running", "waiting")
                        integrating = None
                        self._rerun_conflicted(before)
                    elif future in red_checks:
                        self._proven_red(red_checks.pop(future), future.result())
                    elif future in running:
                        progress = running.pop(future)
                        self._lanes_done(progress, future.result())
                        if progress.unit.consensus is None:
                            self.slots.give()  # its lanes' slot (a consensus unit has none)
        except BaseException:
            # Stop lanes and proofs before waiting for their threads: an interrupt must
            # not sit through a 30-minute lane.
            proc.RUNNING_GROUPS.stop_all()
            raise
        finally:
            # Consensus units wait on proofs: the integration thread outlives them.
            lanes_pool.shutdown(wait=True, cancel_futures=True)
            consensus_pool.shutdown(wait=True, cancel_futures=True)
            integration_pool.shutdown(wait=True, cancel_futures=True)

    def _proven_red(self, progress: UnitProgress, red: RedProof) -> None:
        if red.commit is None:
            self._finish(progress, "failed", red.failure_code, red.notes)
            return
        progress.staged = red.commit
        self.emit("test_first_red", unit=progress.unit.id, commit=red.commit, head=red.head,
                  notes=red.notes)
        self._set(progress, "running", test_first.RED)

    def _settle_groups(self) -> None:
        """A test-first unit proven red whose implementation units all ended without
        reaching the landing lands nothing: its tests alone would leave the target red."""
        for unit in self.order:
            progress = self.units[unit.id]
            if progress.phase != test_first.RED:
                continue
            members = [self.units[u.id] for u in implementation_units(self.order, unit.id)]
            if any(m.state not in FINAL_STATES for m in members):
                continue
            said = "; ".join(f"{m.unit.id} ended {m.state}"
                             + (f" ({m.failure_code})" if m.failure_code else "")
                             for m in members)
            self._finish(progress, "failed", "proof_failed",
                         "its proof never passed: "
                         + (f"no implementation unit reached it ({said})" if members
                            else "no unit depends on it to make it pass"))

    def _prove_base(self) -> str | None:
        """On the integration thread: why the base fails its own proof, or None."""
        onto = self.git.read_ref(self.integrator.landing_ref) or self.options.base
        return base_proof.prove(self.integrator.prover, self.order, onto, self.emit,
                                self.base_passed)

    def _block(self, running: list[Future[UnitWork]], why: str) -> None:
        """The base fails its own proof: nothing can land. Every lane is stopped, and
        once their threads are done (a lane's own report would say it is running again)
        every unit not finished ends ``delivery_blocked``."""
        proc.RUNNING_GROUPS.stop_all()
        wait(running)
        for progress in self.units.values():
            if progress.state not in FINAL_STATES:
                self._finish(progress, "failed", "delivery_blocked", why)

    def _skip_orphans(self) -> None:
        """Dependants of a unit that did not integrate are skipped, transitively."""
        changed = True
        while changed:
            changed = False
            for unit in self.order:
                progress = self.units[unit.id]
                if progress.state != "pending":
                    continue
                dep = self.readiness.failed_dependency(unit, self._states())
                if dep is not None:
                    self._finish(progress, "skipped", "dependency_failed",
                                 f"depends on {dep}, which ended {self.units[dep].state}")
                    changed = True

    def _skip_over_budget(self) -> None:
        """Once the budget is spent no lane starts again in this run: every unit still
        pending ends now. One whose lanes never started is ``skipped``; one cut off
        mid-lane by an interruption (it had attempts) ``failed``."""
        why = self.spending.refusal()
        if why is None:
            return
        for unit in self.order:
            progress = self.units[unit.id]
            if progress.state != "pending":
                continue
            if progress.attempts:
                self._finish(progress, "failed", "budget_exhausted",
                             f"cut off during attempt {progress.attempts}, not run again: {why}")
            else:
                self._finish(progress, "skipped", "budget_exhausted", f"not started: {why}")

    def _next_batch(self) -> list[UnitProgress]:
        """Strict integration order: from the first unit not yet finished, once its lanes
        are done, the units after it whose lanes are done too. One at a time
        (``--batch 1``) each is proven on its own, and the integrator takes what it can
        of them; a batch is capped by its size and shares one proof, so it holds one
        proof command."""
        one_at_a_time = self.options.batch == 1
        limit = self.options.batch if self.options.batch > 1 else len(self.order)
        batch: list[UnitProgress] = []
        for unit in self.order:
            progress = self.units[unit.id]
            if progress.state in FINAL_STATES:
                continue
            if progress.phase == test_first.RED and not batch:
                return self._group_ready(progress)
            if progress.phase != "waiting" or len(batch) == limit:
                break
            if batch and not one_at_a_time and (unit.proof_command, unit.proof_timeout_s) != (
                    batch[0].unit.proof_command, batch[0].unit.proof_timeout_s):
                break
            batch.append(progress)
        return batch

    def _group_ready(self, red: UnitProgress) -> list[UnitProgress]:
        """A test-first unit and its implementation units whose lanes are done, once
        none is still running; empty until then."""
        members = [self.units[u.id] for u in implementation_units(self.order, red.unit.id)]
        if any(m.state not in FINAL_STATES and m.phase != "waiting" for m in members):
            return []
        waiting = [m for m in members if m.state not in FINAL_STATES]
        return [red, *waiting] if waiting else []

    def _hand_over(self, batch: list[UnitProgress]) -> list[tuple[Unit, UnitWork]]:
        items = []
        for progress in batch:
            assert progress.work is not None
            self._set(progress, "running", "integrating")
            items.append((progress.unit, progress.work))
        return test_first.with_trailers(items) if batch[0].unit.test_first else items

    def _gather_s(self, batch: list[UnitProgress]) -> float | None:
        """In batch mode, how much longer the ready units wait for the next unit in order,
        whose lanes are running, to share their proof; None: integrate them now.

        A batch is held only while it is not full and the next unit is already in its
        lanes (one that has not started may be waiting for this very batch to land), and
        only while its first unit would be held back no longer than the landing window,
        counting the last proof's time: a proof that takes longer than the window lets
        units gather while it runs, and needs no holding."""
        if self.options.batch == 1 or len(batch) == self.options.batch \
                or batch[0].unit.test_first:  # a group lands alone: nothing to gather
            return None
        taken = {p.unit.id for p in batch}
        after = next((p for p in self.units.values()
                      if p.state not in FINAL_STATES and p.unit.id not in taken), None)
        # Not one ready and left out of this batch (it has another proof command).
        in_lanes = after is not None and after.state == "running" and after.phase != "waiting"
        since = batch[0].waiting_since
        if not in_lanes or since is None:
            return None
        held_s = time.monotonic() - since
        left_s = self.integrator.landing_window_s - held_s - self.integrator.last_proof_s
        return left_s if left_s > 0 else None

    def _lanes_done(self, progress: UnitProgress, work: UnitWork) -> None:
        progress.work = work
        progress.attempts = max(progress.attempts, work.attempts)
        progress.files = [quote_path(p) for p in work.diff.files] if work.diff else []
        self.emit("lanes_done", unit=work.unit_id, status=work.status,
                  failure_code=work.failure_code, notes=work.notes, result=work.result,
                  diff_sha256=work.diff.sha256 if work.diff else None,
                  stats=work.diff.stats() if work.diff else None)
        rewrites = self._rewrites_the_tests(progress, work)
        if rewrites:
            self._finish(progress, "failed", "scope_violation",
                         f"changes what its test-first unit {self.groups[progress.unit.id]} "
                         f"wrote, which its proof must be held to: {', '.join(rewrites)}")
        elif work.status == "accepted" and progress.unit.test_first:
            self._set(progress, "running", test_first.RED_CHECK)  # proven red next
        elif work.status == "accepted" and self._no_longer_applies(progress, work.start):
            self._rerun(progress)  # units landed meanwhile, and its change met theirs
        elif work.status == "accepted":
            progress.waiting_since = time.monotonic()
            self._set(progress, "running", "waiting")
        else:
            self._finish(progress, work.status, work.failure_code, work.notes)

    def _rewrites_the_tests(self, progress: UnitProgress, work: UnitWork) -> list[str]:
        """The paths of its test-first unit's change an implementation unit's change
        touches too: passing tests it rewrote proves nothing (SPEC 13)."""
        owner = self.groups.get(progress.unit.id)
        if work.status != "accepted" or work.diff is None or owner in (None, progress.unit.id):
            return []
        pinned = self.units[owner].work
        if pinned is None or pinned.diff is None:
            return []
        return sorted(set(work.diff.files) & set(pinned.diff.files))

    def _landed(self, progress: UnitProgress, landing: Landing) -> None:
        if self._reruns_after(progress, landing):
            self._rerun(progress)
            return
        progress.landing = landing
        if landing.status == "integrated":
            assert landing.commit is not None
            self.head = landing.commit
        # An integrated unit keeps what its lanes said (a fixer's notes); a failed landing
        # says why it failed.
        work_notes = progress.work.notes if progress.work is not None else ""
        self._finish(progress, landing.status, landing.failure_code,
                     landing.notes or work_notes)

    def _reruns_after(self, progress: UnitProgress, landing: Landing) -> bool:
        """With optimistic overlap a conflict is new work (SPEC 14): the unit runs again
        from the head, up to ``rebase_retries`` times. A consensus unit's candidates and
        votes are of the old code: it ends ``integration_conflict`` as with serialize."""
        return landing.failure_code == "integration_conflict" and self._may_rerun(progress)

    def _rerun_conflicted(self, before: Sha) -> None:
        """Once units have landed, a waiting unit whose change met theirs and no longer
        applies is rerun at once, not when its turn to land comes: the work it must redo
        is known now."""
        if self.head == before:
            return
        for unit in self.order:
            progress = self.units[unit.id]
            if progress.phase == "waiting" and self._no_longer_applies(progress, before):
                self._rerun(progress)

    def _no_longer_applies(self, progress: UnitProgress, since: Sha) -> bool:
        """With optimistic overlap: whether the unit's change, whose lanes are done, fails
        to apply onto the head even three-way. Only a change touching a file changed
        since ``since`` (a head it applied onto) is tried."""
        work = progress.work
        if work is None or work.diff is None or work.diff_path is None \
                or since == self.head or not self._may_rerun(progress):
            return False
        touched = {p for c in self.git.changes(since, self.head) for p in c.paths}
        if touched.isdisjoint(work.diff.files):
            return False
        # As the integrator would try it (on objects: its worktree is its thread's).
        return apply_on_objects(self.git, self.run_dir, self.head, work.diff_path,
                                user="scheduler") is None

    def _may_rerun(self, progress: UnitProgress) -> bool:
        """A test-first group's members apply onto the red commit, not the head: their
        conflicts are the group's landing's to find."""
        plan = self.options.plan
        return (plan.overlap == "optimistic" and progress.unit.consensus is None
                and progress.unit.id not in self.groups
                and progress.reruns < plan.rebase_retries
                and progress.work is not None and progress.work.diff_path is not None
                and not self.spending.refusal())

    def _rerun(self, progress: UnitProgress) -> None:
        """The unit back to pending, told what its change met. The event comes first: a
        resumed run that reads it runs the unit again rather than integrate the old
        result (its ref is still there until the new lanes write theirs)."""
        work = progress.work
        assert work is not None and work.diff_path is not None
        told = conflict.write(self.git, work.diff_path.parent, unit_id=progress.unit.id,
                              rerun=progress.reruns + 1, of=self.options.plan.rebase_retries,
                              attempt=progress.attempts, start=work.start, head=self.head,
                              diff_path=work.diff_path,
                              diff_files=list(work.diff.files) if work.diff else [])
        progress.reruns += 1
        progress.conflict = told.path
        progress.work, progress.waiting_since = None, None
        self.emit("rerun", unit=progress.unit.id, rerun=progress.reruns,
                  of=self.options.plan.rebase_retries, attempt=progress.attempts + 1,
                  conflict=str(told.path), paths=told.paths, old_result=work.result,
                  met=told.met)
        faults.point("rerun")
        self._set(progress, "pending")

    def _finish_run(self) -> dict[str, Any]:
        exit_code = EXIT_ENVIRONMENT if self.base_blocked is not None else \
            self.integration.exit_code(p.state for p in self.units.values())
        summary = self._summary(exit_code)
        # The summary file first: once run_finished is in the ledger, resume points here.
        write_atomic(self.run_dir.path / "summary.json",
                     json.dumps(printable_data(summary), indent=2).encode() + b"\n")
        self.emit("run_finished", counts=summary["counts"], exit_code=exit_code,
                  head=summary["head"], stranded=self.integrator.stranded)
        self._write_report(summary)
        return summary

    def _write_report(self, summary: dict[str, Any]) -> None:
        write_report(summary, self.run_dir, self.options.report, self.emit)

    def _summary(self, exit_code: int) -> dict[str, Any]:
        counts = count_states(p.state for p in self.units.values())
        head = self.git.read_ref(self.integrator.landing_ref)
        # From the ledger: it holds the lanes of an interrupted process too.
        records = ledger_mod.read(self.run_dir.ledger)
        spends = usage_mod.lane_spends(records)
        summary = {
            "run_id": self.run_id,
            "delivery_mode": self.options.delivery_mode,
            "target": self.options.target,
            "base": self.options.base,
            "head": head,
            "patch_dir": str(self.patch_dir) if self.patch_dir else None,
            "units": [self.units[u.id].summary(spends, records, self.run_dir)
                      for u in self.options.plan.units],
            "counts": counts,
            "usage": usage_mod.run_usage(spends),
            "max_cost_usd": self.options.max_cost_usd,
            "exit_code": exit_code,
        }
        summary.update(self.integration.landing_fields(head))
        return summary

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        self.run_lock.release()


def count_states(states: Any) -> dict[str, int]:
    counts = {state: 0 for state in UNIT_STATES}
    for state in states:
        counts[state] += 1
    return counts


def remove_if_empty(*dirs: Path) -> None:
    for directory in dirs:
        try:
            directory.rmdir()
        except OSError:  # not empty (kept for a reason) or already gone
            pass
