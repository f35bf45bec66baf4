"""``report.md``: a run told in Markdown, for reviewers who read it where they read code.

Counts, what the lanes spent, a table of units (state, failure code, diffstat, proof time,
commit or patch, the first line of evidence, and tokens and cost where a lane reported
them), for each consensus unit its candidates side by side and every critic's verdict
round by round, and in patch_first the series with the command that applies it.
Built from the run's summary and ledger only, so it can be written again at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import ledger as ledger_mod
from .consensus import comparison
from .consensus.vote import rubric_mean
from .output import COMPARISON_COLUMNS, comparison_cells, first_line
from .series_check import REVIEWER_AM
from .state import RunDir, write_atomic
from .status import evidence
from .text import printable
from .usage import spent_line, summed_cost_text, tokens_text


def render_report(summary: dict[str, Any], records: list[dict[str, Any]],
                  run_dir: RunDir) -> str:
    stats = {r["unit"]: r.get("stats") or {} for r in records if r["event"] == "lanes_done"}
    # A unit landed by wtmesh pick: the diffstat of what was picked.
    stats.update({r["unit"]: r["stats"] for r in records
                  if r["event"] == "unit_finished" and r.get("stats")})
    proof_s: dict[str, float] = {}
    for rec in records:
        if rec["event"] == "proof_finished" and not rec.get("cached"):
            proof_s[rec["unit"]] = proof_s.get(rec["unit"], 0.0) + rec["duration_s"]
    finished = {r["unit"]: r for r in records if r["event"] == "unit_finished"}
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    head = (summary.get("head") or "")[:12]
    spent = any(unit.get("usage") for unit in summary["units"])
    usage_columns = ["tokens", "cost"] if spent else []
    spent_said = spent_line(summary.get("usage"), summary.get("max_cost_usd"))
    lines = [
        f"# wtmesh run {summary['run_id']}",
        "",
        f"{summary['delivery_mode']} onto `{summary['target']}` from "
        f"`{summary['base'][:12]}`" + (f", now at `{head}`" if head else "") + ".",
        f"Exit code {summary['exit_code']}: {counts or 'no units'}.",
        *([spent_said[0].upper() + spent_said[1:] + "."] if spent_said else []),
        "",
        "| " + " | ".join(["unit", "state", "failure", "files", "+/-", "proof s",
                          "commit / patch", *usage_columns, "evidence"]) + " |",
        "|---|---|---|---:|---:|---:|---|" + "---:|" * len(usage_columns) + "---|",
    ]
    for unit in summary["units"]:
        uid = unit["id"]
        stat = stats.get(uid, {})
        ended = finished.get(uid)
        why = evidence(ended, run_dir) if ended else ""
        delta = f"+{stat['added']}/-{stat['removed']}" if stat else ""
        where = unit["patch"] or (f"`{unit['commit'][:12]}`" if unit["commit"] else "")
        used = ([tokens_text(unit.get("usage")), summed_cost_text(unit.get("usage"))]
                if spent else [])
        lines.append("| " + " | ".join(_cell(x) for x in (
            uid, unit["status"], unit["failure_code"] or "", str(len(unit["files"])), delta,
            f"{proof_s[uid]:.1f}" if uid in proof_s else "", where, *used, why)) + " |")
    for unit in summary["units"]:
        if unit.get("candidates"):
            lines += consensus_section(unit, records, finished.get(unit["id"]),
                                       summary.get("patch_dir"))
    if summary["delivery_mode"] == "patch_first" and summary.get("patch_dir"):
        patches = [u for u in summary["units"] if u["patch"]]
        lines += ["", "## Patches", "",
                  (f"{len(patches)} patches in `{summary['patch_dir']}`. Apply them on "
                   f"`{summary['base'][:12]}` with:"), "",
                  "```sh", f"{REVIEWER_AM} {summary['patch_dir']}/*.patch", "```", ""]
        lines += [f"{n}. `{u['patch']}` ({u['id']})" for n, u in enumerate(patches, 1)]
    waiting = comparison.awaiting(summary["units"])
    if waiting:
        lines += ["", "## Awaiting a choice", "", *(f"- {line}" for line in waiting)]
    return printable("\n".join(lines) + "\n")


def write_report(summary: dict[str, Any], run_dir: RunDir, also: Path | None,
                 report: Callable[..., None]) -> None:
    """``report.md`` in the run directory, and at ``also`` (``--report FILE``); a file
    that cannot be written there is a warning (``report``), not a failure."""
    text = render_report(summary, ledger_mod.read(run_dir.ledger), run_dir).encode()
    write_atomic(run_dir.path / "report.md", text)
    if also is None:
        return
    try:
        write_atomic(also, text)
    except OSError as exc:
        report("warning", message=f"could not write --report {also}: "
                                  f"{exc.strerror or exc}; the report is in "
                                  f"{run_dir.path}/report.md")


def consensus_section(unit: dict[str, Any], records: list[dict[str, Any]],
                      ended: dict[str, Any] | None, patch_dir: str | None) -> list[str]:
    """A consensus unit: its candidates side by side, then each round's vote and every
    critic's verdict in it (SPEC 12)."""
    uid = unit["id"]
    lines = ["", f"## {uid}: {len(unit['candidates'])} candidates", ""]
    said = first_line(ended.get("notes") or "") if ended else ""
    if said:
        lines += [_cell(said[0].upper() + said[1:]) + ("" if said.endswith(".") else "."), ""]
    patches = any(c.get("patch") for c in unit["candidates"]) and patch_dir
    lines += ["| " + " | ".join([*COMPARISON_COLUMNS, *(["patch"] if patches else [])]) + " |",
              "|---|---|---|---:|---:|---:|---:|---:|---|" + ("---|" if patches else "")]
    for candidate in unit["candidates"]:
        cells = [_cell(cell) for cell in comparison_cells(candidate)]
        if patches:
            patch = candidate.get("patch")
            cells.append(f"[{_cell(patch)}](<{patch_dir}/{patch}>)" if patch else "")
        lines.append("| " + " | ".join(cells) + " |")
    votes = {r["round"]: r for r in records
             if r["event"] == "vote" and r.get("unit") == uid}
    critiques: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record["event"] == "critique" and record.get("unit") == uid:
            critiques.setdefault(record["round"], {})[record["critic"]] = record
    for round_ in sorted(set(votes) | set(critiques)):
        lines += ["", f"### {uid}, round {round_}", ""]
        if round_ in votes:
            lines += [_cell(_vote_line(votes[round_])), ""]
        lines += ["| critic | decision | agrees with | ranking | rubric | flip | notes |",
                  "|---|---|---|---|---|---|---|"]
        for critic, record in sorted(critiques.get(round_, {}).items()):
            lines.append("| " + " | ".join(_cell(cell) for cell in _verdict_cells(critic,
                                                                                  record))
                         + " |")
    return lines


def _vote_line(vote: dict[str, Any]) -> str:
    critics = vote.get("critics", 0)
    standings = ", ".join(f"{s['name']} {s['agree']}/{critics}" for s in vote.get("standings",
                                                                                   []))
    outcome = (f"{vote['chosen']} chosen" if vote.get("chosen")
               else "no candidate reached the quorum")
    return (f"Vote ({vote.get('counted', critics)} of {critics} verdicts counted, quorum "
            f"{vote.get('quorum')}): {standings or 'no candidates'}; {outcome}.")


def _verdict_cells(critic: str, record: dict[str, Any]) -> list[str]:
    critique = record.get("critique")
    if not record.get("counted") or not critique:
        return [critic, f"{record.get('failure_code') or 'no verdict'} (not counted)", "", "",
                "", "", record.get("notes") or ""]
    agree = [name for name, said in critique.get("votes", {}).items() if said == "agree"]
    scores = ", ".join(f"{name} {rubric_mean(marks):.2f}"
                       for name, marks in critique.get("scores", {}).items())
    return [critic, critique["decision"], ", ".join(agree) or "none",
            ", ".join(critique.get("ranking") or []), scores, critique.get("flip") or "",
            critique.get("notes") or ""]


def _cell(text: str) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
