"""`wtmesh ledger --input-json`: the "occurred" filter; and the run summary it applies to
with --run (built from ledger records here; from a real run in test_toolkit_execute.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import one_error_line, wtmesh

from worktree_mesh.errors import UsageError
from worktree_mesh.toolkit import ledger_view

PAYLOAD = ('{"z_first": 1, "null": null, "false": false, "true": true, "zero": 0, '
           '"neg": -2, "zero_float": 0.0, "small": 0.5, "empty": "", "none": "none", '
           '"None": "None", "zero_text": "0", "text": "x", "no_list": [], "list": [0], '
           '"no_obj": {}, "obj": {"a": null}, "a_last": "kept"}')


def test_keeps_what_occurred_in_input_order(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text(PAYLOAD)
    res = wtmesh("ledger", "--input-json", tmp_path / "l.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    out = res.json()
    assert list(out) == ["command", "events"]
    assert out["command"] == "ledger"
    assert list(out["events"].items()) == [
        ("z_first", 1), ("true", True), ("small", 0.5), ("None", "None"), ("zero_text", "0"),
        ("text", "x"), ("list", [0]), ("obj", {"a": None}), ("a_last", "kept")]


def test_an_empty_object_gives_no_events(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text('{"a": 0, "b": []}')
    assert wtmesh("ledger", "--input-json", tmp_path / "l.json", cwd=tmp_path).json() == \
        {"command": "ledger", "events": {}}


@pytest.mark.parametrize("content, needle", [
    ("[1]", "$: expected a JSON object, got list"),
    ("3", "$: expected a JSON object, got int"),
    ('{"a": Infinity}', "not valid JSON"),
    ("{'a': 1}", "not valid JSON: line 1 column 2"),
])
def test_bad_payloads(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "l.json").write_text(content)
    line = one_error_line(wtmesh("ledger", "--input-json", tmp_path / "l.json", cwd=tmp_path))
    assert needle in line and str(tmp_path / "l.json") in line


def test_option_errors(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text("{}")
    assert "give one of" in one_error_line(
        wtmesh("ledger", "--input-json", "l.json", "--run", "r", cwd=tmp_path))
    assert "--repo goes with --run" in one_error_line(
        wtmesh("ledger", "--input-json", "l.json", "--repo", tmp_path, cwd=tmp_path))


@pytest.mark.parametrize("value, expected", [
    (None, False), (False, False), (True, True), (0, False), (-1, False), (1, True),
    (0.0, False), (1e-9, True), ("", False), ("none", False), ("x", True), ([], False),
    ([None], True), ({}, False), ({"k": 0}, True),
])
def test_occurred(value: Any, expected: bool) -> None:
    assert ledger_view.occurred(value) is expected


def record(seq: int, event: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": "2026-01-01T00:00:00.000Z", "run_id": "r1", "event": event,
            **fields}


STARTED = record(1, "run_started", plan="/p.json", delivery_mode="patch_first",
                 target="main", base="b" * 40, max_active=2, units=["a", "b", "c", "d"])


def test_run_summary_of_an_interrupted_run() -> None:
    records = [
        STARTED,
        record(2, "unit_finished", unit="a", status="integrated", failure_code=None),
        record(3, "backpressure", unit="b", old=2, new=1, reason="rejected"),
        record(4, "unit_finished", unit="b", status="rejected", failure_code="lane_failed"),
        record(5, "run_interrupted", units=["c"]),
    ]
    summary = ledger_view.run_summary("r1", records)
    assert summary == {
        "run_id": "r1", "delivery_mode": "patch_first", "target": "main", "base": "b" * 40,
        "head": None, "integrated": ["a"], "no_diff": [], "rejected": ["b"], "failed": [],
        "skipped": [], "unfinished": ["c", "d"], "failure_codes": {"b": "lane_failed"},
        "counts": {"pending": 2, "running": 0, "integrated": 1, "no_diff": 0, "rejected": 1,
                   "failed": 0, "skipped": 0},
        "finished": False, "interrupted": True, "resumed": 0, "stranded": False,
        "backpressure": [{"unit": "b", "old": 2, "new": 1, "reason": "rejected"}],
        "exit_code": None}
    events = ledger_view.filter_events(summary)["events"]
    assert list(events) == ["run_id", "delivery_mode", "target", "base", "integrated",
                            "rejected", "unfinished", "failure_codes", "counts",
                            "interrupted", "backpressure"]


def test_run_summary_after_a_resume_that_finished() -> None:
    records = [
        STARTED,
        record(2, "unit_finished", unit="a", status="integrated", failure_code=None),
        record(3, "run_interrupted", units=["b"]),
        record(4, "run_resumed", pid=1, stopped_process_groups=[]),
        record(5, "unit_finished", unit="b", status="failed", failure_code="proof_failed"),
        record(6, "unit_finished", unit="c", status="skipped",
               failure_code="dependency_failed"),
        record(7, "unit_finished", unit="d", status="no_diff", failure_code=None),
        record(8, "run_finished", counts={}, exit_code=1, head="h" * 40, stranded=False),
    ]
    summary = ledger_view.run_summary("r1", records)
    assert (summary["interrupted"], summary["finished"], summary["resumed"]) == \
        (False, True, 1)
    assert (summary["failed"], summary["skipped"], summary["no_diff"]) == (["b"], ["c"], ["d"])
    assert summary["head"] == "h" * 40 and summary["exit_code"] == 1
    assert summary["failure_codes"] == {"b": "proof_failed", "c": "dependency_failed"}


def test_a_ledger_without_run_started_is_refused() -> None:
    with pytest.raises(UsageError, match="no run_started"):
        ledger_view.run_summary("r1", [record(1, "unit_finished", unit="a")])


def test_run_summary_of_a_run_just_started_is_json() -> None:
    summary = ledger_view.run_summary("r1", [STARTED])
    assert json.loads(json.dumps(summary))["unfinished"] == ["a", "b", "c", "d"]
