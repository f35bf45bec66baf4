"""``run-csv`` (SPEC 7): a wave CSV, checked, and either prepared or run.

Prepared (no ``--execute``): the output CSV lists each row as ``queued``/``pending`` in the
mesh output contract's columns.

Executed: every row becomes a unit of a plan (its ten fields carried over), the plan runs
through the real ``wtmesh run`` in a subprocess (worktrees, lanes, integrator, ledger), and
the output CSV has the input columns plus, like Codex's CSV agent jobs, ``job_id`` (the
run id), ``item_id`` (the unit id), ``status`` (the unit's final state), ``attempt_count``,
``last_error`` (``failure_code: notes``, empty when the unit integrated or found nothing to
do) and ``result_json`` (the unit's entry of the run summary, with its notes). An input
column with one of those names is replaced.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .. import plan as plan_mod
from ..errors import EnvironmentRefused, PlanError, UsageError, WtmeshError
from . import meshcsv
from .jsonio import same_file
from .ledger_view import read_run

PREPARED_HEADER = ("id", "decision", "proof_status", "failure_code", "notes")
RESULT_COLUMNS = ("job_id", "item_id", "status", "attempt_count", "last_error", "result_json")
# Row fields that are unit labels in a plan; empty cells are left out (the plan's default).
LABELS = ("attempt", "variant", "budget_tier")


def check_paths(csv_path: Path, output_path: Path) -> None:
    if same_file(csv_path, output_path):
        raise UsageError(f"--csv-path and --output-csv-path name the same file "
                         f"({csv_path.resolve()}); the input would be overwritten")


def prepare(wave: meshcsv.WaveCsv, output_path: Path) -> dict[str, Any]:
    meshcsv.write(output_path, PREPARED_HEADER,
                  [[uid, "queued", "pending", "", ""] for uid in wave.ids])
    return {"command": "run_csv", "row_count": len(wave.rows), "csv_path": str(wave.path),
            "output_csv_path": str(output_path), "status": "prepared"}


@dataclass(frozen=True)
class Lanes:
    coder: str
    fixer: str | None = None
    proof: str | None = None


def delivery_of(wave: meshcsv.WaveCsv, delivery: str | None) -> str:
    """The run's delivery mode: ``--delivery``, else the rows' (they must agree)."""
    given = sorted({row["delivery_mode"].strip() for row in wave.rows} - {""})
    if delivery is None and len(given) > 1:
        raise UsageError(f"{wave.path}: rows ask for different delivery modes "
                         f"({', '.join(given)}); give --delivery")
    bad = [g for g in given if g not in plan_mod.DELIVERY_MODES]
    if bad:
        raise UsageError(f"{wave.path}: delivery_mode {bad[0]!r} is not one of "
                         f"{', '.join(plan_mod.DELIVERY_MODES)}")
    mode = delivery or (given[0] if given else "commit_first")
    others = [row["id"] for row in wave.rows if row["delivery_mode"].strip() not in ("", mode)]
    if others:
        raise UsageError(f"{wave.path}: rows {', '.join(others)} carry a delivery_mode other "
                         f"than the run's {mode!r}")
    return mode


def build_plan(wave: meshcsv.WaveCsv, lanes: Lanes, delivery_mode: str,
               max_active: int | None) -> dict[str, Any]:
    units = []
    for row in wave.rows:
        unit: dict[str, Any] = {"id": row["id"], "objective": row["objective"]}
        if row["unit_scope"].strip():
            unit["unit_scope"] = row["unit_scope"]
        unit["constraints"] = row["constraints"]
        unit["invariants"] = row["invariants"]
        if row["proof_command"].strip():
            unit["proof_command"] = row["proof_command"]
        for name in LABELS:
            if row[name].strip():
                unit[name] = row[name].strip()
        units.append(unit)
    lane_specs: dict[str, Any] = {"coder": {"command": lanes.coder}}
    if lanes.fixer:
        lane_specs["fixer"] = {"command": lanes.fixer}
    plan: dict[str, Any] = {"version": 1, "delivery_mode": delivery_mode, "lanes": lane_specs}
    if lanes.proof:
        plan["proof_command"] = lanes.proof
    if max_active:
        plan["max_active"] = max_active
    plan["units"] = units
    return plan


def check_plan(wave: meshcsv.WaveCsv, plan: Mapping[str, Any]) -> None:
    """The plan's problems, in the CSV's terms (line and id, not a temporary file's path)."""
    found = plan_mod.problems(plan)
    if not found:
        return

    def where(match: re.Match[str]) -> str:
        index, field = int(match.group(1)), match.group(2)
        row = f"line {wave.lines[index]} (id {wave.rows[index]['id']!r}):"
        return f"{row} {field}" if field else row

    details = [f"{wave.path}: " + re.sub(r"^\$\.units\[(\d+)\]\.?([^\s:]*):?", where, p)
               for p in dict.fromkeys(found)]
    raise PlanError(f"{wave.path}: rows do not make a valid plan", details=details)


def _run(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``wtmesh run`` with its stderr (progress lines, errors) passed straight through.

    Not ``proc.run``: that captures stderr, and an interrupt must reach the run and let it
    stop cleanly (it is resumable), not kill it. Ctrl-C reaches the child through the
    terminal's process group; a SIGTERM sent to us is forwarded.
    """
    child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                out, _ = child.communicate()
                break
            except KeyboardInterrupt:
                continue  # the run got the same SIGINT; wait for its summary
    finally:
        signal.signal(signal.SIGTERM, previous)
    return child.returncode, out.decode("utf-8", "replace")


def execute(wave: meshcsv.WaveCsv, output_path: Path, *, lanes: Lanes, repo: Path | None,
            delivery: str | None, max_active: int | None) -> tuple[dict[str, Any] | None, int]:
    """Returns the line to print and the exit code (the run's). No line when the run ended
    without a summary (a refusal it has already explained on stderr)."""
    if not wave.rows:
        raise UsageError(f"{wave.path}: no rows to run")
    mode = delivery_of(wave, delivery)
    plan = build_plan(wave, lanes, mode, max_active)
    check_plan(wave, plan)
    with tempfile.TemporaryDirectory(prefix="wtmesh-run-csv-") as tmp:
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan, indent=2) + "\n", "utf-8")
        argv = [sys.executable, "-m", "worktree_mesh", "run", str(plan_path), "--json"]
        if repo is not None:
            argv += ["--repo", str(repo)]
        code, out = _run(argv)
    try:
        summary = json.loads(out)
    except ValueError:
        summary = None
    if not isinstance(summary, dict) or not isinstance(summary.get("units"), list):
        if code == 0:
            raise EnvironmentRefused("wtmesh run exited 0 without printing its summary")
        return None, code
    notes = _notes(repo, str(summary["run_id"]))
    write_results(wave, output_path, summary, notes)
    line = {"command": "run_csv", "row_count": len(wave.rows), "csv_path": str(wave.path),
            "output_csv_path": str(output_path), "status": "executed",
            "run_id": summary["run_id"], "counts": summary.get("counts", {}),
            "exit_code": summary.get("exit_code", code)}
    return line, code


def _notes(repo: Path | None, run_id: str) -> dict[str, str]:
    """Each unit's notes, from the run's ledger (the summary does not carry them)."""
    try:
        records = read_run(repo, run_id)
    except WtmeshError:
        return {}
    return {str(r["unit"]): str(r.get("notes") or "") for r in records
            if r.get("event") == "unit_finished"}


def write_results(wave: meshcsv.WaveCsv, output_path: Path, summary: Mapping[str, Any],
                  notes: Mapping[str, str]) -> None:
    by_id = {u["id"]: u for u in summary["units"]}
    columns = [h for h in wave.header if h not in RESULT_COLUMNS]
    rows = []
    for row in wave.rows:
        unit = by_id.get(row["id"], {})
        code = unit.get("failure_code")
        note = notes.get(row["id"], "")
        last_error = f"{code}: {note}" if code and note else (code or "")
        result = {**unit, "notes": note} if unit else {}
        rows.append([*(row[h] for h in columns), str(summary.get("run_id", "")), row["id"],
                     str(unit.get("status", "")), str(unit.get("attempts", 0)), last_error,
                     json.dumps(result, ensure_ascii=False) if result else ""])
    meshcsv.write(output_path, [*columns, *RESULT_COLUMNS], rows)
