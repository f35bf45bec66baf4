"""Optimistic overlap (SPEC 14): overlapping units run side by side, ordered by depends_on."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import lane, one_error_line, wtmesh

KILLED = -signal.SIGKILL


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


# -- a conflict is new work ------------------------------------------------------------

def _readme_unit(uid: str, *actions: str) -> dict[str, Any]:
    """A unit that rewrites README.md whole (two such units conflict), after ``actions``."""
    return {"id": uid, "objective": f"README from {uid}", "lanes": {"coder": {
        "command": lane("act.py", *actions, f"write:README.md=from {uid}\\n"),
        "timeout_s": 120}}}


def _conflict_plan(tmp_path: Path, units: list[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    record = tmp_path / "lanes.jsonl"
    for unit in units:
        unit["lanes"]["coder"]["command"].insert(2, f"record:{record}")
    return {"overlap": "optimistic", "max_active": len(units), "units": units,
            "sandbox_writable": [str(tmp_path)], **keys}


def _recorded(tmp_path: Path, uid: str) -> list[dict[str, str]]:
    lines = (tmp_path / "lanes.jsonl").read_text().splitlines()
    return [r["env"] for r in map(json.loads, lines) if r["env"]["WTMESH_UNIT_ID"] == uid]


def test_a_conflicting_unit_runs_again_from_the_head_told_what_it_met(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    plan = _conflict_plan(tmp_path, [_readme_unit("a"), _readme_unit("b")])
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    units = {u["id"]: u for u in summary["units"]}
    assert [units[u]["status"] for u in "ab"] == ["integrated", "integrated"]
    assert (units["a"]["reruns"], units["b"]["reruns"]) == (0, 1)
    assert units["b"]["attempts"] == 2
    assert (repo / "README.md").read_text() == "from b\n"
    base = _ledger(repo, summary["run_id"])[0]["base"]
    first, second = _recorded(tmp_path, "b")
    assert "WTMESH_CONFLICT" not in first and first["WTMESH_BASE_SHA"] == base
    # From the new head: a's commit, which b's first change no longer applied onto.
    assert second["WTMESH_BASE_SHA"] == units["a"]["commit"]
    told = json.loads(Path(second["WTMESH_CONFLICT"]).read_text())
    assert told["conflicting_paths"] == ["README.md"]
    assert [c["unit"] for c in told["landed_since"]] == ["a"] and told["met"] == ["a"]
    assert told["started_at"] == base and told["head"] == units["a"]["commit"]
    assert "+from b" in told["previous_diff"]
    assert Path(told["previous_diff_file"]).read_text() == told["previous_diff"]
    (rerun,) = [e for e in _ledger(repo, summary["run_id"]) if e["event"] == "rerun"]
    assert (rerun["unit"], rerun["rerun"], rerun["of"], rerun["attempt"]) == ("b", 1, 2, 2)
    status = wtmesh("status", cwd=repo)
    assert "reruns after a conflict: b 1" in status.stdout, status.stdout
    assert [u["reruns"] for u in wtmesh("status", "--json", cwd=repo).json()["units"]] == [0, 1]


def test_plain_output_says_why_a_unit_runs_again(repo: Path, tmp_path: Path,
                                                 write_plan: Any) -> None:
    plan = _conflict_plan(tmp_path, [_readme_unit("a"), _readme_unit("b")])
    res = wtmesh("run", write_plan(plan), cwd=repo)
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert ["b", "rerun", "conflicted", "on", "README.md", "(after", "a):", "runs", "again",
            "from", "the", "head", "as", "attempt", "2", "(rerun", "1", "of", "2)"] in lines
    assert "reruns after a conflict: b 1" in res.stdout


def test_without_retries_a_conflict_is_integration_conflict(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    plan = _conflict_plan(tmp_path, [_readme_unit("a"), _readme_unit("b")],
                          rebase_retries=0)
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    b = res.json()["units"][1]
    assert (b["status"], b["failure_code"], b["reruns"]) == (
        "failed", "integration_conflict", 0)
    assert (repo / "README.md").read_text() == "from a\n"
    assert len(_recorded(tmp_path, "b")) == 1
    assert not [e for e in _ledger(repo, res.json()["run_id"]) if e["event"] == "rerun"]


def test_serialize_runs_overlapping_units_one_after_another_without_a_conflict(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    plan = _conflict_plan(tmp_path, [_readme_unit("a"), _readme_unit("b")])
    plan["overlap"] = "serialize"
    res = wtmesh("run", write_plan(plan), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    a, b = res.json()["units"]
    assert (b["status"], b["reruns"], b["attempts"]) == ("integrated", 0, 1)
    # b started from a's landing, so its change never met a's.
    (b_lane,) = _recorded(tmp_path, "b")
    assert b_lane["WTMESH_BASE_SHA"] == a["commit"]


@pytest.mark.parametrize("retries, c_ends", [(1, "failed"), (2, "integrated")])
def test_reruns_stop_at_rebase_retries(repo: Path, tmp_path: Path, write_plan: Any,
                                       retries: int, c_ends: str) -> None:
    """b and c both conflict with a; c's rerun starts before b's rerun lands (b's waits
    for it), so c's rerun conflicts again, with b's."""
    c2 = tmp_path / "c-rerun-started"
    units = [_readme_unit("a"),
             _readme_unit("b", f"attempt=2:await:{c2}"),
             _readme_unit("c", f"attempt=2:write:{c2}=")]
    res = wtmesh("run", write_plan(_conflict_plan(tmp_path, units, rebase_retries=retries)),
                 "--json", cwd=repo)
    summary = res.json()
    c = summary["units"][2]
    assert c["status"] == c_ends, c
    assert summary["units"][1]["reruns"] == 1
    if c_ends == "failed":
        assert res.returncode == 1
        assert (c["failure_code"], c["reruns"]) == ("integration_conflict", 1)
        assert (repo / "README.md").read_text() == "from b\n"
    else:
        assert res.returncode == 0, res.stderr
        assert (c["reruns"], c["attempts"]) == (2, 3)
        assert (repo / "README.md").read_text() == "from c\n"


def test_kill_9_after_a_rerun_is_decided_resumes_the_rerun(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """Killed once the rerun is in the ledger: the old result's ref is still there, but a
    resumed run runs the unit again from the head (told of the conflict), once."""
    plan = write_plan(_conflict_plan(tmp_path, [_readme_unit("a"), _readme_unit("b")]))
    killed = wtmesh("run", plan, "--json", cwd=repo, env={"WTMESH_FAULT": "at:rerun"})
    assert killed.returncode == KILLED, killed.stderr
    assert len(_recorded(tmp_path, "b")) == 1
    status = wtmesh("status", "--json", cwd=repo)
    assert status.returncode == 0, status.stderr
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    b = res.json()["units"][1]
    assert (b["status"], b["reruns"], b["attempts"]) == ("integrated", 1, 2)
    first, second = _recorded(tmp_path, "b")
    assert "WTMESH_CONFLICT" in second and second["WTMESH_ATTEMPT"] == "2"
    assert (repo / "README.md").read_text() == "from b\n"


def test_a_conflict_is_rerun_as_soon_as_it_is_known_not_when_its_turn_comes(
        repo: Path, tmp_path: Path, write_plan: Any) -> None:
    """x, between a and c in plan order, finishes only once c's rerun has started: c must
    be rerun when a lands (its change met a's), not after x lands."""
    c2 = tmp_path / "c-rerun-started"
    units = [_readme_unit("a"),
             {"id": "x", "objective": "x", "lanes": {"coder": {
                 "command": lane("act.py", f"await:{c2}", "write:x.txt=x\\n"),
                 "timeout_s": 120}}},
             _readme_unit("c", f"attempt=2:write:{c2}=")]
    res = wtmesh("run", write_plan(_conflict_plan(tmp_path, units)), "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert [(u["id"], u["status"], u["reruns"]) for u in summary["units"]] == [
        ("a", "integrated", 0), ("x", "integrated", 0), ("c", "integrated", 1)]
    assert (repo / "README.md").read_text() == "from c\n"
