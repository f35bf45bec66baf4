"""``wtmesh pick RUN_ID UNIT CANDIDATE`` (SPEC 12): integrate the candidate a person chose
for a consensus unit that ended ``awaiting_choice`` (``select: manual``).

The candidate's work comes from its refs (``.../candidates/<name>/result``, whose parent
is where it started) and integrates as the unit through the run's own integrator, built
as the run built it (its sandbox, its repository guard, its delivery mode): under the
integrator lock, applied onto the landing ref's head as it is now and proven there
afresh, then landed — commit_first by a compare-and-swap of the target with the user's
worktree brought along, patch_first by the run's scratch ref and one more patch in its
series, checked to reproduce. Its commit carries ``Wtmesh-Variant`` and, when the unit
had critics, ``Wtmesh-Votes``.

The ledger gets ``picked`` before anything lands, then the integrator's events, then
``unit_finished`` and ``run_finished`` again: the unit's and the run's outcome now
(readers take the last of each). summary.json, report.md and the unit's comparison.md
are written again. A pick that does not land (its proof fails on today's head, it
conflicts) is ``pick_failed`` and leaves the unit awaiting a choice, so that another
candidate, or the same one once the head is mended, can be picked. A pick killed after
the landing ref moved is finished by the next pick of the unit: its commit is found by
its trailers, as ``--resume`` finds landings, and is not landed twice.

Refused with nothing changed: a run, unit or candidate that is not there, a run not
finished, a unit not awaiting a choice, a candidate that did not pass (exit 2); a dirty
target, a lock timeout, the candidate's refs gone (exit 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import integrating, proc
from . import ledger as ledger_mod
from .consensus import comparison
from .consensus.summary import candidates, pick_command
from .errors import EXIT_ENVIRONMENT, EXIT_UNITS_FAILED, EnvironmentRefused, UsageError
from .git import Git, RepoInfo, Sha
from .integrator import Landing
from .ledger import Ledger
from .plan import Unit
from .report import write_report
from .resume import RunLock, events, is_live, landed_in_git, recover, run_finished, run_started
from .run_options import resumed_options
from .scheduler import Observer, count_states, remove_if_empty
from .state import RunDir, StateDir, candidate_ref_prefix, write_atomic
from .text import printable_data, quote_path
from .unit_runner import UnitWork

LANDED = ("integrated", "no_diff")
# How long a pick waits for another process (a pick of the same run, gc) to let go of the
# run: they hold it for a landing at most.
RUN_LOCK_WAIT_S = 30.0


@dataclass
class Outcome:
    exit_code: int
    said: list[str] = field(default_factory=list)  # for the user, one line each


def pick(git: Git, info: RepoInfo, run_id: str, unit_id: str, name: str, *,
         lock_timeout_s: float, observer: Observer) -> Outcome:
    state = StateDir.for_common_dir(git.common_dir)
    state.check_usable()
    run_dir = state.existing_run(run_id)
    _check_finished(run_dir, events(run_dir))
    run_lock = RunLock(run_dir)
    if not run_lock.try_acquire(timeout=RUN_LOCK_WAIT_S):
        raise EnvironmentRefused(f"run {run_id} is in use by another wtmesh process (a pick "
                                 "of it, or wtmesh gc); nothing was changed")
    try:
        return _Pick(git, info, state, run_dir, unit_id, name, lock_timeout_s,
                     observer).run()
    finally:
        run_lock.release()


def _check_finished(run_dir: RunDir, records: list[dict[str, Any]]) -> None:
    if run_finished(records) is not None:
        return
    run_id = run_dir.run_id
    if is_live(run_dir):
        raise UsageError(f"run {run_id} is still running; pick once it has finished")
    plan = run_started(records)["plan"] if records else "PLAN"
    raise UsageError(f"run {run_id} did not finish; resume it first (wtmesh run {plan} "
                     f"--resume {run_id}), then pick")


class _Pick:
    def __init__(self, git: Git, info: RepoInfo, state: StateDir, run_dir: RunDir,
                 unit_id: str, name: str, lock_timeout_s: float, observer: Observer) -> None:
        self.git = git
        self.state = state
        self.run_dir = run_dir
        self.run_id = run_dir.run_id
        self.unit_id = unit_id
        self.name = name
        self.observer = observer
        self.ledger: Ledger | None = None  # opened once the integrator lock is held
        # Read again under the run's lock: another pick may have ended meanwhile.
        self.records = events(run_dir)
        _check_finished(run_dir, self.records)
        self.recovery = recover(run_dir)
        self.options = resumed_options(run_dir, info, self.recovery, keep_worktrees=False,
                                       lock_timeout_s=lock_timeout_s)
        self.unit = self._awaiting_unit()
        self.candidate = self._passing_candidate()
        self.summary = self._summary_file()

    # -- what may be picked --------------------------------------------------------------

    def _awaiting_unit(self) -> Unit:
        unit = next((u for u in self.options.plan.units if u.id == self.unit_id), None)
        if unit is None or self.unit_id not in self.recovery.started.get("units", []):
            raise UsageError(f"run {self.run_id} has no unit {self.unit_id!r}")
        ended = self.recovery.finished.get(self.unit_id)
        status = ended["status"] if ended else "not finished"
        if status != "awaiting_choice":
            raise UsageError(f"unit {self.unit_id} of run {self.run_id} is {status}, not "
                             "awaiting a choice; nothing to pick")
        return unit

    def _passing_candidate(self) -> dict[str, Any]:
        shown = candidates(self.records, self.unit_id)
        passed = [c["name"] for c in shown if c["status"] == "proven"]
        found = next((c for c in shown if c["name"] == self.name), None)
        if found is None:
            raise UsageError(f"unit {self.unit_id} of run {self.run_id} has no candidate "
                             f"{self.name!r}; its candidates that passed: {', '.join(passed)}")
        if found["status"] != "proven":
            why = found["failure_code"] or found["status"]
            raise UsageError(f"candidate {self.name} of unit {self.unit_id} did not pass "
                             f"({why}); pick one that did: {', '.join(passed)}")
        return found

    def _summary_file(self) -> dict[str, Any]:
        try:
            summary: dict[str, Any] = json.loads(
                (self.run_dir.path / "summary.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise EnvironmentRefused(f"run {self.run_id}'s summary.json cannot be read "
                                     f"({exc}); nothing was changed") from None
        return summary

    def _work(self) -> UnitWork:
        """The candidate's work from its result ref, as the run recorded it."""
        ref = f"{candidate_ref_prefix(self.run_id, self.unit_id, self.name)}/result"
        result = self.git.read_ref(ref)
        recorded = next((r.get("result") for r in reversed(self.records)
                         if r["event"] == "candidate_finished" and r.get("unit") == self.unit_id
                         and r.get("candidate") == self.name), None)
        if result is None:
            raise EnvironmentRefused(f"candidate {self.name}'s work is gone: {ref} was "
                                     "removed (wtmesh gc --unfinished); nothing was changed")
        if result != recorded:
            raise EnvironmentRefused(f"{ref} is at {result[:12]}, not at the "
                                     f"{str(recorded)[:12]} the run recorded; nothing was "
                                     "changed")
        work = integrating.work_from_result(
            self.git, self.run_dir, self.unit, result, self._attempts(), self._trailers(),
            notes=f"{self.name} picked by hand")
        if work.status != "accepted":
            raise EnvironmentRefused(f"candidate {self.name}'s work at {result[:12]} is "
                                     f"not what passed: {work.status}: {work.notes}")
        return work

    def _trailers(self) -> list[str]:
        trailers = [f"Wtmesh-Variant: {self.name}"]
        spec = self.unit.consensus
        if spec is not None and spec.critics:
            votes = self.candidate.get("votes") or {}
            trailers.append(f"Wtmesh-Votes: {votes.get('agree', 0)}/{len(spec.critics)}")
        return trailers

    def _attempts(self) -> int:
        ended = self.recovery.finished.get(self.unit_id) or {}
        return int(ended.get("attempts", 1))

    # -- the pick ------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """To the ledger once the lock is held: a pick refused before that (a lock
        timeout, a dirty target) leaves the run as it was."""
        if self.ledger is None:
            self.observer({"event": event, "run_id": self.run_id, **fields})
            return
        self.observer(self.ledger.append(event, **fields))

    def run(self) -> Outcome:
        integration = integrating.build(self.options, self.git, run_id=self.run_id,
                                        state=self.state, run_dir=self.run_dir,
                                        report=self.emit)
        integrator = integration.integrator
        integrator.lock_timeout_hint = "nothing was changed; pick again once it is free"
        if self.recovery.pending_bring_along is None:  # else it is finished under the lock
            integrator.check_start()  # refused at once, not after waiting for the lock
        try:
            with integrator.locked():
                self.ledger = Ledger(self.run_dir.ledger, self.run_id)
                integrator.resume_landing(stranded=self.recovery.stranded,
                                          left_behind=self.recovery.left_behind,
                                          bring_along=self.recovery.pending_bring_along)
                integrator.check_start()
                landed = landed_in_git(self.git, self.recovery)
                if self.unit_id in landed:
                    landing, files = self._landed_before(integration, landed)
                else:
                    landing, files = self._integrate(integration)
                return self._outcome(integration, landing, files)
        except BaseException:
            proc.RUNNING_GROUPS.stop_all()  # a proof still running, on Ctrl-C
            raise
        finally:
            self.git.remove_worktrees_under(self.run_dir.worktrees)
            remove_if_empty(self.run_dir.worktrees, self.run_dir.tmp,
                            self.run_dir.worktrees.parent)
            if self.ledger is not None:
                self.ledger.close()

    def _integrate(self, integration: integrating.Integration) -> tuple[Landing, list[str]]:
        work = self._work()
        integrator = integration.integrator
        integrator.start_patch_series()
        self.emit("picked", unit=self.unit_id, candidate=self.name, start=work.start,
                  result=work.result, trailers=list(work.trailers),
                  votes=self.candidate.get("votes"))
        integration.watch_repo()
        try:
            (landing,) = integrator.integrate([(self.unit, work)])
        finally:
            integration.undo_unattributed(self.emit)
        files = [quote_path(p) for p in work.diff.files] if work.diff else []
        return landing, files

    def _landed_before(self, integration: integrating.Integration,
                       landed: dict[str, Sha]) -> tuple[Landing, list[str]]:
        """A pick killed after its landing moved the ref: the commit is there, the
        ledger does not say so yet. It is recorded, not landed again."""
        commit = landed[self.unit_id]
        picked = [r for r in self.records if r["event"] == "picked"
                  and r.get("unit") == self.unit_id]
        if picked and picked[-1]["candidate"] != self.name:
            self.name = str(picked[-1]["candidate"])
        patch = None
        if self.options.delivery_mode == "patch_first":
            patch = integration.integrator.rewrite_series(list(landed.items()))[self.unit_id]
        parent = self.git.resolve_commit(f"{commit}^") or self.options.base
        files = [quote_path(p) for c in self.git.changes(parent, commit) for p in c.paths]
        return Landing(self.unit_id, "integrated", None,
                       "landed by a pick that was cut off before it said so", commit, patch,
                       None, 0.0), files

    # -- what it did ---------------------------------------------------------------------

    def _outcome(self, integration: integrating.Integration, landing: Landing,
                 files: list[str]) -> Outcome:
        if landing.status in LANDED:
            return self._landed(integration, landing, files)
        self.emit("pick_failed", unit=self.unit_id, candidate=self.name,
                  failure_code=landing.failure_code, notes=landing.notes)
        self._write_comparison()
        why = (f"{self.unit_id}: {self.name} was not integrated: {landing.failure_code}: "
               f"{landing.notes}")
        still = (f"{self.unit_id} still awaits a choice: "
                 f"{pick_command(self.run_id, self.unit_id)}")
        return Outcome(EXIT_UNITS_FAILED, [why, still])

    def _landed(self, integration: integrating.Integration, landing: Landing,
                files: list[str]) -> Outcome:
        ended = self.recovery.finished[self.unit_id]
        fields: dict[str, Any] = {
            "unit": self.unit_id, "status": landing.status, "failure_code": None,
            "notes": landing.notes or f"{self.name} picked by hand",
            "attempts": ended.get("attempts", 1), "duration_s": ended.get("duration_s", 0.0),
            "files": files, "picked": self.name,
            "stats": next((c["stats"] for c in candidates(self.records, self.unit_id)
                           if c["name"] == self.name), None)}
        if landing.status == "integrated":
            fields["commit"] = landing.commit
            if landing.patch:
                fields["patch"] = landing.patch
        self.emit("unit_finished", **fields)
        self._write_comparison()
        summary = self._rewritten_summary(integration, landing, files)
        write_atomic(self.run_dir.path / "summary.json",
                     json.dumps(printable_data(summary), indent=2).encode() + b"\n")
        self.emit("run_finished", counts=summary["counts"], exit_code=summary["exit_code"],
                  head=summary["head"], stranded=integration.integrator.stranded,
                  picked=self.unit_id)
        write_report(summary, self.run_dir, self.options.report, self.emit)
        return Outcome(EXIT_ENVIRONMENT if integration.not_followed else 0,
                       self._landed_lines(summary, landing))

    def _landed_lines(self, summary: dict[str, Any], landing: Landing) -> list[str]:
        from .output import landing_note  # rendering, only once there is something to say

        if landing.status == "no_diff":
            said = f"{self.unit_id}: {self.name} changes nothing on the head: {landing.notes}"
        elif landing.patch:
            said = (f"{self.unit_id}: {self.name} integrated as {landing.patch} in "
                    f"{summary['patch_dir']}")
        else:
            assert landing.commit is not None
            said = f"{self.unit_id}: {self.name} integrated as {landing.commit[:12]}"
        return [said, landing_note(summary)]

    def _write_comparison(self) -> None:
        comparison.write(self.run_dir, self.unit_id, self.unit.objective,
                         ledger_mod.read(self.run_dir.ledger), self.options.patch_dir)

    def _rewritten_summary(self, integration: integrating.Integration, landing: Landing,
                           files: list[str]) -> dict[str, Any]:
        summary = dict(self.summary)
        records = ledger_mod.read(self.run_dir.ledger)
        units = []
        for unit in summary["units"]:
            if unit["id"] == self.unit_id:
                unit = {key: value for key, value in unit.items() if key != "pick"}
                unit.update(status=landing.status, failure_code=None,
                            commit=landing.commit if landing.status == "integrated" else None,
                            patch=landing.patch, files=files,
                            **comparison.summary_fields(records, self.run_dir, self.unit_id,
                                                        landing.status))
            units.append(unit)
        head = self.git.read_ref(integration.integrator.landing_ref)
        summary.pop("stranded_ref", None)
        summary.pop("not_brought_along", None)
        summary.update(units=units, counts=count_states(u["status"] for u in units),
                       head=head, exit_code=integration.exit_code(u["status"] for u in units),
                       **integration.landing_fields(head))
        return summary
