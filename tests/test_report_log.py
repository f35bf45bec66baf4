"""report.md, `wtmesh log` and `wtmesh status --watch`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import lane, wtmesh


def mixed(tmp_path: Path, mode: str = "commit_first") -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "delivery_mode": mode,
        "proof_command": "if [ -e broken.txt ]; then echo 'no broken.txt | please'; exit 1; fi",
        "units": [
            {"id": "good", "objective": "Add good", "unit_scope": "good.txt",
             "lanes": {"coder": {"command": lane("act.py", "write:good.txt=1\\n2\\n")}}},
            {"id": "bad", "objective": "Break", "unit_scope": "broken.txt",
             "lanes": {"coder": {"command": lane("act.py", "write:broken.txt=x\\n")}}},
            {"id": "loud", "objective": "Fail loudly", "unit_scope": "loud.txt",
             "lanes": {"coder": {"command": "echo to-stdout; echo 'cannot go on' >&2; "
                                            "exit 5"}}},
        ]}))
    return plan


def table_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("| unit "):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_report_md_tells_the_run(repo: Path, tmp_path: Path) -> None:
    extra = tmp_path / "out" / "review.md"
    res = wtmesh("run", mixed(tmp_path), "--json", "--report", extra, cwd=repo)
    assert res.returncode == 1, res.stderr
    summary: dict[str, Any] = res.json()
    report = (repo / ".git/wtmesh/runs" / summary["run_id"] / "report.md").read_text()
    assert extra.read_text() == report
    assert f"# wtmesh run {summary['run_id']}" in report
    assert "Exit code 1: 1 integrated, 1 rejected, 1 failed." in report
    rows = table_rows(report)
    assert rows["good"][1:5] == ["integrated", "", "1", "+2/-0"]
    assert re.fullmatch(r"\d+\.\d", rows["good"][5])  # the proof's seconds
    assert rows["good"][6] == f"`{summary['units'][0]['commit'][:12]}`"
    assert rows["bad"][1:3] == ["failed", "proof_failed"]
    assert rows["bad"][7] == "proof.log: no broken.txt \\| please"  # the pipe escaped
    assert rows["loud"][1:3] == ["rejected", "lane_failed"]
    assert "cannot go on" in rows["loud"][7]


def test_report_md_lists_the_patch_series(repo: Path, tmp_path: Path) -> None:
    summary = wtmesh("run", mixed(tmp_path, "patch_first"), "--json", cwd=repo).json()
    report = (repo / ".git/wtmesh/runs" / summary["run_id"] / "report.md").read_text()
    assert "## Patches" in report
    assert f"git am --keep-cr {summary['patch_dir']}/*.patch" in report
    assert "1. `0001-good.patch` (good)" in report


def test_log_prints_each_lane_attempt_then_the_proof(repo: Path, tmp_path: Path) -> None:
    summary = wtmesh("run", mixed(tmp_path), "--json", cwd=repo).json()
    run_id = summary["run_id"]
    res = wtmesh("log", run_id, "loud", cwd=repo)
    assert res.returncode == 0
    assert "== coder-1.stdout.log" in res.stdout and "to-stdout" in res.stdout
    assert "== coder-1.stderr.log" in res.stdout and "cannot go on" in res.stdout
    assert res.stdout.index("coder-1.stdout.log") < res.stdout.index("coder-1.stderr.log")
    proof = wtmesh("log", run_id, "bad", "--lane", "proof", cwd=repo)
    assert "== proof.log" in proof.stdout and "no broken.txt" in proof.stdout
    assert "coder-1" not in proof.stdout
    none = wtmesh("log", run_id, "good", "--lane", "fixer", cwd=repo)
    assert none.returncode == 0 and none.stdout.startswith("no fixer logs for unit good")


def test_log_usage_errors(repo: Path, tmp_path: Path) -> None:
    summary = wtmesh("run", mixed(tmp_path), "--json", cwd=repo).json()
    for args, fragment in ((["nope", "good"], "no run 'nope'"),
                           ([summary["run_id"], "zz"], "has no unit 'zz'"),
                           ([summary["run_id"], "good", "--lane", "x"], "--lane")):
        res = wtmesh("log", *args, cwd=repo)
        assert res.returncode == 2 and fragment in res.stderr, (args, res.stderr)
        assert len(res.stderr.splitlines()) == 1


def test_status_watch_follows_a_run_until_it_ends(repo: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{
        "id": "slow", "objective": "o", "unit_scope": "slow.txt",
        "lanes": {"coder": {"command": f"while [ ! -e {go} ]; do sleep 0.05; done; "
                                       "echo s > slow.txt"}}}]}))
    run = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan)],
                           cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = repo / ".git/wtmesh/runs"
    deadline = time.monotonic() + 20
    while not list(runs.glob("*/ledger.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(runs.glob("*/ledger.jsonl")), "the run never started"
    watch = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "status", "--watch",
                              "--json"], cwd=repo, stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    # The lane waits for `go`, so the first status is surely of a running run.
    first = json.loads(watch.stdout.readline())
    assert first["state"] == "running"
    go.touch()
    out, _ = watch.communicate(timeout=60)
    assert run.wait(timeout=60) == 0
    states = [json.loads(line)["state"] for line in out.splitlines()]
    assert states[-1] == "finished"
    assert states[-1:] == ["finished"] and all(s == "running" for s in states[:-1])
