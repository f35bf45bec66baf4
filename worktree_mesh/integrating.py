"""What landing work in the user's repository takes, built one way for ``wtmesh run`` and
for ``wtmesh pick`` (SPEC 12): the sandbox proofs run in, the guard that watches the
repository when they run unconfined, and the integrator. Also a unit's work read back
from its result ref, which both a resumed run and a pick integrate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import diffs
from . import sandbox as sandbox_mod
from .errors import EXIT_ENVIRONMENT, EXIT_OK, EXIT_UNITS_FAILED
from .git import Git, Sha
from .integrator import Integrator, target_worktree
from .plan import Unit
from .repo_guard import RepoGuard
from .run_options import RunOptions
from .sandbox import Sandbox
from .state import RunDir, StateDir, worktrees_home
from .unit_runner import UnitWork

Report = Callable[..., None]


@dataclass
class Integration:
    integrator: Integrator
    sandbox: Sandbox | None  # None: lanes, setup and proofs run unconfined
    guard: RepoGuard | None  # None when sandboxed: the repository is read-only to them
    options: RunOptions

    def watch_repo(self) -> None:
        """The fingerprint lanes and proofs are checked against: taken with the run's lock
        held and before any of them starts. The index watched is the one the integrator
        keeps at the target (commit_first, the target checked out)."""
        if self.guard is None:
            return
        watched = None
        if self.options.delivery_mode == "commit_first" and \
                self.integrator.left_behind is None:
            watched = target_worktree(self.integrator.git, self.integrator.target_ref)
        self.guard.snapshot(index_of=watched)

    @property
    def not_followed(self) -> bool:
        """The user's worktree did not follow the target: the run ends with exit 3."""
        return self.integrator.stranded or self.integrator.left_behind is not None

    def exit_code(self, states: Iterable[str]) -> int:
        """The run's exit code (SPEC 6), from its units' states."""
        if self.not_followed:
            return EXIT_ENVIRONMENT
        failed = any(state not in ("integrated", "no_diff") for state in states)
        return EXIT_UNITS_FAILED if failed else EXIT_OK

    def landing_fields(self, head: Sha | None) -> dict[str, Any]:
        """The summary's word on where the landings are when the worktree did not
        follow: the stranded branch, and what is in the worktree's way."""
        fields: dict[str, Any] = {}
        if self.integrator.stranded:
            fields["stranded_ref"] = self.integrator.stranded_ref[len("refs/heads/"):]
        not_brought_along = self.integrator.not_brought_along(head)
        if not_brought_along is not None:
            fields["not_brought_along"] = not_brought_along
        return fields

    def undo_unattributed(self, report: Report) -> None:
        """What changed while no lane's check looked (a proof, a process a lane left
        behind) is undone, and the ledger says what it was."""
        if self.guard is None:
            return
        touched = self.guard.restore()
        if touched:
            report("warning", message="the repository was changed outside wtmesh while no "
                   "lane's check could tell which (a proof, or a process a lane left "
                   f"running); undone: {'; '.join(touched)}", changed=touched)


def build(options: RunOptions, git: Git, *, run_id: str, state: StateDir, run_dir: RunDir,
          report: Report) -> Integration:
    """The sandbox, the repository guard and the integrator of run ``run_id``, as its
    options say (patch_first without a patch directory: the run's own); and git asked
    now, before any lane could change it, who commits and what wtmesh's private git dirs
    need to know."""
    repo = options.repo.toplevel or git.common_dir
    sandbox = sandbox_mod.for_run(
        options.sandbox, state_dir=state.root, worktrees_root=run_dir.worktrees.parent,
        worktrees_home=worktrees_home(), repo=repo, common_dir=git.common_dir,
        plan_dir=options.plan.plan_dir, writable=options.plan.sandbox_writable)
    guard = None if sandbox is not None else _repo_guard(git, options, run_id, state)
    patch_dir = options.patch_dir
    if options.delivery_mode == "patch_first" and patch_dir is None:
        patch_dir = run_dir.default_patch_dir
    integrator = Integrator(
        git=git, plan=options.plan, run_id=run_id, state=state, run_dir=run_dir,
        delivery_mode=options.delivery_mode, target=options.target, base=options.base,
        repo=repo, patch_dir=patch_dir, lock_timeout_s=options.lock_timeout_s,
        report=report, batched=options.batch != 1, guard=guard, sandbox=sandbox)
    git.identity_env()
    git.private  # noqa: B018 - created once, shared with the lanes' runner
    return Integration(integrator, sandbox, guard, options)


def _repo_guard(git: Git, options: RunOptions, run_id: str, state: StateDir) -> RepoGuard:
    """Lanes run unsandboxed, so what they change in the user's repository outside their
    worktrees is found and undone after each (SPEC 10). Not watched: what wtmesh moves
    itself (its refs of other runs, stranded branches, and the target in commit_first,
    which the integrator moves; the registrations of worktrees of earlier versions,
    which gc removes); this run's own refs are watched against what it wrote."""
    ignored = ["refs/wtmesh/", "refs/heads/wtmesh/"]
    if options.delivery_mode == "commit_first":
        ignored.append(f"refs/heads/{options.target}")
    return RepoGuard(git, own_refs=f"refs/wtmesh/{run_id}/", ignore_refs=ignored,
                     own_worktrees=[state.root / "worktrees"])  # legacy_worktrees


def work_from_result(git: Git, run_dir: RunDir, unit: Unit, result: Sha, attempts: int,
                     trailers: Sequence[str] = (),
                     notes: str = "lanes finished before the interruption") -> UnitWork:
    """A unit's finished work, read back from its result ref (whose parent is where its
    lanes started): its diff collected again and checked against the unit's scope;
    ``notes`` say where it comes from."""
    start = git.resolve_commit(f"{result}^")
    assert start is not None
    diff_path = run_dir.unit_dir(unit.id) / "unit.diff"
    unit_diff = diffs.collect(git, start, result, unit.scope, diff_path)
    status, code = "accepted", None
    if unit_diff.empty:
        status, code, notes = "no_diff", None, "the lanes changed nothing"
    elif unit_diff.violations:
        status, code, notes = "failed", "scope_violation", "; ".join(unit_diff.violations)
    return UnitWork(unit.id, status, code, notes, start, result, unit_diff, diff_path,
                    max(attempts, 1), (), 0.0, tuple(trailers))
