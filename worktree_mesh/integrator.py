"""The integrator: the only code that writes refs the user sees.

For each accepted unit, in plan order and under the repository's integrator lock: apply
its diff onto the current head in a temporary index (three-way where the plain apply
fails), commit that tree as a candidate, run the proof on exactly that commit in the
run's integration worktree, and only then land it — ``commit_first`` by moving the
target with a compare-and-swap (bringing the user's checked-out worktree along first),
``patch_first`` by moving a scratch ref and writing a ``git format-patch`` file. The
head never points at a tree whose proof failed, and what lands is the tree the proof ran on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from . import faults, proc
from .errors import EnvironmentRefused
from .git import Git, Sha, clean_env
from .lanes import render
from .plan import Plan, Unit
from .prepare import SetupFailed, prepare
from .state import RunDir, StateDir, scratch_ref, stranded_ref, write_atomic
from .unit_runner import UnitWork

Report = Callable[..., None]

# How often a landing is retried when someone else moves the target between our read and
# our compare-and-swap.
MAX_LANDING_RACES = 5


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


def commit_message(unit: Unit, run_id: str) -> str:
    lines = unit.objective.strip().splitlines() or [unit.id]
    subject = f"{unit.id}: {lines[0].strip()}"
    body = "\n".join(lines[1:]).strip()
    parts = [subject]
    if body:
        parts.append(body)
    parts.append(f"Wtmesh-Run: {run_id}\nWtmesh-Unit: {unit.id}")
    return "\n\n".join(parts) + "\n"


def target_worktree(git: Git, target_ref: str) -> Path | None:
    """The worktree that has the target branch checked out, if any."""
    for entry in git.worktrees():
        if entry.branch == target_ref and not entry.bare:
            return entry.path
    return None


class Integrator:
    def __init__(self, *, git: Git, plan: Plan, run_id: str, state: StateDir, run_dir: RunDir,
                 delivery_mode: str, target: str, base: Sha, repo: Path,
                 patch_dir: Path | None, lock_timeout_s: float, report: Report) -> None:
        self.git = git
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
        self.worktree = run_dir.worktrees / "integration"
        self._worktree_ready = False
        # Where landings go: the target (commit_first), or a ref of this run's own
        # (patch_first, and commit_first once the user's worktree could not follow).
        self.scratch_ref = scratch_ref(run_id)
        self.stranded_ref = stranded_ref(run_id)
        self.landing_ref = self.target_ref if delivery_mode == "commit_first" else self.scratch_ref
        self.stranded = False

    # -- lock --------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
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
                raise EnvironmentRefused(
                    f"timed out after {self.lock_timeout_s:g}s waiting for the integrator "
                    f"lock held by {_describe_owner(holder)}; this run can be resumed "
                    f"with --resume {self.run_id}") from None
        try:
            write_atomic(owner_file, json.dumps({"run_id": self.run_id,
                                                 "pid": os.getpid()}).encode())
            yield
        finally:
            lock.release()

    # -- start -------------------------------------------------------------------------

    def check_start(self) -> None:
        """commit_first refuses to start when the target's worktree has uncommitted changes
        to tracked files: bringing it along later could not keep them safe."""
        if self.mode != "commit_first":
            return
        if self.git.read_ref(self.target_ref) is None:
            raise EnvironmentRefused(f"target branch {self.target_ref[11:]!r} does not exist")
        worktree = target_worktree(self.git, self.target_ref)
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

    def integrate(self, unit: Unit, work: UnitWork) -> Landing:
        assert work.diff_path is not None, "only accepted units with a diff integrate"
        with self.locked():
            for _race in range(MAX_LANDING_RACES):
                landing = self._integrate_once(unit, work.diff_path)
                if landing is not None:
                    return landing
            return Landing(unit.id, "failed", "delivery_blocked",
                           "the target kept moving under the integrator", None, None, None, 0.0)

    def _integrate_once(self, unit: Unit, diff_path: Path) -> Landing | None:
        head = self.git.read_ref(self.landing_ref)
        if head is None:
            raise EnvironmentRefused(f"{self.landing_ref} disappeared during the run")
        self.report("apply_started", unit=unit.id, onto=head)
        self._ensure_worktree(head)
        index = self.run_dir.tmp / f"index-{os.getpid()}"
        index.parent.mkdir(parents=True, exist_ok=True)  # removed when a run ends
        try:
            tree = self.git.apply_to_tree(head, diff_path, index, cwd=self.worktree)
        finally:
            index.unlink(missing_ok=True)
        if tree is None:
            return Landing(unit.id, "failed", "integration_conflict",
                           f"the change does not apply onto {head[:12]}, even three-way",
                           None, None, None, 0.0)
        if tree == self.git.tree_of(head):
            return Landing(unit.id, "no_diff", None, "the change is already on the target",
                           None, None, None, 0.0)
        candidate = self.git.commit_tree(tree, [head], commit_message(unit, self.run_id))
        faults.point("apply")
        self.report("proof_started", unit=unit.id, candidate=candidate)
        proof_status, proof_notes, proof_s = self._prove(unit, candidate)
        self.report("proof_finished", unit=unit.id, status=proof_status,
                    duration_s=round(proof_s, 3), notes=proof_notes)
        if proof_status == "fail":
            return Landing(unit.id, "failed", "proof_failed", proof_notes, None, None,
                           proof_status, proof_s)
        if not self._land(head, candidate):
            return None  # the landing ref moved under us: integrate again onto it
        faults.point("land")
        patch = self._emit_patch(unit, candidate) if self.mode == "patch_first" else None
        self.report("landed", unit=unit.id, commit=candidate, ref=self.landing_ref, patch=patch)
        return Landing(unit.id, "integrated", None, "", candidate, patch, proof_status, proof_s)

    # -- proof -------------------------------------------------------------------------

    def _ensure_worktree(self, head: Sha) -> None:
        if not self.worktree.exists():
            self.worktree.parent.mkdir(parents=True, exist_ok=True)
            self.git.worktree_add(self.worktree, head)
            self._worktree_ready = False

    def _placeholders(self, unit: Unit) -> dict[str, str]:
        return {"id": unit.id, "objective": unit.objective, "plan_dir": str(self.plan.plan_dir),
                "repo": str(self.repo), "worktree": str(self.worktree), "run_id": self.run_id}

    def _proof_env(self, unit: Unit, candidate: str) -> dict[str, str]:
        env = clean_env()
        env.update({"WTMESH_RUN_ID": self.run_id, "WTMESH_UNIT_ID": unit.id,
                    "WTMESH_LANE": "proof", "WTMESH_WORKTREE": str(self.worktree),
                    "WTMESH_REPO": str(self.repo), "WTMESH_PLAN_DIR": str(self.plan.plan_dir),
                    "WTMESH_CANDIDATE_SHA": candidate, "PWD": str(self.worktree)})
        return env

    def _prove(self, unit: Unit, candidate: Sha) -> tuple[str, str, float]:
        """Run the proof on exactly ``candidate``. ``fail`` also when it times out or leaves
        tracked files modified (then what it proved is not what would land)."""
        if unit.proof_command is None:
            return "skipped", "no proof command", 0.0
        log = self.run_dir.unit_dir(unit.id) / "proof.log"
        # Untracked files of an earlier proof go; ignored ones (caches, the setup's
        # virtualenv) stay, as they would in a developer's checkout.
        self.git.remove_stale_index_lock(self.worktree)
        self.git.run("checkout", "-q", "--detach", "--force", candidate, cwd=self.worktree)
        self.git.run("clean", "-q", "-ffd", cwd=self.worktree)
        if not self._worktree_ready:
            try:
                prepare(self.git, self.plan.setup, repo=self.repo, worktree=self.worktree,
                        placeholders=self._placeholders(unit),
                        env=self._proof_env(unit, candidate),
                        log=self.run_dir.path / "integration-setup.log")
            except SetupFailed as exc:
                return "fail", str(exc), 0.0
            self._worktree_ready = True
        done = proc.run_logged(render(unit.proof_command, self._placeholders(unit)),
                               cwd=self.worktree, env=self._proof_env(unit, candidate),
                               stdout_path=log, stderr_path=log, timeout_s=unit.proof_timeout_s,
                               on_spawn=lambda _pid: faults.point("proof"))
        if done.start_error:
            return "fail", f"proof could not start: {done.start_error}", done.duration_s
        if done.timed_out:
            return "fail", f"proof timed out after {unit.proof_timeout_s:g}s", done.duration_s
        if done.returncode != 0:
            return "fail", f"proof exited {done.returncode} (log: {log})", done.duration_s
        if self.git.head_of(self.worktree) != candidate:
            return "fail", "proof moved HEAD of the integration worktree", done.duration_s
        dirty = self.git.tracked_changes(self.worktree)
        if dirty:
            first = dirty.split(b"\0")[0].decode("utf-8", "surrogateescape").strip()
            return "fail", f"proof left tracked files modified ({first})", done.duration_s
        return "pass", "", done.duration_s

    # -- landing -----------------------------------------------------------------------

    def _land(self, head: Sha, candidate: Sha) -> bool:
        """Move the landing ref from ``head`` to ``candidate``; False when it moved first."""
        if self.landing_ref != self.target_ref:
            return self.git.update_ref(self.landing_ref, candidate, head, f"wtmesh {self.run_id}")
        worktree = target_worktree(self.git, self.target_ref)
        if worktree is not None:
            # Recorded first: a crash between here and the swap is undone on resume.
            self.report("bring_along", worktree=str(worktree), old=head, new=candidate)
            moved = self.git.bring_along(worktree, head, candidate)
            if moved.returncode != 0:
                return self._strand(head, candidate, worktree, moved)
            faults.point("bring-along")
        if self.git.update_ref(self.target_ref, candidate, head, f"wtmesh {self.run_id}"):
            return True
        if worktree is not None:
            # Someone moved the target between our read and our swap: put their worktree
            # back where it was before integrating again onto the new target.
            self.git.bring_along(worktree, candidate, head)
        return False

    def _strand(self, head: Sha, candidate: Sha, worktree: Path,
                moved: proc.Completed) -> bool:
        """The user's worktree cannot follow the target (they changed files it would
        overwrite): leave the target alone and land on wtmesh/<run-id>/integrated."""
        why = moved.stderr.decode("utf-8", "replace").strip().splitlines()
        self.stranded = True
        self.landing_ref = self.stranded_ref
        self.report("stranded", ref=self.stranded_ref, worktree=str(worktree),
                    reason=why[0] if why else "read-tree refused")
        if self.git.read_ref(self.stranded_ref) is None:
            self.git.update_ref(self.stranded_ref, head, None, f"wtmesh {self.run_id}")
        return self.git.update_ref(self.stranded_ref, candidate, head, f"wtmesh {self.run_id}")

    def rewrite_series(self, landed: list[tuple[str, Sha]]) -> dict[str, str]:
        """Write the whole patch series again from the landed commits (after a crash the
        last patch may be missing or torn): patches derive from commits, so this is
        idempotent. Returns each unit's patch file name."""
        assert self.patch_dir is not None
        names: dict[str, str] = {}
        for number, (unit_id, commit) in enumerate(landed, 1):
            names[unit_id] = f"{number:04d}-{unit_id}.patch"
            write_atomic(self.patch_dir / names[unit_id], self.git.format_patch(commit))
        write_atomic(self.patch_dir / "series",
                     "".join(f"{name}\n" for name in names.values()).encode())
        return names

    def _emit_patch(self, unit: Unit, commit: Sha) -> str:
        assert self.patch_dir is not None
        faults.point("patch")
        series = self.patch_dir / "series"
        names = series.read_text("utf-8").splitlines() if series.exists() else []
        name = f"{len(names) + 1:04d}-{unit.id}.patch"
        write_atomic(self.patch_dir / name, self.git.format_patch(commit))
        write_atomic(series, "".join(f"{n}\n" for n in [*names, name]).encode())
        return name

    def close(self) -> None:
        if self.worktree.exists():
            self.git.worktree_remove(self.worktree)


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

