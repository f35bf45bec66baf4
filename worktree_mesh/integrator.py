"""The integrator: the only code that writes refs the user sees.

For each accepted unit, in plan order and under the repository's integrator lock: apply
its diff onto the current head in the run's integration worktree (three-way, in a
temporary index, where the plain apply fails), commit that tree as a candidate, run the
proof on exactly that commit there, and only then land it — ``commit_first`` by moving the
target with a compare-and-swap (then bringing the user's checked-out worktree along),
``patch_first`` by moving a scratch ref and writing a ``git format-patch`` file (whose
``git am`` was checked to give the candidate's tree, ``series_check``). Units proven one
after another while the integrator was catching up land in one such step. The head never
points at a tree whose proof failed, and what lands is the tree the proof ran on.

Bringing the user's worktree along (SPEC 11), when the target is checked out:

1. Someone else moved the target since the candidate was built (a commit of the user's):
   nothing is touched; the candidate is applied again onto the new tip and proven again.
2. Check, without writing anything, that the worktree can follow from the target's
   commit to the candidate: no file git does not track, untracked *or ignored*, where the
   range lands a file or a directory (``read-tree -m -u`` silently overwrites ignored
   ones), and ``read-tree -m -u -n`` agrees (no dirty tracked file in the way). If not,
   the target is left alone: this and later units land on ``wtmesh/<run-id>/integrated``
   (*stranded*), and the run ends saying which files are in the way and how to bring the
   worktree along (exit 3).
3. Record the move (``bring_along``), then move the target by compare-and-swap; losing the
   race is case 1, with nothing touched.
4. Move the worktree. The user may have changed something since step 2: then the
   worktree is left where it was (its files and index at the old commit, its branch at
   the new one, so ``git status`` shows the landed change staged in reverse — nothing of
   the user's is lost), the run records ``left_behind`` with the files in the way and
   ends with the one command that brings it along (exit 3); the worktree is not moved
   again during the run.

An ``index.lock`` held by another git command (an editor's ``git status``) is waited out
for up to ``INDEX_LOCK_WAIT_S`` before a move counts as refused. A target checked out in a
linked worktree whose directory is gone (git lists it as prunable) has nothing to bring
along and simply moves; one that is also locked (``git worktree lock``: it will be back)
refuses.

Every ledger event of a landing is written before the git write it records, and resume
reads each back against git, so a kill between the two is safe in either order: a
``bring_along`` whose target did move is finished (a no-op if the worktree had moved), one
whose target did not never touched the worktree; a ``stranded`` whose branch was not made
yet makes it where the event says. So a stranded branch without its event is none of the
run's (an unsandboxed lane can make one by path): it is never built upon, nor read as
landings.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from . import base_proof, diffs, faults, mail_safe, proc, series_check
from .errors import EnvironmentRefused, UsageError
from .git import INDEX_LOCK_WAIT_S, Git, Sha
from .integration_worktree import IntegrationWorktree
from .plan import Plan, Unit
from .proof import Prover
from .repo_guard import RepoGuard, own_writes
from .sandbox import Sandbox
from .state import (
    RunDir,
    StateDir,
    atomic_file,
    safe_name,
    scratch_ref,
    stranded_ref,
    write_atomic,
)
from .unit_runner import UnitWork

Report = Callable[..., None]

# How often a landing is retried when someone else moves the target between our read and
# our compare-and-swap.
MAX_LANDING_RACES = 5

# One unit at a time, a proven unit waits to land with the units after it (one compare-
# and-swap, one bring-along of the user's worktree for all) only while it would be held
# back less than this, judging the next unit's apply and proof by the last one's: landing
# costs about as much as a quick proof, and a slow proof must not keep proven work off
# the target. In a batch, ready units wait as long for the next unit's lanes, to share
# its proof (the scheduler's _gather_s). WTMESH_LANDING_WINDOW_S sets another value (0:
# every unit lands alone, and a batch is what is ready).
LANDING_WINDOW_S = 0.25


def landing_window_s() -> float:
    """LANDING_WINDOW_S, or WTMESH_LANDING_WINDOW_S when set; a bad value is a usage
    error (the run checks it before it starts)."""
    raw = os.environ.get("WTMESH_LANDING_WINDOW_S")
    if raw is None:
        return LANDING_WINDOW_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"WTMESH_LANDING_WINDOW_S must be a number of seconds, 0 or more, "
                         f"not {raw!r}")
    return value


@dataclass(frozen=True)
class Landing:
    unit_id: str
    status: str  # integrated | failed | no_diff
    failure_code: str | None
    notes: str
    commit: Sha | None
    patch: str | None  # file name in the patch directory
    proof_status: str | None  # pass | fail | skipped
    proof_duration_s: float


@dataclass(frozen=True)
class CandidateProof:
    """A consensus candidate proven on the head ``onto``: ``status`` pass (or skipped: no
    proof command), else its landing's failure (failed / no_diff) with the code and why."""

    status: str
    failure_code: str | None
    notes: str
    onto: Sha
    commit: Sha | None
    duration_s: float
    patch: str | None  # in the patch directory (patch_first), else an absolute path


@dataclass(frozen=True)
class RedProof:
    """A test-first unit's red proof: ``commit`` (its change on ``head``) when proven
    red, else the failure code and why."""

    failure_code: str | None
    notes: str
    head: Sha
    commit: Sha | None


def apply_on_objects(git: Git, run_dir: RunDir, onto: Sha, patch: Path,
                     user: str = "integrator") -> Sha | None:
    """The tree of ``patch`` applied onto ``onto``, three-way if need be, in a temporary
    index of the run's own (one per process and ``user``: the scheduler and the
    integration thread check at once); None when it conflicts."""
    index = run_dir.tmp / f"index-{os.getpid()}-{user}"
    index.parent.mkdir(parents=True, exist_ok=True)  # removed when a run ends
    try:
        return git.apply_to_tree(onto, patch, index)
    finally:
        index.unlink(missing_ok=True)


def commit_message(unit: Unit, run_id: str, *, batch: str | None = None,
                   proof: str | None = None, trailers: Sequence[str] = ()) -> str:
    """Subject from the objective, its body, and trailers: the run and unit (how resume
    recognises a landing), and in a batch which commit of it the proof ran on. In
    patch_first the message travels through ``git am``: the body is made safe for it
    (``mail_safe``), and the subject's whitespace is what mailinfo leaves of it."""
    lines = unit.objective.strip().splitlines() or [unit.id]
    subject = f"{unit.id}: {' '.join(lines[0].split())}"
    body = mail_safe.body(lines[1:])
    parts = [subject]
    if body:
        parts.append(body)
    lines_of_trailers = [f"Wtmesh-Run: {run_id}", f"Wtmesh-Unit: {unit.id}"]
    if batch is not None:
        lines_of_trailers += [f"Wtmesh-Batch: {batch}", f"Wtmesh-Proof: {proof}"]
    lines_of_trailers += trailers
    parts.append("\n".join(lines_of_trailers))
    return "\n\n".join(parts) + "\n"


def _failed(unit: Unit, code: str, notes: str) -> Landing:
    return Landing(unit.id, "failed", code, notes, None, None, None, 0.0)


@dataclass
class _Link:
    """One unit in a chain of candidates: its commit, or why it has none."""

    unit: Unit
    work: UnitWork
    commit: Sha | None
    landing: Landing | None  # set when the unit did not make a commit (conflict, no_diff)
    tree: Sha | None = None  # the commit's tree


def target_worktree(git: Git, target_ref: str) -> Path | None:
    """The worktree that has the target branch checked out, if any can be brought along.

    A linked worktree whose directory was deleted (without ``git worktree remove``; git
    lists it as prunable) holds no file of the user's that moving the target could
    overwrite, and nothing to bring along: the target just moves, as if no worktree had
    it checked out. If it is locked (``git worktree lock``, e.g. on a removable disk) the
    user said it will be back, stale against a target that moved without it: refused."""
    for entry in git.worktrees():
        if entry.branch != target_ref or entry.bare:
            continue
        if entry.path.is_dir():
            return entry.path
        if git.worktree_is_locked(entry.path):
            raise EnvironmentRefused(
                f"the target branch {target_ref[11:]!r} is checked out in the locked "
                f"worktree {entry.path}, which is missing; make it available (or unlock "
                "it with git worktree unlock) and run again")
        return None
    return None


@dataclass(frozen=True)
class _Blocked:
    """Why the user's worktree cannot follow the target, and the files in the way."""

    reason: str
    files: list[str]

    def says(self) -> str:
        return f"{self.reason}: {', '.join(self.files)}" if self.files else self.reason


class Integrator:
    def __init__(self, *, git: Git, plan: Plan, run_id: str, state: StateDir, run_dir: RunDir,
                 delivery_mode: str, target: str, base: Sha, repo: Path,
                 patch_dir: Path | None, lock_timeout_s: float, report: Report,
                 batched: bool = False, guard: RepoGuard | None = None,
                 sandbox: Sandbox | None = None) -> None:
        self.git = git
        # Told of every write of ours to the user's repository that a lane must not make.
        self.guard = guard
        self.plan = plan
        self.run_id = run_id
        self.state = state
        self.run_dir = run_dir
        self.mode = delivery_mode
        self.target_ref = f"refs/heads/{target}"
        self.base = base
        self.repo = repo
        self.patch_dir = patch_dir
        self.lock_timeout_s = lock_timeout_s
        self.report = report
        # --batch other than 1: landed commits say which of them the proof ran on.
        self.batched = batched
        self.landing_window_s = landing_window_s()
        self.worktree = IntegrationWorktree(git, run_dir.worktrees / "integration")
        self.prover = Prover(git=git, plan=plan, run_id=run_id, run_dir=run_dir, repo=repo,
                             worktree=self.worktree, report=report, sandbox=sandbox)
        # Where landings go: the target (commit_first), or a ref of this run's own
        # (patch_first, and commit_first once the user's worktree could not follow).
        self.scratch_ref = scratch_ref(run_id)
        self.stranded_ref = stranded_ref(run_id)
        self.landing_ref = self.target_ref if delivery_mode == "commit_first" else self.scratch_ref
        self.stranded = False
        # The user's worktree that did not follow: stranded (the target stayed, landings
        # go to stranded_ref) or left behind (the target moved, the worktree did not).
        self.strand_record: dict[str, Any] | None = None  # worktree, at, files
        self.left_behind: dict[str, Any] | None = None  # worktree, at, reason, files
        self._lock_holder: int | None = None  # the thread in locked()
        # What a lock timeout tells the user to do, when not to resume the run.
        self.lock_timeout_hint: str | None = None

    @property
    def last_proof_s(self) -> float:
        """How long the last proof that ran took."""
        return self.prover.last_duration_s

    # -- lock --------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The repository's integrator lock, waited for up to ``lock_timeout_s``. Taken
        again by the thread that holds it (``wtmesh pick`` checks under it, then
        integrates), it is simply still held."""
        if self._lock_holder == threading.get_ident():
            yield
            return
        lock = filelock.FileLock(str(self.state.integrator_lock), fallback_to_soft=False)
        owner_file = self.state.integrator_lock.with_suffix(".owner")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = _read_owner(owner_file)
            self.report("lock_wait", holder=holder, timeout_s=self.lock_timeout_s)
            try:
                lock.acquire(timeout=self.lock_timeout_s)
            except filelock.Timeout:
                message = (f"timed out after {self.lock_timeout_s:g}s waiting for the "
                           f"integrator lock held by {_describe_owner(holder)}")
                # Before its ledger is written (a start waiting for the lock) there is
                # no run to resume: nothing of it was made.
                if self.lock_timeout_hint is not None:
                    message += f"; {self.lock_timeout_hint}"
                elif self.run_dir.ledger.is_file():
                    message += f"; this run can be resumed with --resume {self.run_id}"
                else:
                    message += "; nothing was started"
                raise EnvironmentRefused(message) from None
        self._lock_holder = threading.get_ident()
        try:
            write_atomic(owner_file, json.dumps({"run_id": self.run_id,
                                                 "pid": os.getpid()}).encode())
            yield
        finally:
            self._lock_holder = None
            lock.release()

    # -- start -------------------------------------------------------------------------

    def check_start(self) -> None:
        """commit_first refuses to start when the target's worktree has uncommitted changes
        to tracked files: bringing it along later could not keep them safe."""
        if self.mode != "commit_first":
            return
        if self.git.read_ref(self.target_ref) is None:
            raise EnvironmentRefused(f"target branch {self.target_ref[11:]!r} does not exist")
        worktree = self._worktree_to_bring_along()
        if worktree is not None and self.git.tracked_changes(worktree):
            raise EnvironmentRefused(
                f"the target branch {self.target_ref[11:]!r} is checked out in {worktree} "
                "with uncommitted changes to tracked files; commit or stash them first")

    def start_patch_series(self) -> None:
        if self.mode == "patch_first" and self.git.read_ref(self.scratch_ref) is None:
            self.git.update_ref(self.scratch_ref, self.base, None)
        if self.patch_dir is not None:
            self.patch_dir.mkdir(parents=True, exist_ok=True)
            series = self.patch_dir / "series"
            if not series.exists():
                write_atomic(series, b"")

    # -- integrate ---------------------------------------------------------------------

    def integrate(self, items: Sequence[tuple[Unit, UnitWork]]) -> list[Landing]:
        """Integrate consecutive units, in order. Returns the landings of the units it
        decided: a leading part, at least one.

        One unit at a time (``--batch 1``): each diff is applied onto the tip so far and
        proven on its own, exactly as if the units had come one by one, and the units
        proven while the next was already waiting land together, with one compare-and-
        swap and one bring-along of the user's worktree. Every commit the target passes
        through was proven; a landing is only held back while proofs are quick
        (``LANDING_WINDOW_S``), so a slow proof never keeps a proven unit from landing.

        In a batch (``--batch auto|N``) the diffs are applied one after another into a
        chain of candidate commits and the proof runs on the chain's tip. When it
        passes, the whole chain lands with one compare-and-swap. When it fails,
        bisection over the chain's prefixes finds the first unit whose commit fails the
        proof: the prefix before it lands, it fails ``proof_failed``, and the units after
        it are applied again without it. Proof results are kept by tree, so no tree is
        proven twice. The outcome is what integrating one unit at a time gives whenever
        a unit that breaks the proof keeps every later tree failing until it is taken
        out — the case batching is for; the target still only ever moves to a tree
        whose proof passed.
        """
        for unit, work in items:
            assert work.diff_path is not None, f"{unit.id}: only accepted units integrate"
        landings: dict[str, Landing] = {}
        with self.locked():
            for _race in range(MAX_LANDING_RACES):
                decided = (self._integrate_prefix(items) if self.batched
                           else self._integrate_each(items))
                if decided is not None:  # None: the landing ref moved under us; again
                    # The rest go back to the scheduler, which hands them again with the
                    # units that became ready meanwhile (after a failure, one proof for
                    # all of them).
                    landings.update(decided)
                    break
            else:
                for unit, _work in items:
                    landings[unit.id] = _failed(unit, "delivery_blocked",
                                                "the target kept moving under the integrator")
        return [landings[unit.id] for unit, _work in items if unit.id in landings]

    def _integrate_each(self, pending: Sequence[tuple[Unit, UnitWork]]
                        ) -> dict[str, Landing] | None:
        """One round one unit at a time: apply and prove each unit onto the tip so far
        while that is quick, then land every proven one in one step. Returns the units
        decided, or None when the landing lost a race."""
        head = self._landing_head()
        decided: dict[str, Landing] = {}
        proven: list[_Link] = []
        tip, tip_tree = head, self.git.tree_of(head)
        rest = list(pending)
        first_decided: float | None = None
        step_s = 0.0  # how long the last unit's apply and proof took
        while rest:
            if first_decided is not None and \
                    time.monotonic() - first_decided + step_s > self.landing_window_s:
                break
            step_started = time.monotonic()
            unit, work = rest.pop(0)
            link = self._link(unit, work, tip, tip_tree)
            # A conflict or no_diff is decided against this very tip; a proof failure is
            # taken out, and the next unit goes onto the same tip.
            ended = link.landing or self._prove_link([*proven, link])
            step_s = time.monotonic() - step_started
            first_decided = first_decided or time.monotonic()
            if ended is not None:
                decided[unit.id] = ended
                continue
            assert link.commit is not None and link.tree is not None
            proven.append(link)
            tip, tip_tree = link.commit, link.tree
        if proven:
            if not self._land(head, tip):
                return None
            faults.point("land")
            decided.update(self._record_landings(proven, tip))
        return decided

    def _integrate_prefix(self, pending: Sequence[tuple[Unit, UnitWork]]
                          ) -> dict[str, Landing] | None:
        """One round: build the chain, find its longest passing prefix, land it. Returns
        the units decided (later units were applied onto a chain holding the failure and
        must go round again without it), or None when the landing lost a race."""
        head = self._landing_head()
        links = self._chain(pending, head)
        commits = [link for link in links if link.commit is not None]
        passing, failure = self._longest_passing_prefix(commits)
        # Everything up to the first failing commit is decided; later units were applied
        # onto a chain holding that failure and go round again without it.
        cut = links.index(commits[passing]) + 1 if failure is not None else len(links)
        decided: dict[str, Landing] = {link.unit.id: link.landing for link in links[:cut]
                                       if link.landing is not None}
        if failure is not None:
            decided[commits[passing].unit.id] = failure
        if passing:
            landed = commits[:passing]
            tip = self._mark_batch(head, landed) if self.batched else landed[-1].commit
            assert tip is not None
            if not self._land(head, tip):
                return None
            faults.point("land")
            decided.update(self._record_landings(landed, tip))
        return decided

    def _chain(self, pending: Sequence[tuple[Unit, UnitWork]], head: Sha) -> list[_Link]:
        """Apply each diff onto the tip so far, committing a candidate for each."""
        links: list[_Link] = []
        tip, tip_tree = head, self.git.tree_of(head)
        for unit, work in pending:
            link = self._link(unit, work, tip, tip_tree)
            links.append(link)
            if link.commit is not None:
                assert link.tree is not None
                tip, tip_tree = link.commit, link.tree
        return links

    def _link(self, unit: Unit, work: UnitWork, tip: Sha, tip_tree: Sha) -> _Link:
        """``work``'s diff applied onto ``tip`` and committed as a candidate; or why it
        makes no commit (it conflicts, changes nothing there, or in patch_first its
        patch would not give its tree)."""
        self.report("apply_started", unit=unit.id, onto=tip)
        tree = self._apply(work, tip, tip_tree)
        if tree is None:
            return _Link(unit, work, None, _failed(
                unit, "integration_conflict",
                f"the change does not apply onto {tip[:12]}, even three-way"))
        if tree == tip_tree:
            return _Link(unit, work, None, Landing(
                unit.id, "no_diff", None, "the change is already on the target",
                None, None, None, 0.0))
        if work.diff is not None and work.diff.touches_links:
            # A link fine in the unit's own tree can escape through another unit's link
            # landed since (src/esc -> up/../x, then src/up -> ..): what counts is the
            # tree that would land.
            escapes = diffs.link_violations(self.git, tip_tree, tree,
                                            self.git.changes(tip_tree, tree))
            if escapes:
                return _Link(unit, work, None, _failed(unit, "scope_violation",
                                                       "; ".join(escapes)))
        commit = self.git.commit_tree(tree, [tip], commit_message(unit, self.run_id,
                                                                  trailers=work.trailers))
        if self.mode == "patch_first":
            # Before its proof: a patch that does not give this tree is never delivered.
            # In a batch the commit that lands is made again with trailers added
            # (_mark_batch): fixed text and the unit id ([A-Za-z0-9._-]), which git am
            # reads as message, so its patch reproduces exactly when this one does.
            scratch = self.run_dir.worktrees / "patch-check"
            blocked = series_check.undelivered(self.git, scratch, tip, commit)
            if blocked is not None:
                return _Link(unit, work, None, _failed(unit, "delivery_blocked", blocked))
        faults.point("apply")
        return _Link(unit, work, commit, None, tree)

    def _apply(self, work: UnitWork, onto: Sha, onto_tree: Sha) -> Sha | None:
        """The tree of ``work``'s diff applied onto ``onto``: in place in the integration
        worktree, else three-way in a temporary index; None when it conflicts."""
        assert work.diff_path is not None
        paths = work.diff.files if work.diff is not None else None
        tree = self.worktree.apply(onto, onto_tree, work.diff_path, paths)
        if tree is not None:
            return tree
        return apply_on_objects(self.git, self.run_dir, onto, work.diff_path)

    def _longest_passing_prefix(self, commits: list[_Link]) -> tuple[int, Landing | None]:
        """How many leading commits land, and the failure of the one after them. The
        tip first (the whole chain usually passes), then bisection."""
        if not commits:
            return 0, None
        verdicts: dict[int, Landing | None] = {}

        def fails(length: int) -> bool:
            if length not in verdicts:
                verdicts[length] = self._prove_link(commits[:length])
            return verdicts[length] is not None

        if not fails(len(commits)):
            return len(commits), None
        passing, failing = 0, len(commits)  # prefix lengths known to pass / to fail
        while failing - passing > 1:
            middle = (passing + failing) // 2
            if fails(middle):
                failing = middle
            else:
                passing = middle
        return passing, verdicts[failing]

    def _prove_link(self, prefix: list[_Link]) -> Landing | None:
        """Prove the tip of ``prefix``; None when it passes, else the tip unit's failure."""
        tip = prefix[-1]
        assert tip.commit is not None
        assert tip.tree is not None
        verdict = self.prover.prove(tip.unit, tip.commit, tip.tree,
                                    [link.unit.id for link in prefix])
        if verdict.status == "fail":
            return Landing(tip.unit.id, "failed", "proof_failed", verdict.notes, None, None,
                           "fail", verdict.duration_s)
        return None

    def _mark_batch(self, head: Sha, landed: list[_Link]) -> Sha:
        """Commit the landed chain again with trailers saying what was proven: in a batch
        only the tip's tree ran the proof. Trees are unchanged, so nothing is re-proven."""
        tip = head
        tip_unit = landed[-1].unit.id
        for position, link in enumerate(landed, 1):
            assert link.commit is not None
            proven = ("passed" if position == len(landed)
                      else f"covered by the proof of {tip_unit} (batch tip)")
            message = commit_message(link.unit, self.run_id,
                                     batch=f"{position}/{len(landed)}", proof=proven,
                                     trailers=link.work.trailers)
            assert link.tree is not None
            tip = self.git.commit_tree(link.tree, [tip], message)
            link.commit = tip
        return tip

    def _record_landings(self, landed: list[_Link], tip: Sha) -> dict[str, Landing]:
        out: dict[str, Landing] = {}
        for link in landed:
            assert link.commit is not None
            patch = self._emit_patch(link.unit, link.commit) if self.mode == "patch_first" \
                else None
            self.report("landed", unit=link.unit.id, commit=link.commit, ref=self.landing_ref,
                        patch=patch)
            out[link.unit.id] = Landing(link.unit.id, "integrated", None, "", link.commit,
                                        patch, "pass", 0.0)
        return out

    def prove_candidate(self, unit: Unit, work: UnitWork, name: str) -> CandidateProof:
        """A consensus unit's candidate applied onto the head and proven there, as the
        unit would be, without landing (SPEC 12); its patch is written for reviewers to
        compare: in patch_first ``candidates/<unit>/<name>.patch`` in the patch directory
        (the name returned is relative to it), in commit_first beside the candidate's
        logs, ``units/<unit>/candidates/<name>/candidate.patch`` in the run directory
        (the path returned is absolute)."""
        with self.locked():
            head = self._landing_head()
            link = self._link(unit, work, head, self.git.tree_of(head))
            if link.landing is not None:
                ended = link.landing
                return CandidateProof(ended.status, ended.failure_code, ended.notes, head,
                                      None, 0.0, None)
            assert link.commit is not None and link.tree is not None
            verdict = self.prover.prove(unit, link.commit, link.tree, [unit.id], of=name)
            if verdict.status == "fail":
                return CandidateProof("failed", "proof_failed", verdict.notes, head, None,
                                      verdict.duration_s, None)
            if self.patch_dir is not None:
                patch = f"candidates/{safe_name(unit.id)}/{safe_name(name)}.patch"
                written = self.patch_dir / patch
            else:
                written = (self.run_dir.unit_dir(unit.id) / "candidates" / safe_name(name)
                           / "candidate.patch")
                patch = str(written)
            with atomic_file(written) as out:
                self.git.format_patch(link.commit, out)
            return CandidateProof(verdict.status, None, verdict.notes, head, link.commit,
                                  verdict.duration_s, patch)

    # -- test-first groups (SPEC 13) ---------------------------------------------------

    def prove_red(self, unit: Unit, work: UnitWork) -> RedProof:
        """A test-first unit's change, proven red: its proof passes on the head and fails
        with the change applied. The commit it makes there is where its implementation
        units start; it never lands alone."""
        with self.locked():
            head = self._landing_head()
            head_tree = self.git.tree_of(head)
            on_head = self.prover.prove(unit, head, head_tree, [], log_name="head-proof.log")
            if on_head.status == "fail":
                return RedProof("delivery_blocked", f"the head {head[:12]} already fails the "
                                f"proof, so a red proof says nothing: {on_head.notes}", head,
                                None)
            link = self._link(unit, work, head, head_tree)
            if link.landing is not None:
                return RedProof(link.landing.failure_code or link.landing.status,
                                link.landing.notes, head, None)
            assert link.commit is not None and link.tree is not None
            verdict = self.prover.prove(unit, link.commit, link.tree, [unit.id])
            if verdict.status != "fail":
                return RedProof("proof_missing", "the proof passes with the new tests: "
                                "they pin nothing the implementation must do", head, None)
            return RedProof(None, verdict.notes, head, link.commit)

    def integrate_group(self, items: Sequence[tuple[Unit, UnitWork]]) -> list[Landing]:
        """A test-first unit and its implementation units, applied in order onto the head
        and landed with one move once the tip passes every member's proof; else nothing
        lands and every member says why. The target never points at the red commit."""
        tip_unit = items[-1][0].id
        with self.locked():
            for _race in range(MAX_LANDING_RACES):
                head = self._landing_head()
                links = self._chain(items, head)
                broken = next((link for link in links if link.landing is not None), None)
                if broken is not None:
                    assert broken.landing is not None
                    return self._group_failed(items, broken.unit.id, broken.landing)
                tip = links[-1]
                assert tip.commit is not None and tip.tree is not None
                members = [unit.id for unit, _work in items]
                for unit in base_proof.distinct(unit for unit, _work in items):
                    verdict = self.prover.prove(unit, tip.commit, tip.tree, members)
                    if verdict.status == "fail":
                        return self._group_failed(items, tip_unit, Landing(
                            tip_unit, "failed", "proof_failed",
                            f"the group's tip fails {unit.id}'s proof: {verdict.notes}",
                            None, None, "fail", verdict.duration_s))
                if self._land(head, tip.commit):
                    faults.point("land")
                    landed = self._record_landings(links, tip.commit)
                    return [landed[unit.id] for unit, _work in items]
        return [_failed(unit, "delivery_blocked", "the target kept moving under the integrator")
                for unit, _work in items]

    @staticmethod
    def _group_failed(items: Sequence[tuple[Unit, UnitWork]], culprit: str,
                      why: Landing) -> list[Landing]:
        """Every member of a group that lands nothing: the one at fault says its own
        failure, the others that their group did not reach green because of it."""
        out = []
        for unit, _work in items:
            if unit.id == culprit:
                out.append(why)
            else:
                out.append(_failed(unit, why.failure_code or "proof_failed",
                                   f"its test-first group landed nothing: {culprit} "
                                   f"{why.failure_code}: {why.notes}"))
        return out

    # -- the integration worktree -------------------------------------------------------

    def _landing_head(self) -> Sha:
        """Where the next landing goes onto, with the integration worktree there."""
        head = self.git.read_ref(self.landing_ref)
        if head is None:
            raise EnvironmentRefused(f"{self.landing_ref} disappeared during the run")
        self._ensure_worktree(head)
        return head

    def _ensure_worktree(self, head: Sha) -> None:
        if not self.worktree.exists():
            self.worktree.create(head, self.git.tree_of(head))

    # -- landing -----------------------------------------------------------------------

    def _land(self, head: Sha, candidate: Sha) -> bool:
        """Move the landing ref from ``head`` to ``candidate``, then bring the user's
        worktree along (see the module's docstring); False when the ref moved first."""
        if self.landing_ref != self.target_ref:
            with own_writes(self.guard) as expect:
                moved = self.git.update_ref(self.landing_ref, candidate, head,
                                            f"wtmesh {self.run_id}")
                if moved:
                    expect({self.landing_ref: candidate})
                return moved
        worktree = self._worktree_to_bring_along()
        # The user's worktree and index move together with the target: no check of the
        # guard's sees one without the other.
        with own_writes(self.guard):
            return self._land_target(head, candidate, worktree)

    def _land_target(self, head: Sha, candidate: Sha, worktree: Path | None) -> bool:
        if worktree is not None:
            if self.git.read_ref(self.target_ref) != head:
                return False  # a commit of the user's: built upon, never a reason to strand
            blocked = self._move(worktree, head, candidate, dry_run=True)
            if blocked is not None:
                return self._strand(head, candidate, worktree, blocked)
            # Recorded before the swap: resume finishes a move the swap was not followed by.
            self.report("bring_along", worktree=str(worktree), old=head, new=candidate)
        if not self.git.update_ref(self.target_ref, candidate, head, f"wtmesh {self.run_id}"):
            return False  # the user's worktree was not touched
        if worktree is not None:
            faults.point("bring-along")
            self.follow(worktree, head, candidate)
        return True

    def _worktree_to_bring_along(self) -> Path | None:
        worktree = target_worktree(self.git, self.target_ref)
        if worktree is not None and self.left_behind is not None \
                and str(worktree) == self.left_behind["worktree"]:
            return None  # its index is at an older commit: moving it on would mix the two
        return worktree

    def _move(self, worktree: Path, old: Sha, new: Sha, *, dry_run: bool) -> _Blocked | None:
        """Move the user's worktree from ``old`` to ``new`` (``dry_run``: only check that
        it can); None when it did (could), else why not."""
        in_the_way = self.git.untracked_in_the_way(worktree, old, new)
        if in_the_way:
            return _Blocked("files git does not track are in the way", in_the_way)

        def waiting(lock: Path) -> None:
            self.report("index_lock_wait", worktree=str(worktree), lock=str(lock),
                        timeout_s=INDEX_LOCK_WAIT_S)

        why = self.git.bring_along(worktree, old, new, dry_run=dry_run, on_wait=waiting)
        if why is None:
            return None
        return _Blocked(why, self.git.changes_in_the_way(worktree, old, new))

    def follow(self, worktree: Path, old: Sha, new: Sha) -> None:
        """The target moved from ``old`` to ``new``: bring its worktree along, or, when
        that cannot be done now, leave it where it was and record why and what is in
        the way."""
        blocked = self._move(worktree, old, new, dry_run=False)
        if blocked is None:
            return
        self.left_behind = {"worktree": str(worktree), "at": old, "reason": blocked.reason,
                            "files": blocked.files}
        if self.guard is not None:
            self.guard.stop_watching_index()
        self.report("left_behind", **self.left_behind, target=new)

    def _strand(self, head: Sha, candidate: Sha, worktree: Path, blocked: _Blocked) -> bool:
        """The user's worktree cannot follow the target (files in the way): leave the
        target alone and land on wtmesh/<run-id>/integrated, from ``head`` on. The event
        comes first and says where the branch starts, for a resume to make it."""
        self.stranded = True
        self.landing_ref = self.stranded_ref
        self.strand_record = {"worktree": str(worktree), "at": head, "files": blocked.files}
        self.report("stranded", ref=self.stranded_ref, worktree=str(worktree), at=head,
                    reason=blocked.says(), files=blocked.files)
        faults.point("strand")
        # Made afresh at head, whatever a branch of that name held: before the event
        # above it was none of this run's.
        self.git.set_ref(self.stranded_ref, head, f"wtmesh {self.run_id}")
        return self.git.update_ref(self.stranded_ref, candidate, head, f"wtmesh {self.run_id}")

    def resume_landing(self, *, stranded: Mapping[str, Any] | None,
                       left_behind: Mapping[str, Any] | None,
                       bring_along: Mapping[str, Any] | None) -> None:
        """Take up an interrupted run's landing where the ledger and git say it stopped
        (under the lock; see the module's docstring): the stranded branch, a worktree
        left behind, or a recorded move of the worktree the kill cut short."""
        if self.mode != "commit_first":
            return
        if stranded is not None:  # a branch of that name without the event is not ours
            self.stranded = True
            self.landing_ref = self.stranded_ref
            at = stranded.get("at") or self.git.read_ref(self.target_ref)
            self.strand_record = {"worktree": stranded["worktree"], "at": at,
                                  "files": stranded.get("files", [])}
            if self.git.read_ref(self.stranded_ref) is None and at is not None:
                # killed before it was made
                self.git.update_ref(self.stranded_ref, at, None, f"wtmesh {self.run_id}")
        if left_behind is not None:
            self.left_behind = {key: left_behind[key]
                                for key in ("worktree", "at", "reason", "files")}
            return
        if bring_along is None or self.git.read_ref(self.target_ref) != bring_along["new"]:
            return  # the swap never happened: the worktree was not touched
        worktree = self._worktree_to_bring_along()
        if worktree is not None and str(worktree) == bring_along["worktree"]:
            self.follow(worktree, Sha(bring_along["old"]), Sha(bring_along["new"]))

    def not_brought_along(self, head: Sha | None) -> dict[str, Any] | None:
        """For the summary: the user's worktree that did not follow, what is in its way
        and the command that brings it along once those files are moved aside; None
        when it followed (or there was none)."""
        if self.left_behind is not None:
            worktree, at = self.left_behind["worktree"], self.left_behind["at"]
            target = self.git.read_ref(self.target_ref) or head or at
            files = self._in_the_way(Path(worktree), at, target, self.left_behind["files"])
            command = f"git -C {shlex.quote(worktree)} read-tree -m -u {at} {target}"
        elif self.stranded and self.strand_record is not None and head is not None:
            worktree, at = self.strand_record["worktree"], self.strand_record["at"]
            files = self._in_the_way(Path(worktree), at, head, self.strand_record["files"])
            command = (f"git -C {shlex.quote(worktree)} merge --ff-only "
                       f"{self.stranded_ref[len('refs/heads/'):]}")
        else:
            return None
        return {"worktree": worktree, "files": files, "command": command}

    def _in_the_way(self, worktree: Path, old: str, new: str, known: list[str]) -> list[str]:
        """Everything in the way of moving ``worktree`` from ``old`` to ``new``, as of
        now (later landings may have added some); ``known`` when it cannot be read."""
        if not worktree.is_dir():
            return known
        try:
            return sorted({*self.git.untracked_in_the_way(worktree, old, new),
                           *self.git.changes_in_the_way(worktree, old, new)})
        except proc.CommandError:
            return known

    def rewrite_series(self, landed: list[tuple[str, Sha]]) -> dict[str, str]:
        """Write the whole patch series again from the landed commits (after a crash the
        last patch may be missing or torn): patches derive from commits, so this is
        idempotent. Returns each unit's patch file name."""
        assert self.patch_dir is not None
        names: dict[str, str] = {}
        for number, (unit_id, commit) in enumerate(landed, 1):
            names[unit_id] = f"{number:04d}-{unit_id}.patch"
            with atomic_file(self.patch_dir / names[unit_id]) as out:
                self.git.format_patch(commit, out)
        write_atomic(self.patch_dir / "series",
                     "".join(f"{name}\n" for name in names.values()).encode())
        return names

    def _emit_patch(self, unit: Unit, commit: Sha) -> str:
        assert self.patch_dir is not None
        faults.point("patch")
        series = self.patch_dir / "series"
        names = series.read_text("utf-8").splitlines() if series.exists() else []
        name = f"{len(names) + 1:04d}-{unit.id}.patch"
        with atomic_file(self.patch_dir / name) as out:
            self.git.format_patch(commit, out)
        write_atomic(series, "".join(f"{n}\n" for n in [*names, name]).encode())
        return name

    def warm_up(self, head: Sha) -> None:
        """Make the integration worktree ahead of the first landing, while lanes run:
        writing a large repository's files takes seconds. A failure here is left for
        the first integration to meet and report."""
        try:
            self._ensure_worktree(head)
        except proc.CommandError:
            pass


def _read_owner(path: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_owner(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "another wtmesh run"
    return f"run {holder.get('run_id')} (pid {holder.get('pid')})"


def wait_message(holder: Mapping[str, Any] | None, timeout_s: float) -> str:
    return (f"waiting for the integrator lock held by {_describe_owner(holder)} "
            f"(up to {timeout_s:g}s)")

