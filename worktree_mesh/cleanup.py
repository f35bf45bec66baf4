"""``wtmesh gc``: remove what finished or dead runs left behind.

What goes: a run's worktrees (by path, never a bare ``git worktree prune``, which would
also unregister worktrees of the user's whose directory is missing), its refs under
``refs/wtmesh/<run-id>/``, its temporary indexes, and the lock file of a finished run.
What stays: the run's directory (ledger, logs, patches: the record of what happened),
a stranded branch ``wtmesh/<run-id>/integrated`` (work the user has to look at), and
everything of a live run. A run is live while its process holds the run lock, so a run
is never judged dead from a pid that might have been reused.

An interrupted run (not finished, process gone) can still be resumed; its refs hold the
lanes' finished work that resuming integrates without paying for the lanes again. Those
refs are kept unless ``unfinished=True``: dropping them makes the run un-resumable. So
are those of a finished run with units awaiting a choice (``select: manual``): its
candidates' work, which ``wtmesh pick`` integrates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .git import Git
from .ledger import LedgerDamaged
from .resume import RunLock, events, run_finished
from .state import RunDir, StateDir

Kind = Literal["worktree", "ref", "tmp", "lock"]


@dataclass(frozen=True)
class Removal:
    run_id: str
    kind: Kind
    what: str


@dataclass(frozen=True)
class Kept:
    run_id: str
    why: str


@dataclass
class GcReport:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)


def collect_garbage(git: Git, state: StateDir, *, dry_run: bool = False,
                    unfinished: bool = False) -> GcReport:
    report = GcReport(dry_run)
    refs_by_run = _wtmesh_refs_by_run(git)
    for run_id in sorted(_known_run_ids(state) | set(refs_by_run)):
        run_dir = state.run(run_id)
        # No lock file: no process ever locked this run, or gc removed it once the run
        # had finished; either way nothing can be live (and probing would create one).
        lock = RunLock(run_dir) if (run_dir.path / "run.lock").exists() else None
        # Holding the run's lock while cleaning also keeps a resume from starting midway.
        if lock is not None and not lock.try_acquire():
            report.kept.append(Kept(run_id, "running: nothing of a live run is touched"))
            continue
        try:
            _collect_run(git, run_dir, state.legacy_worktrees(run_id),
                         refs_by_run.get(run_id, {}), report, unfinished=unfinished)
        except LedgerDamaged as exc:
            # Whether it finished cannot be told: keep everything of it, say why.
            report.kept.append(Kept(run_id, f"{exc.message}; nothing of it was removed"))
        finally:
            if lock is not None:
                lock.release()
    return report


def _collect_run(git: Git, run_dir: RunDir, legacy: Path, refs: dict[str, str],
                 report: GcReport, *, unfinished: bool) -> None:
    run_id = run_dir.run_id
    records = events(run_dir)
    finished = run_finished(records) is not None
    resumable = bool(records) and not finished

    removals: list[Removal] = []
    homes = (run_dir.worktrees, legacy)
    for worktree in git.own_worktrees():
        # Directly in a home, as wtmesh makes them: a record a lane wrote may climb out
        # of it ("<home>/../..."), which is_relative_to, comparing names, would allow.
        if worktree.parent in homes:
            removals.append(Removal(run_id, "worktree", str(worktree)))
    listed = {r.what for r in removals}
    for home in homes:
        if home.is_symlink():
            # Never listed: a lane can put a link there, or write the run's record of
            # where its worktrees are, and through it every file of the link's target
            # would go. Only the link goes.
            removals.append(Removal(run_id, "worktree", str(home)))
        elif home.is_dir():
            removals += [Removal(run_id, "worktree", str(p))
                         for p in sorted(home.iterdir()) if str(p) not in listed]
    if run_dir.tmp.is_dir():
        removals += [Removal(run_id, "tmp", str(p)) for p in sorted(run_dir.tmp.iterdir())]
    waiting = awaiting_choice(records) if finished else []
    if refs and resumable and not unfinished:
        report.kept.append(Kept(run_id, f"interrupted: its {len(refs)} refs under "
                                f"refs/wtmesh/{run_id}/ are kept so it can be resumed "
                                f"(wtmesh run PLAN --resume {run_id}); "
                                "`wtmesh gc --unfinished` drops them"))
    elif refs and waiting and not unfinished:
        report.kept.append(Kept(run_id, f"{', '.join(waiting)} await"
                                f"{'s' if len(waiting) == 1 else ''} a choice: its "
                                f"{len(refs)} refs under refs/wtmesh/{run_id}/ hold the "
                                f"candidates (wtmesh pick {run_id} UNIT CANDIDATE); "
                                "`wtmesh gc --unfinished` drops them"))
    else:
        removals += [Removal(run_id, "ref", ref) for ref in sorted(refs)]
    lock_file = run_dir.path / "run.lock"
    if finished and lock_file.exists():
        removals.append(Removal(run_id, "lock", str(lock_file)))

    report.removed += removals
    if report.dry_run:
        return
    for removal in removals:
        if removal.kind == "worktree":
            git.worktree_remove(Path(removal.what))
        elif removal.kind in ("tmp", "lock"):
            Path(removal.what).unlink(missing_ok=True)
    git.delete_refs({r.what: refs[r.what] for r in removals if r.kind == "ref"})
    for directory in (run_dir.worktrees, legacy, run_dir.tmp, run_dir.worktrees.parent):
        if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
            directory.rmdir()


def awaiting_choice(records: list[dict[str, Any]]) -> list[str]:
    """The units of a run that ended awaiting a choice and were not picked since (a
    pick's ``unit_finished`` comes after the run's)."""
    last = {str(r["unit"]): r["status"] for r in records if r["event"] == "unit_finished"}
    return [unit for unit, status in last.items() if status == "awaiting_choice"]


def _known_run_ids(state: StateDir) -> set[str]:
    ids: set[str] = set()
    for parent in (state.runs, state.root / "worktrees"):
        if parent.is_dir():
            ids |= {p.name for p in parent.iterdir() if p.is_dir()}
    return ids


def _wtmesh_refs_by_run(git: Git) -> dict[str, dict[str, str]]:
    by_run: dict[str, dict[str, str]] = {}
    for ref, sha in git.list_refs("refs/wtmesh/").items():
        run_id = ref.split("/")[2]
        by_run.setdefault(run_id, {})[ref] = sha
    return by_run
