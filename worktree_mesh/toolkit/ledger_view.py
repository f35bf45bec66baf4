"""``ledger`` (SPEC 7): keep only what "occurred", from a payload or from a run's ledger.

A value occurred unless it is null, false, a number <= 0, an empty string, ``"none"``,
or an empty array or object; the keys kept stay in input order.

``run_summary`` reads a run's real ledger (``<git-common-dir>/wtmesh/runs/<id>/ledger.jsonl``)
into one flat object the filter then applies to:

``run_id``, ``delivery_mode``, ``target``, ``base``, ``head`` (the landing ref's tip when the
run finished), ``integrated``, ``no_diff``, ``rejected``, ``failed``, ``skipped`` (unit ids
in plan order), ``unfinished`` (ids without a ``unit_finished`` yet), ``failure_codes``
(``{unit: code}``), ``counts`` (units per state), ``finished``, ``interrupted`` (the last
attempt was interrupted and the run has not finished since), ``resumed`` (times resumed),
``stranded`` (commits left on ``wtmesh/<run>/integrated``), ``backpressure`` (the
``max_active`` changes the run recorded), ``exit_code`` (null until the run finished).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import ledger as ledger_mod
from ..errors import EnvironmentRefused, UsageError
from ..git import NotARepository, discover
from ..state import StateDir

UNIT_STATES = ("pending", "running", "integrated", "no_diff", "rejected", "failed", "skipped")
FINAL = ("integrated", "no_diff", "rejected", "failed", "skipped")


def occurred(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return value is True
    if isinstance(value, (int, float)):
        return value > 0
    if isinstance(value, str):
        return value != "" and value != "none"
    if isinstance(value, (list, dict)):
        return len(value) > 0
    return True


def filter_events(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise UsageError(f"$: expected a JSON object, got {type(payload).__name__}")
    return {"command": "ledger",
            "events": {key: value for key, value in payload.items() if occurred(value)}}


def run_summary(run_id: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    started = next((r for r in records if r.get("event") == "run_started"), None)
    if started is None:
        raise UsageError(f"run {run_id}: its ledger has no run_started event")
    order = list(started.get("units") or [])
    status: dict[str, str] = {}
    codes: dict[str, str] = {}
    finished: Mapping[str, Any] | None = None
    interrupted = False
    resumed = 0
    backpressure = []
    for record in records:
        event = record.get("event")
        if event == "unit_finished":
            unit = str(record.get("unit"))
            status[unit] = str(record.get("status"))
            if unit not in order:
                order.append(unit)
            if record.get("failure_code"):
                codes[unit] = str(record["failure_code"])
            else:
                codes.pop(unit, None)
        elif event == "run_finished":
            finished, interrupted = record, False
        elif event == "run_interrupted":
            interrupted = True
        elif event == "run_resumed":
            resumed += 1
            interrupted = False
        elif event == "backpressure":
            backpressure.append({k: record[k] for k in ("unit", "old", "new", "reason")
                                 if k in record})
    counts = {state: 0 for state in UNIT_STATES}
    for unit in order:
        state = status.get(unit, "pending")
        counts[state if state in counts else "failed"] += 1
    summary: dict[str, Any] = {
        "run_id": run_id,
        "delivery_mode": started.get("delivery_mode"),
        "target": started.get("target"),
        "base": started.get("base"),
        "head": finished.get("head") if finished else None,
    }
    for state in FINAL:
        summary[state] = [u for u in order if status.get(u) == state]
    summary.update({
        "unfinished": [u for u in order if u not in status],
        "failure_codes": {u: codes[u] for u in order if u in codes},
        "counts": counts,
        "finished": finished is not None,
        "interrupted": interrupted and finished is None,
        "resumed": resumed,
        "stranded": bool(finished.get("stranded")) if finished else False,
        "backpressure": backpressure,
        "exit_code": finished.get("exit_code") if finished else None,
    })
    return summary


def read_run(repo: Path | None, run_id: str) -> list[dict[str, Any]]:
    """The records of a run's ledger, in the repository containing ``repo`` (default: the
    current directory)."""
    try:
        info = discover((repo or Path.cwd()).resolve())
    except NotARepository as exc:
        raise EnvironmentRefused(str(exc)) from None
    path = StateDir.for_common_dir(info.common_dir).existing_run(run_id).ledger
    try:
        return ledger_mod.read(path)
    except (OSError, ValueError) as exc:
        raise EnvironmentRefused(f"cannot read the ledger of run {run_id}: {exc}") from None
