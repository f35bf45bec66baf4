"""A run's options: the command line over the plan over the defaults, checked once; and
for a resumed run, the options it was started with, read back from its ledger."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import plan as plan_mod
from . import sandbox as sandbox_mod
from .errors import EnvironmentRefused, PlanError, UsageError
from .git import Git, RepoInfo, Sha
from .plan import Plan
from .resume import Recovery
from .sandbox import SandboxChoice
from .state import RunDir
from .toolkit.budget import BudgetDecision


@dataclass(frozen=True)
class RunOptions:
    plan: Plan
    repo: RepoInfo
    max_active: int
    delivery_mode: str
    target: str
    base: Sha
    patch_dir: Path | None
    keep_worktrees: bool
    lock_timeout_s: float
    # A budget-aware run: the clamp decision (wtmesh budget's fields); it also turns on
    # backpressure.
    budget: Mapping[str, Any] | None = None
    learnings: Path | None = None  # --learnings FILE
    batch: int = 1  # units integrated under one proof at most; 0: as many as are ready
    report: Path | None = None  # --report FILE: report.md written there too
    # --sandbox over the plan's "sandbox" (default auto), and what it gave here.
    sandbox: SandboxChoice = SandboxChoice("none", None, "sandbox set to none")
    # --max-cost-usd over the plan's max_cost_usd: once spent, no new lane starts.
    max_cost_usd: float | None = None


def resolve_run(plan: Plan, repo: RepoInfo, git: Git, *, target: str | None, base: str | None,
                delivery_mode: str | None, max_active: int | None, patch_dir: Path | None,
                keep_worktrees: bool, lock_timeout_s: float,
                budget: BudgetDecision | None = None,
                learnings: Path | None = None, batch: int = 1,
                report: Path | None = None, sandbox: str | None = None,
                max_cost_usd: float | None = None) -> RunOptions:
    """Command line over plan over defaults; every problem is a usage error (exit 2)."""
    mode = delivery_mode or plan.delivery_mode
    target_name = target or plan.target or repo.head_branch
    if not target_name:
        raise UsageError("no target branch: HEAD is detached; give --target or \"target\"")
    if git.read_ref(f"refs/heads/{target_name}") is None:
        raise UsageError(f"target branch {target_name!r} does not exist")
    base_rev = base or plan.base or f"refs/heads/{target_name}"
    base_sha = git.resolve_commit(base_rev)
    if base_sha is None:
        raise UsageError(f"base {base_rev!r} is not a commit in this repository")
    source = "--delivery" if delivery_mode else "the plan"
    mismatched = [
        f"{plan.path}: $.units[{index}].delivery_mode: unit {u.id!r} says "
        f"{u.labels['delivery_mode']!r} but the run delivers {mode!r} (from {source})"
        for index, u in enumerate(plan.units)
        if u.labels.get("delivery_mode") not in (None, mode)]
    if mismatched:
        raise PlanError(f"{plan.path}: units disagree with the delivery mode",
                        details=mismatched)
    _check_outputs(plan.path, report, learnings)
    wanted = max_active or plan.max_active
    return RunOptions(plan, repo, budget.limit(wanted) if budget else wanted, mode,
                      target_name, base_sha, patch_dir, keep_worktrees, lock_timeout_s,
                      budget.as_dict() if budget else None, learnings, batch, report,
                      choose_sandbox(sandbox or plan.sandbox or sandbox_mod.DEFAULT_MODE),
                      max_cost_usd if max_cost_usd is not None else plan.max_cost_usd)


def choose_sandbox(mode: str) -> SandboxChoice:
    """``--sandbox bwrap`` where bubblewrap cannot run refuses the run (exit 3)."""
    try:
        return sandbox_mod.choose(mode)
    except sandbox_mod.SandboxUnavailable as exc:
        raise EnvironmentRefused(str(exc)) from None


def resumed_options(run_dir: RunDir, repo: RepoInfo, recovery: Recovery, *,
                    keep_worktrees: bool, lock_timeout_s: float,
                    sandbox: str | None = None) -> RunOptions:
    """The options a run was started with, and the plan as it ran (not as it may have
    been edited since). The sandbox is asked for again as it was (or as ``sandbox``
    says): whether it works is this machine's, now."""
    started = recovery.started
    plan = plan_mod.load_as_run(run_dir.plan_copy, Path(started["plan"]))
    patch_dir = started.get("patch_dir")
    learnings = started.get("learnings")
    return RunOptions(plan, repo, started["max_active"], started["delivery_mode"],
                      started["target"], Sha(started["base"]),
                      Path(patch_dir) if patch_dir else None, keep_worktrees, lock_timeout_s,
                      started.get("budget"), Path(learnings) if learnings else None,
                      started.get("batch", 1),
                      Path(started["report"]) if started.get("report") else None,
                      choose_sandbox(sandbox or (started.get("sandbox") or {}).get(
                          "mode", sandbox_mod.DEFAULT_MODE)),
                      started.get("max_cost_usd"))


REPORT_FIRST_LINE = b"# wtmesh run "


def _check_outputs(plan: Path, report: Path | None, learnings: Path | None) -> None:
    """--report and --learnings name files wtmesh will write: refused before the run
    when writing them would destroy something (the plan, each other, a file that is not
    theirs) or could not work (a parent that is a file, no permission)."""
    outputs = [(flag, path) for flag, path in (("--report", report),
                                                ("--learnings", learnings)) if path]
    for flag, path in outputs:
        if path.exists() and plan.exists() and path.samefile(plan):
            raise UsageError(f"{flag} {path} is the plan itself")
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory")
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: cannot create files in {ancestor}")
    if report and learnings and report.resolve() == learnings.resolve():
        raise UsageError(f"--report and --learnings are the same file: {report}")
    if report and report.is_file() and report.stat().st_size:
        with open(report, "rb") as fh:
            if not fh.read(len(REPORT_FIRST_LINE)) == REPORT_FIRST_LINE:
                raise UsageError(f"--report {report} exists and is not a wtmesh report; "
                                 "it is not overwritten")
    if learnings and learnings.is_file() and learnings.stat().st_size:
        with open(learnings, "rb") as fh:
            first = fh.readline().strip()
        if not first.startswith(b"{"):
            raise UsageError(f"--learnings {learnings} exists and is not a JSONL file of "
                             "learnings; it is not appended to")
