"""The proof on the run's base, once per distinct proof command of its units.

The base proven is where the units land: the target's head as the run starts (the base
itself, unless ``--base`` names an older commit). It runs on the integration thread
while the first units' lanes run: it adds no wait of its own. A base that fails its own
proof would fail every unit's proof after its lanes had spent their time; the run stops
instead (exit 3), and what each unit ends with says so. A verdict is kept by tree
(``Prover.prove_base``): a candidate whose tree is the base's is not proven again.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from . import proc
from .git import Sha
from .plan import Unit
from .proof import Prover

Report = Callable[..., None]


def key(command: Any, timeout_s: float) -> str:
    """One proof, as the ledger can say it again (a command reads back as a list)."""
    return json.dumps([list(command) if isinstance(command, tuple) else command, timeout_s])


def distinct(units: Iterable[Unit]) -> list[Unit]:
    """The first unit of each distinct (proof command, timeout); units with no proof
    have none to run."""
    seen: dict[str, Unit] = {}
    for unit in units:
        if unit.proof_command is not None:
            seen.setdefault(key(unit.proof_command, unit.proof_timeout_s), unit)
    return list(seen.values())


def passed_before(records: Iterable[dict[str, Any]]) -> set[str]:
    """The proofs the ledger says passed on the base of this run: a resumed run does not
    run them again (units that landed since were proven on their own trees)."""
    return {key(r["command"], r["timeout_s"]) for r in records
            if r["event"] == "base_proof" and r.get("status") == "pass"}


def prove(prover: Prover, units: Sequence[Unit], base: Sha, report: Report,
          passed: Collection[str] = ()) -> str | None:
    """Run each distinct proof of ``units`` on ``base``, but those in ``passed``; why
    the base fails, or None. It stops at the first that fails."""
    for n, unit in enumerate(distinct(units), 1):
        command = unit.proof_command
        assert command is not None
        said = {"base": base, "command": list(command) if isinstance(command, tuple)
                else command, "timeout_s": unit.proof_timeout_s}
        if key(command, unit.proof_timeout_s) in passed:
            report("base_proof", **said, status="pass", duration_s=0.0,
                   notes="passed before the interruption: not run again", kept=True)
            continue
        log = prover.run_dir.path / ("base-proof.log" if n == 1 else f"base-proof-{n}.log")
        try:
            verdict = prover.prove_base(unit, base, prover.git.tree_of(base), log)
        except proc.CommandError as exc:
            # The integration worktree could not be made: the first landing meets that
            # and says so, as after a failed warm-up.
            report("base_proof", **said, status="skipped", duration_s=0.0,
                   notes=f"could not place the base in the integration worktree: {exc}")
            return None
        shown = command if isinstance(command, str) else shlex.join(command)
        notes = "" if verdict.status == "pass" else (
            f"the base {base[:12]} fails its own proof `{shown}`: {verdict.notes}"
            + ("" if str(log) in verdict.notes else f" (log: {log})"))
        report("base_proof", **said, status=verdict.status,
               duration_s=round(verdict.duration_s, 3), notes=notes, log=str(log))
        if verdict.status != "pass":
            return notes
    return None
