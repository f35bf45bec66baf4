"""``units/<unit>/comparison.md`` in the run directory: a consensus unit's candidates side
by side (SPEC 12), for the person who chooses one (``select: manual``, then ``wtmesh
pick``) or wants to see why none was chosen. Built from the ledger alone, like every view
of the candidates (``summary.candidates``), and written again whenever the unit ends or
a pick is tried."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..state import RunDir, write_atomic
from ..text import printable
from .summary import candidates, pick_command

NAME = "comparison.md"
COLUMNS = ("candidate", "state", "failure", "files", "+/-", "proof s", "votes", "rubric mean",
           "chosen", "patch")


def path(run_dir: RunDir, unit_id: str) -> Path:
    return run_dir.unit_dir(unit_id) / NAME


def summary_fields(records: Sequence[Mapping[str, Any]], run_dir: RunDir, unit_id: str,
                   state: str) -> dict[str, Any]:
    """What a consensus unit adds to the run's summary: its candidates, where they are
    compared, and while it awaits a choice the command that makes it."""
    fields: dict[str, Any] = {"candidates": candidates(records, unit_id),
                              "comparison": str(path(run_dir, unit_id))}
    if state == "awaiting_choice":
        fields["pick"] = pick_command(run_dir.run_id, unit_id)
    return fields


def awaiting(units: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per unit of a run's summary that awaits a choice: its candidates that
    passed, where they are compared, and the command that picks one."""
    lines = []
    for unit in units:
        if unit.get("status") != "awaiting_choice" or "pick" not in unit:
            continue
        passed = [c["name"] for c in unit.get("candidates", []) if c["status"] == "proven"]
        lines.append(f"{unit['id']} awaits a choice among {', '.join(passed)} (compared in "
                     f"{unit['comparison']}); pick one with: {unit['pick']}")
    return lines


def write(run_dir: RunDir, unit_id: str, objective: str,
          records: Sequence[Mapping[str, Any]], patch_dir: Path | None) -> Path:
    where = path(run_dir, unit_id)
    write_atomic(where, render(run_dir.run_id, unit_id, objective, records,
                               patch_dir).encode())
    return where


def render(run_id: str, unit_id: str, objective: str, records: Sequence[Mapping[str, Any]],
           patch_dir: Path | None) -> str:
    mine = [r for r in records if r.get("unit") == unit_id]
    ended = next((r for r in reversed(mine) if r.get("event") == "unit_finished"), None)
    state = str(ended["status"]) if ended else "running"
    shown = candidates(records, unit_id)
    lines = [f"# {unit_id}: {state}", "", *(f"> {line}" if line else ">"
                                              for line in objective.strip().splitlines()), ""]
    if ended and ended.get("notes"):
        lines += [_one_line(str(ended["notes"])), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |",
              "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for c in shown:
        stats = c.get("stats") or {}
        votes = c.get("votes")
        mean = votes.get("rubric_mean") if votes else None
        lines.append("| " + " | ".join(_cell(x) for x in (
            c["name"], str(c["status"]), c.get("failure_code") or "",
            str(stats.get("files", "")), f"+{stats.get('added', 0)}/-{stats.get('removed', 0)}"
            if stats else "", f"{c['proof_s']:.1f}" if c.get("proof_s") is not None else "",
            f"{votes['agree']}/{votes['critics']}" if votes else "",
            f"{mean:.2f}" if mean is not None else "", "yes" if c["chosen"] else "",
            _patch(c.get("patch"), patch_dir))) + " |")
    notes = [(c["name"], _one_line(str(c.get("notes") or ""))) for c in shown]
    if any(text for _name, text in notes):
        lines += ["", "## Notes", ""]
        lines += [f"- **{name}**: {text}" for name, text in notes if text]
    tried = [r for r in mine if r.get("event") in ("picked", "pick_failed")]
    if tried:
        lines += ["", "## Picks", ""]
        for record in tried:
            if record["event"] == "picked":
                lines.append(f"- {record['ts']}: picked {record['candidate']}")
            else:
                lines.append(f"- {record['ts']}: {record['candidate']} was not integrated: "
                             f"{record.get('failure_code')}: "
                             f"{_one_line(str(record.get('notes') or ''))}")
    if state == "awaiting_choice":
        passed = [c["name"] for c in shown if c["status"] == "proven"]
        lines += ["", f"Choose one of {', '.join(passed)} with:", "", "```sh",
                  pick_command(run_id, unit_id), "```"]
    return printable("\n".join(lines) + "\n")


def _patch(patch: str | None, patch_dir: Path | None) -> str:
    if not patch:
        return ""
    return str(patch_dir / patch) if patch_dir is not None and \
        not Path(patch).is_absolute() else patch


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")
