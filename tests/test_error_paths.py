"""Error paths a careful user hits: one line, an exit code, and nothing of theirs lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import lane, one_error_line, state_dir, wtmesh

from worktree_mesh.state import write_atomic
from worktree_mesh.toolkit import learnings


def plan_file(tmp_path: Path, units: list[dict[str, Any]] | None = None) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"proof_command": "true", "units": units or [
        {"id": "ok", "objective": "o", "unit_scope": "ok.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:ok.txt=1\\n")}}}]}))
    return plan


@pytest.mark.parametrize(("flag", "make", "fragment"), [
    ("--report", lambda tmp: tmp / "plan.json", "is the plan itself"),
    ("--learnings", lambda tmp: tmp / "plan.json", "is the plan itself"),
    ("--report", lambda tmp: (tmp / "notes.md", (tmp / "notes.md").write_text("mine\n"))[0],
     "is not a wtmesh report"),
    ("--learnings", lambda tmp: (tmp / "notes.md",
                                 (tmp / "notes.md").write_text("my notes\nlast line"))[0],
     "is not a JSONL file of learnings"),
    ("--report", lambda tmp: (tmp / "afile", (tmp / "afile").write_text("x"))[0] / "r.md",
     "cannot create files in"),
])
def test_output_files_that_would_destroy_or_fail_are_refused_before_the_run(
        repo: Path, tmp_path: Path, flag: str, make: Any, fragment: str) -> None:
    plan = plan_file(tmp_path)
    plan_text = plan.read_text()
    target = make(tmp_path)
    before = target.read_bytes() if target.is_file() else None
    line = one_error_line(wtmesh("run", plan, flag, target, cwd=repo))
    assert fragment in line
    assert plan.read_text() == plan_text
    if before is not None:
        assert target.read_bytes() == before
    assert not state_dir(repo).exists()


def test_learnings_that_cannot_be_written_mid_run_warn_and_the_run_goes_on(
        repo: Path, tmp_path: Path) -> None:
    learned = tmp_path / "learned.jsonl"
    # The failing unit's lane turns the learnings file into a directory first.
    plan = plan_file(tmp_path, [
        {"id": "bad", "objective": "o", "unit_scope": "bad.txt",
         "lanes": {"coder": {"command": f"rm -f {learned}; mkdir {learned}; exit 3"}}},
        {"id": "ok", "objective": "o", "unit_scope": "ok.txt", "depends_on": [],
         "lanes": {"coder": {"command": lane("act.py", "sleep:0.5", "write:ok.txt=1\\n")}}}])
    # Unsandboxed: a sandboxed lane cannot reach the learnings file at all.
    res = wtmesh("run", plan, "--learnings", learned, "--json", "--sandbox", "none", cwd=repo)
    assert res.returncode == 1, res.stderr
    assert "wtmesh: warning: could not write to --learnings" in res.stderr
    assert {u["id"]: u["status"] for u in res.json()["units"]} == {
        "bad": "rejected", "ok": "integrated"}


def test_an_unterminated_last_line_that_is_not_a_record_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text('{"fingerprint": "f0"}\nhand-written note')
    record = learnings.capture("u1", "failed", "proof_failed", "o")
    assert record is not None
    learnings.append_new(path, [record])
    lines = path.read_text().splitlines()
    assert lines[:2] == ['{"fingerprint": "f0"}', "hand-written note"]
    assert json.loads(lines[2])["fingerprint"] == record.fingerprint


def test_a_damaged_ledger_is_one_line_and_does_not_stop_gc_of_other_runs(
        repo: Path, tmp_path: Path) -> None:
    first = wtmesh("run", plan_file(tmp_path), "--json", cwd=repo).json()["run_id"]
    other = tmp_path / "other"
    other.mkdir()
    second = wtmesh("run", plan_file(other, [
        {"id": "two", "objective": "o", "unit_scope": "two.txt",
         "lanes": {"coder": {"command": "echo 2 > two.txt"}}}]), "--json",
        cwd=repo).json()["run_id"]
    ledger = state_dir(repo) / "runs" / first / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    for damage in ('{"event": "unit_sta', '{"x": 1}', "[1]"):
        ledger.write_text("\n".join([lines[0], damage, *lines[1:]]) + "\n")
        line = one_error_line(wtmesh("status", first, cwd=repo), code=3)
        assert "line 2" in line and "the ledger is damaged" in line
    res = wtmesh("gc", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert f"kept run {first}:" in res.stdout and "nothing of it was removed" in res.stdout
    assert f"removed ref refs/wtmesh/{second}/" in res.stdout


def test_log_ignores_files_that_are_not_lane_logs(repo: Path, tmp_path: Path) -> None:
    run_id = wtmesh("run", plan_file(tmp_path), "--json", cwd=repo).json()["run_id"]
    unit_dir = state_dir(repo) / "runs" / run_id / "units" / "ok"
    (unit_dir / "coder-old.stdout.log").write_text("stray\n")
    res = wtmesh("log", run_id, "ok", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "coder-1.stdout.log" in res.stdout and "stray" not in res.stdout


def test_a_failed_whole_file_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    where = tmp_path / "out"
    target = where / "plan.json"
    target.mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"{}")
    assert sorted(p.name for p in where.iterdir()) == ["plan.json"]


def test_init_refuses_a_plan_json_that_is_a_directory(repo: Path) -> None:
    (repo / "plan.json").mkdir()
    (repo / "plan.json" / "keep").write_text("mine")
    line = one_error_line(wtmesh("init", "--force", cwd=repo))
    assert "is a directory" in line
    assert (repo / "plan.json" / "keep").read_text() == "mine"
    assert not [p for p in repo.iterdir() if p.name.endswith(".tmp")]
