"""Running a consensus unit (SPEC 12): its variants, their proofs, the critics' rounds,
the synthesizer, and the choice. What comes out is the unit's work, as one coder and
fixer would have given it: the chosen candidate (which then integrates in plan order like
any unit), or why there is none.

Every variant runs the unit's lanes (with its overrides) in a worktree of its own from
the unit's start, holding a lane slot while its lanes run; its diff is scope-checked and
proven on the integrated head by the integrator (one proof at a time, with the
landings). Critics read: each runs in a worktree at the unit's start, with a copy of
every candidate's diff in its own directory (``candidates.py``); one whose worktree ends
changed is ``invalid_output_schema`` and its verdict does not count.

Each step is written to the ledger when it ends (``candidate_finished``, ``critique``,
``vote``, ``chosen``), and a resumed run takes those back instead of running them again:
a candidate's work is in git under its own refs, a critique is in its event. Votes are a
function of the critiques, so they come out the same.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import diffs
from ..git import Git, Sha
from ..integrator import CandidateProof
from ..plan import SYNTHESIS, Consensus, LaneSpec, Unit
from ..slots import LaneSlots, Stopped
from ..state import candidate_ref_prefix, safe_name
from ..unit_runner import Gate, LocalExecutor, UnitJob, UnitWork
from . import candidates as candidates_file
from . import summary, vote
from .candidates import Shown
from .vote import Critique, InvalidCritique

Report = Callable[..., None]
Prove = Callable[[Unit, UnitWork, str], CandidateProof]
# A lane that ended so does not give a verdict: the critic failed to give one.
LANE_FAILURES = ("lane_failed", "timeout_retry_exhausted", "tooling_unavailable",
                 "invalid_output_schema", "interrupted", "budget_exhausted",
                 "safety_regression_risk")


@dataclass
class Candidate:
    """A variant's (or the synthesizer's) change and how it stands."""

    name: str
    order: int
    status: str  # proven | no_diff | rejected | failed
    failure_code: str | None
    notes: str
    work: UnitWork | None = None
    proof_status: str | None = None
    proof_s: float = 0.0
    onto: Sha | None = None
    patch: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "proven"

    @property
    def stats(self) -> dict[str, int]:
        diff = self.work.diff if self.work is not None else None
        return diff.stats() if diff is not None else {"files": 0, "added": 0, "removed": 0}

    def record(self) -> dict[str, Any]:
        work = self.work
        return {"candidate": self.name, "order": self.order, "status": self.status,
                "failure_code": self.failure_code, "notes": self.notes,
                "start": work.start if work else None, "result": work.result if work else None,
                "stats": self.stats, "attempts": work.attempts if work else 0,
                "proof_status": self.proof_status, "proof_s": round(self.proof_s, 3),
                "onto": self.onto, "patch": self.patch}

    def shown(self) -> Shown:
        assert self.work is not None and self.work.diff_path is not None
        return Shown(self.name, self.work.diff_path, self.stats, self.proof_status or "pass",
                     self.proof_s, self.notes)

    def as_vote(self) -> vote.Candidate:
        stats = self.stats
        return vote.Candidate(self.name, self.order, stats["added"] + stats["removed"],
                              self.passed)


class ConsensusUnit:
    def __init__(self, *, job: UnitJob, spec: Consensus, git: Git, executor: LocalExecutor,
                 slots: LaneSlots, prove: Prove, head: Callable[[], Sha], report: Report,
                 gate: Gate | None, earlier: Sequence[Mapping[str, Any]]) -> None:
        self.job = job
        self.unit = job.unit
        self.spec = spec
        self.git = git
        self.executor = executor
        self.slots = slots
        self.prove = prove
        self.head = head
        self.report = report
        self.gate = gate
        # This unit's consensus events from before a resume, and the last attempt of
        # each lane that ran (a rerun goes on counting).
        self.earlier_candidates = {r["candidate"]: r for r in earlier
                                   if r["event"] == "candidate_finished"}
        self.earlier_critiques = {(r["round"], r["critic"]): r for r in earlier
                                  if r["event"] == "critique"}
        self.attempts: dict[str, int] = {}
        for r in earlier:
            if r["event"] == "lane_started":
                who = str(r.get("candidate") or r.get("critic") or "")
                self.attempts[who] = max(self.attempts.get(who, 0), int(r["attempt"]))
        self.started = time.monotonic()

    # -- the whole -------------------------------------------------------------------------

    def run(self) -> UnitWork:
        spec = self.spec
        try:
            found = self._in_parallel(self._variant, list(enumerate(spec.variants, 1)))
        except Stopped:
            return self._ended("failed", "interrupted", "the run was interrupted")
        if not any(c.passed for c in found):
            return self._none_passed(found)
        if not spec.critics:
            return self._select(found, [])
        previous: list[Critique] = []
        rounds = spec.rounds if spec.select == "vote" else 1
        for round_ in range(1, rounds + 1):
            try:
                critiques = self._critique(round_, found, previous)
            except Stopped:
                return self._ended("failed", "interrupted", "the run was interrupted")
            tally = vote.tally([c.as_vote() for c in found], critiques, spec.quorum)
            self.report("vote", unit=self.unit.id, round=round_, critics=len(spec.critics),
                        counted=len(critiques), quorum=spec.quorum, **tally.as_record())
            if spec.select == "vote" and tally.chosen is not None:
                return self._choose(self._named(found, tally.chosen), tally, round_)
            if round_ == 1 and spec.synthesizer is not None and round_ < rounds:
                try:
                    synthesis = self._synthesize(found, critiques)
                except Stopped:
                    return self._ended("failed", "interrupted", "the run was interrupted")
                if synthesis is not None:
                    found.append(synthesis)
            previous = critiques
        if spec.select != "vote":
            return self._select(found, previous, tally)
        standing = ", ".join(f"{s.name} {s.agree}/{len(spec.critics)}"
                             for s in tally.standings)
        return self._ended("no_consensus", "no_consensus",
                           f"no candidate reached the quorum of {spec.quorum} in "
                           f"{rounds} round{'s' if rounds != 1 else ''} ({standing}); every "
                           "candidate is kept under refs/wtmesh/")

    # -- variants and the synthesis ----------------------------------------------------------

    def _variant(self, item: tuple[int, Any]) -> Candidate:
        order, variant = item
        env = {**variant.env, "WTMESH_VARIANT": variant.name}
        unit = dataclasses.replace(
            self.unit, objective=self.unit.objective + variant.objective_suffix,
            coder=_with_env(variant.coder, env),
            fixer=_with_env(variant.fixer, env) if variant.fixer else None, consensus=None)
        return self._candidate(variant.name, order, unit, self.job.start)

    def _synthesize(self, found: list[Candidate], critiques: list[Critique]
                    ) -> Candidate | None:
        """After the first round: the synthesizer's change, from the integrated head, as
        one more candidate; None when it changed nothing (the candidates stand)."""
        assert self.spec.synthesizer is not None
        head = self.head()
        earlier = self.earlier_candidates.get(SYNTHESIS)
        if earlier is not None and earlier.get("start"):
            head = Sha(earlier["start"])  # where it ran before the interruption
        unit_dir = self._candidate_dir(SYNTHESIS)
        file = candidates_file.write(
            unit_dir, unit_id=self.unit.id, objective=self.unit.objective, round_=1,
            rounds=self.spec.rounds, quorum=self.spec.quorum,
            candidates=[c.shown() for c in found if c.passed], previous=critiques)
        lane = _with_env(self.spec.synthesizer, {"WTMESH_CANDIDATES_JSON": str(file),
                                                 "WTMESH_ROUND": "1"})
        unit = dataclasses.replace(self.unit, coder=lane, fixer=None, consensus=None)
        synthesis = self._candidate(SYNTHESIS, len(self.spec.variants) + 1, unit, head)
        return synthesis if synthesis.status != "no_diff" else None

    def _candidate(self, name: str, order: int, unit: Unit, start: Sha) -> Candidate:
        """One candidate's lanes, then its proof; or what a run before the interruption
        recorded of it."""
        earlier = self.earlier_candidates.get(name)
        if earlier is not None:
            kept = self._taken_back(name, order, unit, earlier)
            if kept is not None:
                return kept
        job = dataclasses.replace(
            self.job, unit=unit, start=start, first_attempt=self.attempts.get(name, 0) + 1,
            unit_dir=self._candidate_dir(name),
            ref_prefix=candidate_ref_prefix(self.job.run_id, self.unit.id, name))
        with self.slots.held():
            work = self.executor.run(job, self._reporting(candidate=name), self.gate)
        if work.status != "accepted":
            candidate = Candidate(name, order, work.status, work.failure_code, work.notes, work)
        else:
            candidate = self._proven(Candidate(name, order, "proven", None, work.notes, work))
        # A lane or proof stopped by an interruption ended "failed": not recorded, so that
        # the resumed run runs it again.
        self.slots.raise_if_stopped()
        self.report("candidate_finished", unit=self.unit.id, **candidate.record())
        return candidate

    def _proven(self, candidate: Candidate) -> Candidate:
        assert candidate.work is not None
        proof = self.prove(self.unit, candidate.work, candidate.name)
        candidate.proof_s, candidate.onto, candidate.patch = proof.duration_s, proof.onto, \
            proof.patch
        if proof.status in ("pass", "skipped"):
            candidate.proof_status = proof.status
        else:
            candidate.status, candidate.failure_code = proof.status, proof.failure_code
            candidate.notes = proof.notes
            candidate.proof_status = "fail" if proof.failure_code == "proof_failed" else None
        return candidate

    def _taken_back(self, name: str, order: int, unit: Unit,
                    record: Mapping[str, Any]) -> Candidate | None:
        """A candidate finished before a resume: its work from its refs, its proof kept
        while the head is where it was proven (else proven again)."""
        status = record["status"]
        result, start = record.get("result"), record.get("start")
        work = None
        if result and start:
            unit_dir = self._candidate_dir(name)
            diff_path = unit_dir / "unit.diff"
            unit_diff = diffs.collect(self.git, Sha(start), Sha(result), unit.scope, diff_path)
            work = UnitWork(self.unit.id, "accepted", None, record.get("notes", ""),
                            Sha(start), Sha(result), unit_diff, diff_path,
                            int(record.get("attempts", 1)), (), 0.0)
        candidate = Candidate(name, order, status, record.get("failure_code"),
                              record.get("notes", ""), work, record.get("proof_status"),
                              float(record.get("proof_s", 0.0)), record.get("onto"),
                              record.get("patch"))
        if status != "proven":
            return candidate
        if work is None:
            return None  # its work is gone: run it again
        if record.get("onto") != self.head():
            candidate = self._proven(dataclasses.replace(candidate, status="proven"))
            self.slots.raise_if_stopped()
            self.report("candidate_finished", unit=self.unit.id, **candidate.record())
        return candidate

    def _candidate_dir(self, name: str) -> Path:
        return self.job.unit_dir / "candidates" / safe_name(name)

    # -- critics ---------------------------------------------------------------------------

    def _critique(self, round_: int, found: list[Candidate],
                  previous: list[Critique]) -> list[Critique]:
        shown = [c.shown() for c in found if c.passed]
        names = [c.name for c in found if c.passed]

        def one(item: tuple[str, LaneSpec]) -> Critique | None:
            critic, lane = item
            return self._one_critique(round_, critic, lane, shown, names, previous)

        return [c for c in self._in_parallel(one, list(self.spec.critics)) if c is not None]

    def _one_critique(self, round_: int, critic: str, lane: LaneSpec, shown: list[Shown],
                      names: list[str], previous: list[Critique]) -> Critique | None:
        earlier = self.earlier_critiques.get((round_, critic))
        if earlier is not None:
            kept = earlier.get("critique")
            return Critique.from_record(kept) if kept else None
        unit_dir = self.job.unit_dir / "critics" / f"{safe_name(critic)}-r{round_}"
        file = candidates_file.write(
            unit_dir, unit_id=self.unit.id, objective=self.unit.objective, round_=round_,
            rounds=self.spec.rounds, quorum=self.spec.quorum, candidates=shown,
            previous=[c for c in previous if c.critic != critic] if round_ > 1 else [])
        lane = _with_env(lane, {"WTMESH_CRITIC": critic, "WTMESH_CANDIDATES_JSON": str(file),
                                "WTMESH_ROUND": str(round_)})
        who = f"{critic}-r{round_}"
        job = dataclasses.replace(self.job, unit_dir=unit_dir,
                                  first_attempt=self.attempts.get(who, 0) + 1)
        with self.slots.held():
            reading = self.executor.run_reader(job, lane, self._reporting(critic=who),
                                               self.gate)
        critique, code, notes = None, None, ""
        result = reading.lane
        if reading.ended is not None:
            code, notes = reading.ended.code, reading.ended.notes
        elif reading.wrote:
            code = "invalid_output_schema"
            notes = (f"the critic changed files, which a critic must not do: "
                     f"{', '.join(reading.wrote[:5])}")
        elif result is not None and (result.timed_out or result.could_not_start
                                     or result.failure_code in LANE_FAILURES):
            code, notes = result.failure_code or "lane_failed", result.notes
        elif result is not None:
            try:
                data = json.loads(unit_dir.joinpath(f"critic-{result.attempt}.result.json")
                                  .read_text("utf-8"))
                critique = vote.parse_critique(data, critic=critic, round=round_,
                                               unit_id=self.unit.id, candidates=names)
            except FileNotFoundError:
                code, notes = "invalid_output_schema", "the critic wrote no result file"
            except (ValueError, UnicodeDecodeError, InvalidCritique) as exc:
                code, notes = "invalid_output_schema", f"the critic's verdict: {exc}"
        self.slots.raise_if_stopped()  # an interrupted critic gave no verdict: ask again
        self.report("critique", unit=self.unit.id, round=round_, critic=critic,
                    counted=critique is not None, failure_code=code, notes=notes,
                    critique=critique.as_record() if critique else None)
        return critique

    # -- the choice ------------------------------------------------------------------------

    def _select(self, found: list[Candidate], critiques: list[Critique],
                tally: vote.Tally | None = None) -> UnitWork:
        """``first_passing``, ``smallest`` or ``manual`` (critics, if any, only said what
        they think)."""
        select = self.spec.select
        if select == "manual":
            waiting = [c.name for c in found if c.passed]
            return self._ended("awaiting_choice", "awaiting_choice",
                               f"{len(waiting)} candidate{'s' if len(waiting) != 1 else ''} "
                               f"to choose from ({', '.join(waiting)}): "
                               f"{summary.pick_command(self.job.run_id, self.unit.id)}")
        votes = [c.as_vote() for c in found]
        name = vote.smallest(votes) if select == "smallest" else vote.first_passing(votes)
        assert name is not None  # one passed
        return self._choose(self._named(found, name), tally, None)

    def _choose(self, chosen: Candidate, tally: vote.Tally | None,
                round_: int | None) -> UnitWork:
        assert chosen.work is not None and chosen.work.result is not None
        critics = len(self.spec.critics)
        agree = next((s.agree for s in tally.standings if s.name == chosen.name), 0) \
            if tally else 0
        trailers = [f"Wtmesh-Variant: {chosen.name}"]
        if critics:
            trailers.append(f"Wtmesh-Votes: {agree}/{critics}")
        how = (f"chosen by {agree} of {critics} critics in round {round_}" if round_
               else f"chosen as {self.spec.select.replace('_', ' ')}")
        # The event first, then the unit's result ref: a resume that finds the ref
        # finds the event that says what it holds.
        self.report("chosen", unit=self.unit.id, candidate=chosen.name, select=self.spec.select,
                    votes=agree, critics=critics, round=round_, trailers=trailers)
        self.executor.set_refs({f"{self.job.ref_prefix}/result": chosen.work.result})
        # What integrates is the candidate's diff taken again from its commits: the file
        # collected before the critics ran is not trusted after them (unsandboxed, a
        # lane can write anywhere by path).
        diff_path = self.job.unit_dir / "unit.diff"
        unit_diff = diffs.collect(self.git, chosen.work.start, chosen.work.result,
                                  self.unit.scope, diff_path)
        notes = f"{chosen.name} {how}" + (f": {chosen.notes}" if chosen.notes else "")
        return dataclasses.replace(
            chosen.work, diff=unit_diff, diff_path=diff_path,
            unit_id=self.unit.id, status="accepted", failure_code=None,
            notes=notes, attempts=self._attempts(), duration_s=self._duration(),
            trailers=tuple(trailers))

    def _none_passed(self, found: list[Candidate]) -> UnitWork:
        states = [c.status for c in found]
        status = next((s for s in ("failed", "rejected", "skipped") if s in states),
                      "no_diff")
        code = next((c.failure_code for c in found if c.failure_code), None)
        why = "; ".join(f"{c.name}: {c.failure_code or c.status}" for c in found)
        return self._ended(status, code, f"no candidate passed ({why})")

    def _ended(self, status: str, code: str | None, notes: str) -> UnitWork:
        return UnitWork(self.unit.id, status, code, notes, self.job.start, None, None, None,
                        self._attempts(), (), self._duration())

    @staticmethod
    def _named(found: list[Candidate], name: str) -> Candidate:
        return next(c for c in found if c.name == name)

    # -- plumbing --------------------------------------------------------------------------

    def _reporting(self, **tag: str) -> Report:
        """The executor's events, saying which candidate or critic they are of."""
        def report(event: str, **fields: Any) -> None:
            if event == "lane_started":
                who = next(iter(tag.values()))
                self.attempts[who] = max(self.attempts.get(who, 0), int(fields["attempt"]))
            self.report(event, **fields, **tag)
        return report

    def _in_parallel(self, work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``work`` on every item at once (each waits for its lane slot), in order."""
        if len(items) == 1:
            return [work(items[0])]
        with ThreadPoolExecutor(max_workers=len(items),
                                thread_name_prefix=f"consensus-{self.unit.id}") as pool:
            return list(pool.map(work, items))

    def _attempts(self) -> int:
        return max(self.attempts.values(), default=1)

    def _duration(self) -> float:
        return time.monotonic() - self.started


def _with_env(lane: LaneSpec, env: Mapping[str, str]) -> LaneSpec:
    return dataclasses.replace(lane, env={**lane.env, **env})
