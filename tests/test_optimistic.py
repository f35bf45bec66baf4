"""Optimistic overlap (SPEC 14): overlapping units run side by side, ordered by depends_on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import lane, one_error_line, wtmesh


def _units(*edits: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"id": uid, "objective": "o", "lanes": {"coder": {
        "command": lane("act.py", f"write:{path}=from {uid}\\n")}}} for uid, path in edits]


def _ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git/wtmesh/runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _side_by_side(events: list[dict[str, Any]]) -> bool:
    """Some unit started before another unit's lanes were done. Read from the scheduler's
    own events (a unit it starts is ``running`` at once), not from when a lane process got
    going, which a busy machine can delay past the other unit's end."""
    started: set[str] = set()
    for event in events:
        if event.get("event") == "unit_state" and event.get("state") == "running":
            started.add(event["unit"])
        if event.get("event") == "lanes_done":
            return bool(started - {event["unit"]})
    return False


@pytest.mark.parametrize("overlap", ["optimistic", "serialize", None])
def test_units_of_scope_everything_overlap_only_when_optimistic(
        repo: Path, write_plan: Any, overlap: str | None) -> None:
    plan: dict[str, Any] = {"max_active": 2, "units": _units(("a", "a.txt"), ("b", "b.txt"))}
    if overlap is not None:
        plan["overlap"] = overlap
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert [u["status"] for u in summary["units"]] == ["integrated", "integrated"]
    assert (repo / "a.txt").read_text() == "from a\n"
    assert (repo / "b.txt").read_text() == "from b\n"
    assert _side_by_side(_ledger(repo, summary["run_id"])) == (overlap == "optimistic")
    started = _ledger(repo, summary["run_id"])[0]
    assert started["overlap"] == (overlap or "serialize"), started


def test_depends_on_still_orders_optimistic_units(repo: Path, write_plan: Any) -> None:
    units = _units(("a", "a.txt"), ("b", "b.txt"))
    units[1]["lanes"]["coder"]["command"] = lane("act.py", "require:a.txt", "write:b.txt=b\\n")
    units[1]["depends_on"] = ["a"]
    res = wtmesh("run", write_plan({"overlap": "optimistic", "max_active": 2, "units": units}),
                 "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert not _side_by_side(_ledger(repo, res.json()["run_id"]))


def test_replay_puts_optimistic_units_in_one_wave(repo: Path, write_plan: Any) -> None:
    units = _units(("a", "a.txt"), ("b", "b.txt"))
    for overlap, waves in (("optimistic", [["a", "b"]]), ("serialize", [["a"], ["b"]])):
        res = wtmesh("replay", write_plan({"overlap": overlap, "max_active": 2,
                                           "units": units}), cwd=repo)
        assert res.returncode == 0, res.stderr
        assert res.json()["waves"] == waves, res.stdout


@pytest.mark.parametrize("key, value, expect", [
    ("overlap", "rebase", "$.overlap"),
    ("overlap", 1, "$.overlap"),
    ("rebase_retries", -1, "$.rebase_retries"),
    ("rebase_retries", "2", "$.rebase_retries"),
    ("rebase_retries", 1.5, "$.rebase_retries"),
])
def test_overlap_keys_are_validated(repo: Path, write_plan: Any, key: str, value: Any,
                                    expect: str) -> None:
    plan = write_plan({key: value, "units": _units(("a", "a.txt"))})
    line = one_error_line(wtmesh("run", plan, cwd=repo))
    assert line.startswith(expect) or expect in line, line
