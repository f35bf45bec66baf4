"""Rendering: one plain line per state change, the final table, the JSON summary.

Core modules return records and write the ledger; only this module and the CLI print.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from . import sandbox
from .cleanup import GcReport
from .consensus import comparison
from .integrator import wait_message
from .presets import versions
from .series_check import REVIEWER_AM
from .text import printable, printable_data
from .usage import cost_text, spent_line, summed_cost_text, tokens_text

if TYPE_CHECKING:  # rich is imported where something is drawn: --json never needs it
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

STATE_STYLE = {"integrated": "green", "no_diff": "dim", "rejected": "yellow",
                "failed": "red", "skipped": "magenta", "running": "cyan"}


class LineRenderer:
    """Observer of ledger records that prints state changes, one line each."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        line = describe(record)
        if line is None:
            return
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def describe(record: dict[str, Any]) -> str | None:
    """One line for a person, or None; nothing in it that cannot be written as UTF-8."""
    line = _describe(record)
    return None if line is None else printable(line)


def _describe(record: dict[str, Any]) -> str | None:
    event = record["event"]
    if event == "run_started":
        return (f"run {record['run_id']}: {len(record['units'])} units"
                + (f" in {record['waves']} waves" if record.get("waves") else "")
                + f", {record['delivery_mode']} onto {record['target']} "
                f"from {record['base'][:12]}"
                + (f", overlap {record['overlap']}" if record.get("overlap") else "")
                + (f", executor {record['executor']}" if record.get("executor") else "")
                + f", {record['max_active']} at a time" + budget_note(record)
                + sandbox_note(record) + preset_note(record))
    if event == "warning":
        return f"wtmesh: warning: {record['message']}"
    if event == "base_proof":
        return base_proof_line(record)
    if event == "budget_exhausted":
        return (f"wtmesh: the run has spent {cost_text(record['spent_usd'])} of its "
                f"--max-cost-usd {cost_text(record['max_cost_usd'])}: no new lane starts "
                "(running lanes finish)")
    if event == "backpressure":
        why = "integrated" if record["reason"] == "integrated" else f"ended {record['reason']}"
        return (f"wtmesh: {record['new']} units at once (was {record['old']}): "
                f"{record['unit']} {why}")
    if event == "run_resumed":
        lines = [f"resuming run {record['run_id']}"]
        if record.get("stopped_process_groups"):
            lines[0] += (f" (stopped {len(record['stopped_process_groups'])} process groups "
                         "the interrupted run left running)")
        lines[0] += sandbox_note(record)
        lines += [f"  {uid:<20} {step['says']}" for uid, step in record.get("steps", {}).items()]
        return "\n".join(lines)
    if event == "unit_state":
        phase = record.get("phase")
        if record["state"] == "running" and phase in ("starting", None):
            return None
        if record["state"] == "pending" or phase == "red":  # their own lines say why
            return None
        if record.get("critic"):
            return f"{record['unit']:<20} {'critic':<10} {critic_round(record['critic'])}"
        return f"{of_unit(record):<20} {record['state']:<10} {phase or ''}".rstrip()
    if event == "lane_started" and record["attempt"] > 1:
        lane = record["lane"]
        if record.get("critic"):
            lane += " " + critic_round(record["critic"])
        return f"{of_unit(record):<20} retry      {lane} attempt {record['attempt']}"
    if event in CONSENSUS_EVENTS:
        return _describe_consensus(record)
    if event == "unit_finished":
        detail = record.get("commit", "")[:12] if record.get("commit") else ""
        if record.get("patch"):
            detail += f" {record['patch']}"
        if record.get("failure_code"):
            detail = f"{record['failure_code']}: {first_line(record.get('notes', ''))}"
        elif record["status"] != "integrated" and record.get("notes"):
            detail = first_line(record["notes"])
        return f"{record['unit']:<20} {record['status']:<10} {detail}".rstrip()
    if event == "test_first_red":
        return (f"{record['unit']:<20} {'red':<10} its proof passes on {record['head'][:12]} "
                "and fails with its change: its implementation units start from it")
    if event == "rerun":
        met = ", ".join(record.get("paths") or []) or "the integrated head"
        since = ", ".join(record.get("met") or [])
        return (f"{record['unit']:<20} {'rerun':<10} conflicted on {met}"
                + (f" (after {since})" if since else "")
                + f": runs again from the head as attempt {record['attempt']} "
                f"(rerun {record['rerun']} of {record['of']})")
    if event == "lock_wait":
        return "wtmesh: " + wait_message(record.get("holder"), record["timeout_s"])
    if event == "stranded":
        return (f"wtmesh: the worktree {record['worktree']} cannot follow the target "
                f"({record['reason']}); further units land on {record['ref'][11:]}")
    if event == "left_behind":
        return (f"wtmesh: the target moved to {record['target'][:12]} but the worktree "
                f"{record['worktree']} could not follow ({_reason(record)}); it stays at "
                f"{record['at'][:12]}, nothing lost")
    if event == "index_lock_wait":
        return (f"wtmesh: waiting for another git command in {record['worktree']} to "
                f"release {record['lock']} (up to {record['timeout_s']:g}s)")
    return None


CONSENSUS_EVENTS = ("candidate_finished", "critique", "vote", "chosen")


def base_proof_line(record: dict[str, Any]) -> str:
    """What the run's base made of its own proof."""
    status, notes = record["status"], record.get("notes") or ""
    if status == "fail":
        return f"wtmesh: {notes}; the run stops, nothing lands"
    command = record.get("command")
    shown = command if isinstance(command, str) else shlex.join(map(str, command or []))
    said = f"base {str(record['base'])[:12]} proof `{first_line(shown)}`"
    if status == "skipped":
        return f"wtmesh: warning: {said} not run: {notes}"
    if record.get("kept"):
        return f"{said} {notes}"
    return f"{said} passed in {record.get('duration_s') or 0:.1f}s"


def of_unit(record: dict[str, Any]) -> str:
    """The unit a line is about, and which of its candidates: ``u1 [small]``."""
    candidate = record.get("candidate")
    return f"{record['unit']} [{candidate}]" if candidate else str(record["unit"])


def critic_round(who: str) -> str:
    """A critic's lane, ``<name>-r<round>`` in the ledger, as ``c1 round 1``."""
    name, _, round_ = who.rpartition("-r")
    return f"{name} round {round_}" if name and round_.isdigit() else who


def _describe_consensus(record: dict[str, Any]) -> str | None:
    event, unit = record["event"], record["unit"]
    if event == "candidate_finished":
        if record.get("failure_code"):
            detail = f"{record['failure_code']}: {first_line(record.get('notes') or '')}"
        else:
            detail = diffstat(record.get("stats"))
            if record.get("proof_status") == "pass":
                detail += f", proof {record.get('proof_s') or 0:.1f}s"
        return f"{of_unit(record):<20} {record['status']:<10} {detail}".rstrip()
    if event == "critique":
        said = f"{record['critic']} round {record['round']}: "
        critique = record.get("critique")
        if not record.get("counted") or not critique:
            said += (f"{record.get('failure_code') or 'not counted'}: "
                     f"{first_line(record.get('notes') or '')}")
        else:
            agree = [n for n, v in critique.get("votes", {}).items() if v == "agree"]
            said += f"{critique['decision']}, agree: {', '.join(agree) or 'none'}"
        return f"{unit:<20} {'verdict':<10} {said}".rstrip(" :")
    if event == "vote":
        critics = record.get("critics", 0)
        standings = ", ".join(
            f"{s['name']} {s['agree']}/{critics}"
            + (" (chosen)" if s["name"] == record.get("chosen") else "")
            for s in record.get("standings", []))
        said = f"round {record['round']}: {standings or 'no candidates'}"
        if record.get("chosen") is None:
            said += f"; none reached the quorum of {record.get('quorum')}"
        return f"{unit:<20} {'vote':<10} {said}"
    if event == "chosen" and record.get("round") is None:  # a vote's choice is said there
        return (f"{of_unit(record):<20} {'chosen':<10} "
                f"{str(record.get('select', '')).replace('_', ' ')}").rstrip()
    return None


def diffstat(stats: dict[str, Any] | None) -> str:
    """``+3 -1`` (lines added and removed); empty when there is no diff."""
    if not stats:
        return ""
    return f"+{stats.get('added', 0)} -{stats.get('removed', 0)}"


def _reason(record: dict[str, Any]) -> str:
    files = record.get("files") or []
    return f"{record['reason']}: {', '.join(files)}" if files else record["reason"]


def budget_note(record: dict[str, Any]) -> str:
    """Why ``max_active`` is what it is when the budget clamped it."""
    said = record.get("budget")
    if not isinstance(said, dict) or not isinstance(said.get("max_active_units"), int) \
            or said["max_active_units"] > record.get("max_active", 0):
        return ""  # no budget, or it did not clamp
    note = f" (budget {said.get('mode')}: at most {said['max_active_units']}"
    if said.get("parallel_tasks_target") is not None:
        note += f", {said['parallel_tasks_target']} tasks of {said.get('roles_per_task')} roles"
    return note + ")"


def sandbox_note(record: dict[str, Any]) -> str:
    """The run's first line says whether its lanes are sandboxed, and if not, why."""
    said = record.get("sandbox")
    return f"; {sandbox.describe(said)}" if isinstance(said, dict) else ""


def preset_note(record: dict[str, Any]) -> str:
    """Each preset's CLI version, and whether the presets were tested with it."""
    said = record.get("presets")
    if not isinstance(said, dict) or not said:
        return ""
    return "; " + ", ".join(
        versions.Installed(name, info.get("version"), info.get("problem")).describe()
        for name, info in said.items() if name in versions.TESTED and isinstance(info, dict))


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def print_summary_table(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = stream or sys.stdout
    summary = printable_data(summary)
    console = Console(file=stream, highlight=False, soft_wrap=False,
                      width=None if stream.isatty() else 120)
    table = Table()
    spent = any_usage(summary["units"])
    for column in ("unit", "status", "failure", "files", "commit / patch", "s",
                   *(USAGE_COLUMNS if spent else ())):
        table.add_column(column, overflow="fold")
    for unit in summary["units"]:
        # Text, not markup: a unit id or patch name such as "[b]" is shown as written.
        table.add_row(Text(unit["id"]),
                      Text(unit["status"], style=STATE_STYLE.get(unit["status"], "")),
                      Text(unit["failure_code"] or ""), str(len(unit["files"])),
                      Text(unit["patch"] or (unit["commit"] or "")[:12]),
                      f"{unit['duration_s']:.1f}", *(usage_cells(unit) if spent else ()))
    console.print(f"run {summary['run_id']}", markup=False)
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    console.print(counts, markup=False)
    if reruns_line(summary["units"]):
        console.print(reruns_line(summary["units"]), markup=False)
    line = spent_line(summary.get("usage"), summary.get("max_cost_usd"))
    if line:
        console.print(line, markup=False)
    where = landing_note(summary)
    if where:
        # Paths and the git am line must stay whole to be copied: never wrapped.
        console.print(where, markup=False, soft_wrap=True)
    for part in comparisons(summary["units"]):
        console.print(part)
    for line in comparison.awaiting(summary["units"]):
        console.print(line, markup=False, soft_wrap=True)


USAGE_COLUMNS = ("tokens", "cost")


def reruns_line(units: list[dict[str, Any]]) -> str:
    """Which units ran again after their change conflicted (optimistic overlap), or ""."""
    rerun = [f"{u['id']} {u['reruns']}" for u in units if u.get("reruns")]
    return ("reruns after a conflict: " + ", ".join(rerun)) if rerun else ""
COMPARISON_COLUMNS = ("candidate", "state", "failure", "+/-", "proof s", "votes", "borda",
                      "rubric", "chosen")
CHOSEN_MARK = "✓"


def comparison_cells(candidate: dict[str, Any]) -> list[str]:
    """A consensus candidate side by side with the others (SPEC 12), one cell per column
    of ``COMPARISON_COLUMNS``."""
    votes = candidate.get("votes")
    proof_s = candidate.get("proof_s")
    mean = votes.get("rubric_mean") if votes else None
    return [candidate["name"], candidate["status"] or "", candidate.get("failure_code") or "",
            diffstat(candidate.get("stats")) if candidate.get("stats") else "",
            f"{proof_s:.1f}" if candidate.get("proof_status") and proof_s is not None else "",
            f"{votes['agree']}/{votes['critics']}" if votes else "",
            str(votes["borda"]) if votes and votes.get("borda") is not None else "",
            f"{mean:.2f}" if mean is not None else "",
            CHOSEN_MARK if candidate.get("chosen") else ""]


def comparisons(units: list[dict[str, Any]]) -> list[Text | Table]:
    """For each consensus unit, a line naming it and its comparison table."""
    from rich.text import Text

    parts: list[Text | Table] = []
    for unit in units:
        if unit.get("candidates"):
            parts += [Text(f"{unit['id']}: {len(unit['candidates'])} candidates"),
                      comparison_table(unit)]
    return parts


def comparison_table(unit: dict[str, Any]) -> Table:
    """A consensus unit's candidates side by side, within 80 columns as long as names
    and failure codes are not longer than usual (rich folds them when they are)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No lines between columns (a gap of two spaces), the header ruled off.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0),
                  header_style="bold")
    for column in COMPARISON_COLUMNS:
        numeric = column in ("+/-", "proof s", "votes", "borda", "rubric")
        table.add_column(column, overflow="fold", justify="right" if numeric else "left")
    for candidate in unit["candidates"]:
        cells = comparison_cells(candidate)
        table.add_row(Text(cells[0]), Text(cells[1], style=CANDIDATE_STYLE.get(cells[1], "")),
                      *(Text(cell) for cell in cells[2:]))
    return table


CANDIDATE_STYLE = {**STATE_STYLE, "proven": "green"}


def any_usage(units: list[dict[str, Any]]) -> bool:
    """Token and cost columns only where some lane reported what it spent."""
    return any(unit.get("usage") for unit in units)


def usage_cells(unit: dict[str, Any]) -> tuple[str, str]:
    return tokens_text(unit.get("usage")), summed_cost_text(unit.get("usage"))


def landing_note(summary: dict[str, Any]) -> str:
    integrated = summary["counts"].get("integrated", 0)
    if summary.get("stranded_ref"):
        return (f"the target's worktree could not be brought along: the integrated commits "
                f"are on branch {summary['stranded_ref']} ({summary['head'][:12]})"
                + _how_to_bring_along(summary))
    if summary.get("not_brought_along"):
        return (f"{integrated} commits on {summary['target']}, now at {summary['head'][:12]}, "
                f"but its worktree {summary['not_brought_along']['worktree']} was left where "
                "it was" + _how_to_bring_along(summary))
    if summary["delivery_mode"] == "patch_first":
        return (f"{integrated} patches in {summary['patch_dir']} (listed in its series file; "
                f"apply on {summary['base'][:12]} with: {REVIEWER_AM} "
                f"{summary['patch_dir']}/*.patch); {summary['target']} untouched")
    if integrated:
        return f"{integrated} commits on {summary['target']}, now at {summary['head'][:12]}"
    return f"{summary['target']} unchanged"


def _how_to_bring_along(summary: dict[str, Any]) -> str:
    left = summary.get("not_brought_along")
    if not left:
        return ""
    aside = (f"move aside {', '.join(left['files'])}, then " if left["files"] else "")
    return f"; to bring it along, {aside}run: {left['command']}"


def print_json(data: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(printable_data(data), sort_keys=False) + "\n")
    stream.flush()


def print_status(status: dict[str, Any], stream: TextIO | None = None) -> None:
    """``wtmesh status`` for people: what happened, unit by unit, and what resuming does."""
    from rich.console import Console

    stream = stream or sys.stdout
    console = Console(file=stream, highlight=False, soft_wrap=True,
                      width=None if stream.isatty() else 120)
    console.print(status_view(status))


def status_view(status: dict[str, Any]) -> Group:
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text

    def say(text: str) -> Text:
        return Text(text)

    status = printable_data(status)
    condition = {
        "running": f"running (pid {status['pid']})",
        "finished": f"finished, exit code {status['exit_code']}",
        "interrupted": f"interrupted: {status['interrupted_by']}",
    }[status["state"]]
    parts: list[RenderableType] = [
        say(f"run {status['run_id']}: {condition}"),
        say(f"plan {status['plan']}, {status['delivery_mode']} onto {status['target']} "
            f"from {status['base'][:12]}, started {status['started_at']}")]
    table = Table()
    spent = any_usage(status["units"])
    for column in ("unit", "state", "attempts", "s", "failure", *(USAGE_COLUMNS if spent else ()),
                   "evidence / now"):
        table.add_column(column, overflow="fold")
    for unit in status["units"]:
        duration = "" if unit["duration_s"] is None else f"{unit['duration_s']:.1f}"
        detail = unit["evidence"] or (unit["phase"] if unit["state"] == "running" else "") \
            or unit["patch"] or (unit["commit"] or "")[:12]
        table.add_row(Text(unit["id"]),
                      Text(unit["state"], style=STATE_STYLE.get(unit["state"], "")),
                      str(unit["attempts"]), duration, Text(unit["failure_code"] or ""),
                      *(usage_cells(unit) if spent else ()), Text(detail or ""))
    parts.append(table)
    parts.append(say(", ".join(f"{n} {state}" for state, n in status["counts"].items() if n)))
    if reruns_line(status["units"]):
        parts.append(say(reruns_line(status["units"])))
    line = spent_line(status.get("usage"), status.get("max_cost_usd"))
    if line:
        parts.append(say(line))
    parts += comparisons(status["units"])
    resume = status["resume"]
    if resume is None:
        if status["state"] == "finished":
            parts.append(say("nothing to resume: the run finished"))
        return Group(*parts)
    parts.append(say("resuming it would:"))
    parts += [say(f"  {unit['id']:<20} {unit['resume']['says']}") for unit in status["units"]]
    parts.append(say(f"resume with: {resume['command']}"))
    return Group(*parts)


def print_gc(report: GcReport, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    verb = "would remove" if report.dry_run else "removed"
    for removal in report.removed:
        stream.write(f"{verb} {removal.kind} {removal.what} (run {removal.run_id})\n")
    for kept in report.kept:
        stream.write(f"kept run {kept.run_id}: {kept.why}\n")
    if not report.removed and not report.kept:
        stream.write("nothing to clean up\n")
    stream.flush()
