"""Running the proof on exactly one candidate commit, in the run's integration worktree.

A proof that fails, times out, moves HEAD or leaves tracked files modified is a failure:
what it proved would not be what lands. Verdicts are kept by (tree, command, timeout):
the proof of a tree already proven or failed is not run again — a batch being bisected,
or a chain rebuilt after a unit was taken out, revisits trees it has seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import faults, proc
from .git import Git, Sha, clean_env
from .integration_worktree import IntegrationWorktree
from .lanes import render
from .plan import Plan, Unit
from .prepare import SetupFailed, prepare
from .sandbox import Confinement, Sandbox
from .state import RunDir, safe_name

Report = Callable[..., None]


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | skipped
    notes: str
    duration_s: float


class Prover:
    def __init__(self, *, git: Git, plan: Plan, run_id: str, run_dir: RunDir, repo: Path,
                 worktree: IntegrationWorktree, report: Report,
                 sandbox: Sandbox | None = None) -> None:
        self.git = git
        self.sandbox = sandbox  # None: proofs run unconfined
        self.plan = plan
        self.run_id = run_id
        self.run_dir = run_dir
        self.repo = repo
        self.worktree = worktree
        self.report = report
        self._verdicts: dict[tuple[str, str, float], Verdict] = {}
        self.last_duration_s = 0.0  # of the last proof that ran (not a kept verdict)

    @property
    def path(self) -> Path:
        return self.worktree.path

    def prove(self, unit: Unit, candidate: Sha, tree: Sha, units: Sequence[str],
              of: str | None = None, log_name: str = "proof.log") -> Verdict:
        """The proof of ``candidate`` (whose tree is ``tree``), whose tip unit is ``unit``;
        ``units`` are the units whose changes it holds on top of the landed head. ``of``:
        the consensus candidate it proves (its log is that candidate's); ``log_name``: the
        log's name in the unit's directory otherwise."""
        said = {"unit": unit.id, **({"of": of} if of else {})}
        if unit.proof_command is None:
            skipped = Verdict("skipped", "no proof command", 0.0)
            self.report("proof_finished", **said, status=skipped.status, duration_s=0.0,
                        notes=skipped.notes)
            return skipped
        key = self._key(unit, tree)
        cached = self._verdicts.get(key)
        if cached is not None:
            self.report("proof_finished", **said, status=cached.status, duration_s=0.0,
                        notes=cached.notes, cached=True)
            return cached
        self.report("proof_started", **said, candidate=candidate, units=list(units))
        log = self.run_dir.unit_dir(unit.id) / (
            f"candidates/{safe_name(of)}/proof.log" if of else log_name)
        verdict = self._run(unit, candidate, tree, log)
        self.last_duration_s = verdict.duration_s
        self.report("proof_finished", **said, status=verdict.status,
                    duration_s=round(verdict.duration_s, 3), notes=verdict.notes)
        self._verdicts[key] = verdict
        return verdict

    def prove_base(self, unit: Unit, base: Sha, tree: Sha, log: Path) -> Verdict:
        """``unit``'s proof on the run's base commit (whose tree is ``tree``), logged to
        ``log``. Its verdict is kept as any other: a candidate whose tree is the base's
        is not proven again."""
        key = self._key(unit, tree)
        if key not in self._verdicts:
            self._verdicts[key] = self._run(unit, base, tree, log)
        return self._verdicts[key]

    @staticmethod
    def _key(unit: Unit, tree: Sha) -> tuple[str, str, float]:
        return (tree, repr(unit.proof_command), unit.proof_timeout_s)

    def _run(self, unit: Unit, candidate: Sha, tree: Sha, log: Path) -> Verdict:
        assert unit.proof_command is not None
        log.parent.mkdir(parents=True, exist_ok=True)
        self.worktree.place(candidate, tree)
        if not self.worktree.prepared:
            env = self._env(unit, candidate)
            try:
                prepare(self.git, self.plan.setup, repo=self.repo, worktree=self.path,
                        placeholders=self._placeholders(unit), env=env,
                        log=self.run_dir.path / "integration-setup.log",
                        confinement=self._confine(env))
            except SetupFailed as exc:
                self.worktree.forget()
                return Verdict("fail", str(exc), 0.0)
            self.worktree.prepared = True
        env = self._env(unit, candidate)
        done = proc.run_logged(render(unit.proof_command, self._placeholders(unit)),
                               cwd=self.path, env=env,
                               stdout_path=log, stderr_path=log, timeout_s=unit.proof_timeout_s,
                               on_spawn=lambda _pid: faults.point("proof"),
                               confinement=self._confine(env))
        if done.start_error or done.timed_out or done.returncode != 0:
            self.worktree.forget()  # whatever it did there, the next use checks out afresh
        if done.start_error:
            return Verdict("fail", f"proof could not start: {done.start_error}",
                           done.duration_s)
        if done.timed_out:
            return Verdict("fail", f"proof timed out after {unit.proof_timeout_s:g}s",
                           done.duration_s)
        if done.returncode != 0:
            return Verdict("fail", f"proof exited {done.returncode} (log: {log})",
                           done.duration_s)
        tampered = self.worktree.after_proof(candidate)
        if tampered:
            return Verdict("fail", tampered, done.duration_s)
        return Verdict("pass", "", done.duration_s)

    def _confine(self, env: dict[str, str]) -> Confinement | None:
        """A proof may write the integration worktree only, so that no lane (nor a
        daemon one started) can touch the tree it proves."""
        if self.sandbox is None:
            return None
        return self.sandbox.confine(self.path, env=env)

    def _placeholders(self, unit: Unit) -> dict[str, str]:
        return {"id": unit.id, "objective": unit.objective, "plan_dir": str(self.plan.plan_dir),
                "repo": str(self.repo), "worktree": str(self.path), "run_id": self.run_id}

    def _env(self, unit: Unit, candidate: str) -> dict[str, str]:
        env = clean_env()
        env.update({"WTMESH_RUN_ID": self.run_id, "WTMESH_UNIT_ID": unit.id,
                    "WTMESH_LANE": "proof", "WTMESH_WORKTREE": str(self.path),
                    "WTMESH_REPO": str(self.repo), "WTMESH_PLAN_DIR": str(self.plan.plan_dir),
                    "WTMESH_CANDIDATE_SHA": candidate, "PWD": str(self.path)})
        return env
