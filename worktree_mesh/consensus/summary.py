"""A consensus unit's candidates side by side, read from the ledger (so an interrupted or
resumed run shows them too): what the summary, ``status``, ``report.md`` and the live
view show (SPEC 12)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def candidates(records: Iterable[Mapping[str, Any]], unit_id: str,
               unfinished: str = "interrupted") -> list[dict[str, Any]]:
    """Each candidate of ``unit_id`` in order: state, failure code, diffstat, proof time,
    votes (agree of critics, Borda count, rubric mean) after the last vote, chosen (by
    the vote or select, or by ``wtmesh pick`` once what it picked has landed).

    A candidate whose lanes started but which has not finished comes after the others,
    with the state ``unfinished``: ``running`` while its run goes on, ``interrupted``
    once it has stopped."""
    found: dict[str, dict[str, Any]] = {}
    started: list[str] = []
    standings: dict[str, Mapping[str, Any]] = {}
    critics = 0
    chosen: str | None = None
    picked: str | None = None  # a pick under way: chosen once the unit lands
    for record in records:
        if record.get("unit") != unit_id:
            continue
        event = record.get("event")
        if event == "lane_started" and record.get("candidate"):
            if record["candidate"] not in started:
                started.append(str(record["candidate"]))
        elif event == "candidate_finished":
            found[str(record["candidate"])] = dict(record)
        elif event == "vote":
            standings = {str(s["name"]): s for s in record.get("standings", [])}
            critics = int(record.get("critics", 0))
        elif event == "chosen":
            chosen = str(record["candidate"])
        elif event == "picked":
            picked = str(record["candidate"])
        elif event == "pick_failed":
            picked = None
        elif event == "unit_finished" and picked is not None \
                and record.get("status") in ("integrated", "no_diff"):
            chosen = picked
    for name in started:
        if name not in found:
            found[name] = {"status": unfinished, "order": math.inf}
    out = []
    for name, record in sorted(found.items(), key=lambda item: item[1].get("order", 0)):
        standing = standings.get(name)
        out.append({
            "name": name,
            "status": record.get("status"),
            "failure_code": record.get("failure_code"),
            "notes": record.get("notes", ""),
            "stats": record.get("stats"),
            "proof_status": record.get("proof_status"),
            "proof_s": record.get("proof_s"),
            "patch": record.get("patch"),
            "votes": None if standing is None else {
                "agree": standing.get("agree"), "critics": critics,
                "borda": standing.get("borda"), "rubric_mean": standing.get("rubric_mean")},
            "chosen": name == chosen,
        })
    return out


def pick_command(run_id: str, unit_id: str, candidate: str = "CANDIDATE") -> str:
    """The command that integrates a candidate of a unit awaiting a choice."""
    return f"wtmesh pick {run_id} {unit_id} {candidate}"
