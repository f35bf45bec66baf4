"""A budget-aware run (SPEC 7): the clamp, backpressure, and --learnings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import lane, wtmesh

REJECT = json.dumps({"id": "r", "decision": "reject",
                     "failure_code": "requires_clarification", "notes": "which file?"})


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git/wtmesh/runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_plan(tmp_path: Path, units: list[dict[str, Any]]) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"proof_command": "test ! -e broken.txt", "units": units}))
    return plan


def writer(uid: str, sleep: float = 0.3) -> dict[str, Any]:
    return {"id": uid, "objective": f"write {uid}", "unit_scope": f"{uid}.txt",
            "lanes": {"coder": {"command": lane("act.py", f"sleep:{sleep}",
                                                f"write:{uid}.txt={uid}\\n")}}}


def test_the_budget_clamps_max_active_and_is_recorded(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, [writer("a", 0)])
    # strict 20 between 10 and 33: linear_clamp, floor(12 * 10 / 23) = 5; asked for 8.
    res = wtmesh("run", plan, "--max-active", "8", "--remaining-five-hour", "20",
                 "--remaining-weekly", "50", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    started = ledger(repo, res.json()["run_id"])[0]
    assert started["max_active"] == 5
    assert started["budget"]["mode"] == "linear_clamp"
    assert started["budget"]["max_active_units"] == 5


def test_backpressure_halves_after_a_rejection_and_recovers_after_integrations(
        repo: Path, tmp_path: Path) -> None:
    units = [{"id": "r", "objective": "unclear", "unit_scope": "r.txt",
              "lanes": {"coder": {"command": lane("act.py", f"result:{REJECT}")}}}]
    units += [writer(uid) for uid in ("a", "b", "c", "d", "e")]
    plan = write_plan(tmp_path, units)
    res = wtmesh("run", plan, "--max-active", "4", "--remaining-five-hour", "90",
                 "--remaining-weekly", "90", "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    records = ledger(repo, res.json()["run_id"])
    changes = [(r["old"], r["new"], r["reason"], r["unit"]) for r in records
               if r["event"] == "backpressure"]
    # Halved by the rejection, then one back per clean integration up to the clamp.
    assert [c[:3] for c in changes] == [(4, 2, "rejected"), (2, 3, "integrated"),
                                        (3, 4, "integrated")]
    assert changes[0][3] == "r"
    # No unit started while as many as the limit of the moment were running.
    limit, running, starts = 4, set(), 0
    for record in records:
        if record["event"] == "backpressure":
            limit = record["new"]
        elif record["event"] == "unit_state" and record.get("phase") == "starting":
            assert len(running) < limit, (record, running, limit)
            running.add(record["unit"])
            starts += 1
        elif record["event"] == "lanes_done":
            running.discard(record["unit"])
    assert starts == 6
    assert "2 units at once (was 4): r ended" in res.stderr


def test_the_rejection_code_is_the_reason_when_it_is_a_backoff_code(repo: Path,
                                                                     tmp_path: Path) -> None:
    bad = '{"id": "t", "decision": "reject", "failure_code": "timeout_retry_exhausted"}'
    plan = write_plan(tmp_path, [
        {"id": "t", "objective": "o", "unit_scope": "t.txt",
         "lanes": {"coder": {"command": lane("act.py", f"result:{bad}")}}}])
    res = wtmesh("run", plan, "--max-active", "2", "--remaining-five-hour", "90",
                 "--remaining-weekly", "90", "--json", cwd=repo)
    changes = [r for r in ledger(repo, res.json()["run_id"]) if r["event"] == "backpressure"]
    assert [(c["old"], c["new"], c["reason"]) for c in changes] == [
        (2, 1, "timeout_retry_exhausted")]


def test_without_a_budget_there_is_no_backpressure(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, [
        {"id": "r", "objective": "o", "unit_scope": "r.txt",
         "lanes": {"coder": {"command": lane("act.py", f"result:{REJECT}")}}},
        writer("a", 0)])
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert not [r for r in ledger(repo, res.json()["run_id"]) if r["event"] == "backpressure"]


def test_learnings_record_each_failed_or_rejected_unit_once(repo: Path,
                                                            tmp_path: Path) -> None:
    learned = tmp_path / "learnings.jsonl"
    plan = write_plan(tmp_path, [
        {"id": "r", "objective": "Unclear task", "unit_scope": "r.txt",
         "lanes": {"coder": {"command": lane("act.py", f"result:{REJECT}")}}},
        {"id": "breaks", "objective": "Break it", "unit_scope": ["broken.txt"],
         "lanes": {"coder": {"command": lane("act.py", "write:broken.txt=x")}}},
        writer("fine", 0)])
    res = wtmesh("run", plan, "--learnings", learned, "--json", cwd=repo)
    assert res.returncode == 1, res.stderr
    records = [json.loads(line) for line in learned.read_text().splitlines()]
    assert sorted((r["status"], r["source"].rsplit(" ", 1)[-1]) for r in records) == [
        ("failed", "breaks"), ("rejected", "r")]
    for record in records:
        assert set(record) == {"id", "captured_at", "status", "learning", "evidence",
                               "application", "source", "fingerprint"}
        assert re.fullmatch(r"lrn-\d{8}T\d{6}Z-[0-9a-f]{8}", record["id"])
    rejected = next(r for r in records if r["status"] == "rejected")
    assert rejected["evidence"] == "which file?"
    # The same failures in a later run add nothing.
    (repo / "broken.txt").unlink(missing_ok=True)
    assert wtmesh("run", plan, "--learnings", learned, cwd=repo).returncode == 1
    assert len(learned.read_text().splitlines()) == 2


def test_budget_usage_errors(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, [writer("a", 0)])
    res = wtmesh("run", plan, "--remaining-five-hour", "50", cwd=repo)
    assert res.returncode == 2
    assert res.stderr == ("wtmesh: error: --remaining-five-hour and --remaining-weekly go "
                          "together\n")
    res = wtmesh("run", plan, "--resume", "--learnings", tmp_path / "l.jsonl", cwd=repo)
    assert res.returncode == 2 and "cannot change" in res.stderr
    assert not (repo / ".git/wtmesh").exists()
