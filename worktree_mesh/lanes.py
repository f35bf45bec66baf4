"""Run one lane (coder or fixer) in a worktree and read its result (the output contract).

A lane is any command. It gets the SPEC 3.3 environment, runs in its own process group
with stdin closed, logs to files, and may write ``WTMESH_RESULT_JSON``. Unit fields reach
a shell only through placeholders, and those are shell-quoted.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import proc
from . import usage as usage_mod
from .plan import Command
from .sandbox import Confinement
from .usage import Usage

MESH_FAILURE_CODES = (
    "safety_regression_risk", "proof_missing", "invalid_output_schema",
    "scope_overlap_conflict", "timeout_retry_exhausted", "delivery_blocked",
    "requires_clarification", "tooling_unavailable",
)
RUNNER_FAILURE_CODES = (
    "lane_failed", "scope_violation", "integration_conflict", "proof_failed",
    "dependency_failed", "interrupted", "budget_exhausted",
)
FAILURE_CODES = MESH_FAILURE_CODES + RUNNER_FAILURE_CODES
DECISIONS = ("accept", "reject", "no_diff")
PROOF_STATUSES = ("pass", "fail", "skipped")

PLACEHOLDERS = ("id", "objective", "plan_dir", "repo", "worktree", "run_id")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def render(command: Command, values: Mapping[str, str]) -> Command:
    """Fill placeholders: quoted for the shell in a string command, raw in an argv list.
    Braces that are not one of our placeholders (``${HOME}``, JSON) are left alone."""
    if isinstance(command, str):
        return _render_shell(command, values)
    return tuple(_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in command)


def _render_shell(command: str, values: Mapping[str, str]) -> str:
    """Quote each value for the quoting context its placeholder stands in, so that
    ``{objective}``, ``"{objective}"`` and ``'{objective}'`` all deliver it as plain text:
    a value never reaches the shell as code, however the command author quoted it."""
    out: list[str] = []
    context = ""  # "" unquoted, "'" inside single quotes, '"' inside double quotes
    i = 0
    while i < len(command):
        match = _PLACEHOLDER.match(command, i)
        if match:
            out.append(_quote_for(context, values[match.group(1)]))
            i = match.end()
            continue
        char = command[i]
        if char == "\\" and context != "'" and i + 1 < len(command):
            out.append(command[i:i + 2])
            i += 2
            continue
        if char in "'\"" and context in ("", char):
            context = "" if context == char else char
        out.append(char)
        i += 1
    return "".join(out)


def _quote_for(context: str, value: str) -> str:
    if context == "'":
        return value.replace("'", "'\\''")  # close, escaped quote, reopen
    if context == '"':
        # Inside double quotes only $, `, " and \ are special.
        return "".join("\\" + c if c in '$`"\\' else c for c in value)
    return shlex.quote(value)


@dataclass(frozen=True)
class LaneRun:
    """Everything one lane attempt needs; nothing of the scheduler or integrator."""

    lane: str
    unit_id: str
    attempt: int
    command: Command
    cwd: Path
    env: Mapping[str, str]
    timeout_s: float
    result_path: Path
    stdout_log: Path
    stderr_log: Path
    confinement: Confinement | None = None  # the sandbox it runs in; None: not sandboxed


@dataclass(frozen=True)
class LaneResult:
    lane: str
    attempt: int
    decision: str  # accept | reject | no_diff
    failure_code: str | None
    notes: str
    proof_status: str | None
    patch: str | None
    exit_code: int | None
    timed_out: bool
    duration_s: float
    pid: int | None
    could_not_start: bool = False
    usage: Usage | None = None  # what the lane said it spent (SPEC 17)
    usage_ignored: str | None = None  # why a usage it wrote was not taken

    @property
    def retryable(self) -> bool:
        """A timeout, or a crash with nothing said, may go better on another attempt."""
        return self.timed_out or self.failure_code == "lane_failed"

    def as_record(self) -> dict[str, Any]:
        return {
            "lane": self.lane, "attempt": self.attempt, "decision": self.decision,
            "failure_code": self.failure_code, "notes": self.notes,
            "proof_status": self.proof_status, "exit_code": self.exit_code,
            "timed_out": self.timed_out, "duration_s": round(self.duration_s, 3),
            "usage": self.usage.record() if self.usage is not None else None,
            **({"usage_ignored": self.usage_ignored} if self.usage_ignored else {}),
        }


class ResultError(ValueError):
    """The lane's result file is not the output contract's shape. What it says it spent
    still counts: the money is gone whatever else the file got wrong."""

    def __init__(self, message: str, usage: Usage | None = None,
                 usage_ignored: str | None = None) -> None:
        super().__init__(message)
        self.usage, self.usage_ignored = usage, usage_ignored


def parse_result(data: bytes, unit_id: str) -> dict[str, Any]:
    """The result file, checked against the output contract. ``usage`` comes back as a
    ``Usage`` (or None), and ``usage_ignored`` says why a malformed one was dropped: a
    wrong usage never fails the unit. It is bookkeeping beside the work, not part of the
    mesh output contract (SPEC 3.4 lists what makes a result invalid, and usage is not
    there); rejecting a good change because a CLI's counters changed shape would throw
    away work already paid for."""
    try:
        result = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"result file is not JSON: {exc}") from None
    if not isinstance(result, dict):
        raise ResultError("result file is not a JSON object")
    result["usage"], result["usage_ignored"] = _usage(result.get("usage"))
    try:
        _check_contract(result, unit_id)
    except ResultError as exc:
        raise ResultError(str(exc), result["usage"], result["usage_ignored"]) from None
    return result


def _usage(value: Any) -> tuple[Usage | None, str | None]:
    if value is None:
        return None, None
    try:
        return usage_mod.parse(value), None
    except usage_mod.UsageProblem as exc:
        return None, str(exc)


def _check_contract(result: dict[str, Any], unit_id: str) -> None:
    if "id" in result and result["id"] != unit_id:
        raise ResultError(f"result is for unit {result['id']!r}, not {unit_id!r}")
    decision = result.get("decision")
    if decision not in DECISIONS:
        raise ResultError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    status = result.get("proof_status")
    if status is not None and status not in PROOF_STATUSES:
        raise ResultError(f"proof_status {status!r} is not one of {', '.join(PROOF_STATUSES)}")
    code = result.get("failure_code")
    if code is not None:
        if code not in FAILURE_CODES:
            raise ResultError(f"failure_code {code!r} is not in the taxonomy")
        if decision == "accept":
            raise ResultError(f"failure_code {code!r} given with decision 'accept'")
    for key in ("notes", "patch"):
        if result.get(key) is not None and not isinstance(result[key], str):
            raise ResultError(f"{key} must be a string")


def run_lane(run: LaneRun, on_spawn: Callable[[int], None] | None = None) -> LaneResult:
    run.result_path.unlink(missing_ok=True)
    done = proc.run_logged(
        run.command, cwd=run.cwd, env=run.env, stdout_path=run.stdout_log,
        stderr_path=run.stderr_log, timeout_s=run.timeout_s, on_spawn=on_spawn,
        confinement=run.confinement,
    )

    def ended(decision: str, code: str | None, notes: str, result: dict[str, Any] | None = None
              ) -> LaneResult:
        result = result or {}
        return LaneResult(run.lane, run.attempt, decision, code, notes,
                          result.get("proof_status"), result.get("patch"), done.returncode,
                          done.timed_out, done.duration_s, done.pid,
                          could_not_start=done.start_error is not None,
                          usage=result.get("usage"), usage_ignored=result.get("usage_ignored"))

    if done.start_error is not None:
        return ended("reject", "tooling_unavailable", done.start_error)
    if done.timed_out:
        return ended("reject", "timeout_retry_exhausted",
                     f"{run.lane} timed out after {run.timeout_s:g}s")
    if not run.result_path.exists():
        if done.returncode == 0:
            return ended("accept", None, "")
        return ended("reject", "lane_failed", f"{run.lane} exited {done.returncode}")
    try:
        result = parse_result(run.result_path.read_bytes(), run.unit_id)
    except ResultError as exc:
        return ended("reject", "invalid_output_schema", str(exc),
                     {"usage": exc.usage, "usage_ignored": exc.usage_ignored})
    return ended(result["decision"], result.get("failure_code"), result.get("notes") or "", result)
