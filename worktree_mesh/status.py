"""``wtmesh status``: what a run did, read back from its ledger and from git.

The record answers the questions of someone coming back to a terminal: is it still
running, what happened to each unit and why (the first line of evidence), and, for a run
that was cut off, what ``--resume`` would do with each unit. The resume answer comes from
``resume.resume_steps``, the same reading ``--resume`` itself acts on.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from . import usage as usage_mod
from .consensus import summary as consensus_summary
from .errors import UsageError
from .git import Git
from .resume import events, is_live, landed_in_git, recover, resume_steps, run_finished
from .state import RunDir, StateDir

_EVIDENCE_BYTES = 4096  # enough for the tail of a log; logs can be huge


def newest_run_id(state: StateDir) -> str:
    ids = state.run_ids()
    if not ids:
        raise UsageError("no wtmesh run in this repository yet")
    return ids[-1]


def run_status(git: Git, state: StateDir, run_id: str | None = None) -> dict[str, Any]:
    run_id = run_id or newest_run_id(state)
    run_dir = state.existing_run(run_id)
    records = events(run_dir)
    started = next((r for r in records if r["event"] == "run_started"), None)
    if started is None:
        raise UsageError(f"run {run_id!r} has no run_started event: its ledger is unreadable")
    finished = run_finished(records)
    live = is_live(run_dir)
    condition = "running" if live else ("finished" if finished else "interrupted")
    units = _units(records, started, run_dir)
    spends = usage_mod.lane_spends(records)
    for unit in units:
        unit["usage"] = usage_mod.unit_usage(spends, unit["id"])
        shown = consensus_summary.candidates(records, unit["id"],
                                             "running" if live else "interrupted")
        if shown:
            unit["candidates"] = shown
    status: dict[str, Any] = {
        "run_id": run_id,
        "state": condition,
        "plan": started["plan"],
        "delivery_mode": started["delivery_mode"],
        "target": started["target"],
        "base": started["base"],
        "started_at": started["ts"],
        "pid": _last_pid(records),
        "exit_code": finished["exit_code"] if finished and not live else None,
        "interrupted_by": _interruption(records) if condition == "interrupted" else None,
        "patch_dir": started.get("patch_dir"),
        "units": units,
        "counts": _counts(units),
        "usage": usage_mod.run_usage(spends),
        "max_cost_usd": started.get("max_cost_usd"),
        "resume": None,
    }
    if condition == "interrupted":
        recovery = recover(run_dir)
        steps = resume_steps(git, recovery, [u["id"] for u in units],
                             landed_in_git(git, recovery))
        for unit in units:
            step = steps[unit["id"]]
            unit["resume"] = {"action": step.kind, "says": step.says}
        status["resume"] = {
            "command": f"wtmesh run {started['plan']} --resume {run_id}",
            "to_run": [u["id"] for u in units if steps[u["id"]].kind in ("rerun", "start")],
            "to_integrate": [u["id"] for u in units if steps[u["id"]].kind == "integrate"],
        }
    return status


def _units(records: list[dict[str, Any]], started: dict[str, Any],
           run_dir: RunDir) -> list[dict[str, Any]]:
    units: dict[str, dict[str, Any]] = {
        uid: {"id": uid, "state": "pending", "phase": None, "attempts": 0, "reruns": 0,
              "duration_s": None,
              "failure_code": None, "evidence": "", "commit": None, "patch": None,
              "resume": None, "_first_ts": None}
        for uid in started.get("units", [])}
    for record in records:
        unit = units.get(str(record.get("unit")))
        if unit is None:
            continue
        event = record["event"]
        if event == "unit_state":
            unit["state"], unit["phase"] = record["state"], record.get("phase")
            unit["_first_ts"] = unit["_first_ts"] or record["ts"]
        elif event == "rerun":
            unit["reruns"] += 1
        elif event == "lane_started":
            unit["attempts"] = max(unit["attempts"], record["attempt"])
            unit["phase"] = f"{record['lane']} lane, attempt {record['attempt']}"
        elif event == "unit_finished":
            unit.update(state=record["status"], phase=None,
                        attempts=record.get("attempts", unit["attempts"]),
                        duration_s=record.get("duration_s"),
                        failure_code=record["failure_code"], commit=record.get("commit"),
                        patch=record.get("patch"),
                        evidence=evidence(record, run_dir))
    for unit in units.values():
        first_ts = unit.pop("_first_ts")
        if unit["duration_s"] is None and first_ts and unit["state"] == "running":
            unit["duration_s"] = round((_now() - _parse_ts(first_ts)).total_seconds(), 1)
    return list(units.values())


def evidence(finished: dict[str, Any], run_dir: RunDir) -> str:
    """The first line that says why a unit did not integrate: for a failed proof or lane
    the last line its log printed (where the reason usually is), else its notes."""
    if finished["status"] in ("integrated", "no_diff"):
        return ""
    unit_dir = run_dir.unit_dir(finished["unit"])
    logs: list[Path] = []
    if finished["failure_code"] == "proof_failed":
        logs = [unit_dir / "proof.log"]
    elif finished["failure_code"] in ("lane_failed", "timeout_retry_exhausted"):
        logs = sorted(unit_dir.glob("*.stderr.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        line = _last_line(log)
        if line:
            return f"{log.name}: {line}"
    notes = str(finished.get("notes") or "").strip()
    return notes.splitlines()[0] if notes else ""


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - _EVIDENCE_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_pid(records: list[dict[str, Any]]) -> int | None:
    pids = [r["pid"] for r in records if r["event"] in ("run_started", "run_resumed")
            and "pid" in r]
    return pids[-1] if pids else None


def _interruption(records: list[dict[str, Any]]) -> str:
    """How the run ended without finishing: stopped by the user, or killed."""
    last = records[-1]
    if last["event"] == "run_interrupted":
        return "interrupted (Ctrl-C, SIGTERM or SIGHUP); its lanes were stopped"
    return (f"its process stopped without finishing (killed, or the machine went down) "
            f"after {last['event']} at {last['ts']}")


def _counts(units: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for unit in units:
        counts[unit["state"]] = counts.get(unit["state"], 0) + 1
    return counts


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_ts(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


LOG_LANES = ("coder", "fixer", "proof")


def log_files(state: StateDir, run_id: str, unit_id: str, lane: str | None) -> list[Path]:
    """A unit's logs in the order they were written: each lane's attempts (stdout, then
    stderr), then the proof. ``lane`` narrows to one of coder, fixer, proof."""
    run_dir = state.existing_run(run_id)
    started = next((r for r in events(run_dir) if r["event"] == "run_started"), {})
    if unit_id not in started.get("units", []):
        raise UsageError(f"run {run_id} has no unit {unit_id!r}")
    unit_dir = run_dir.unit_dir(unit_id)
    found: list[Path] = []
    for name in (lane,) if lane else LOG_LANES:
        if name == "proof":
            found += [p for p in [unit_dir / "proof.log"] if p.exists()]
            continue
        pattern = re.compile(rf"{name}-(\d+)\.std(?:out|err)\.log")
        attempts = sorted({int(m.group(1)) for p in unit_dir.glob(f"{name}-*.log")
                           if (m := pattern.fullmatch(p.name))})
        for attempt in attempts:
            for stream in ("stdout", "stderr"):
                path = unit_dir / f"{name}-{attempt}.{stream}.log"
                if path.exists():
                    found.append(path)
    return found
