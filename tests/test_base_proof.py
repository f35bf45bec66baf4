"""The proof on the run's base: run once per distinct proof command, beside the first
units' lanes; a base that fails its own proof stops the run (exit 3), nothing lands."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from conftest import git, no_worktrees_left, one_error_line, state_dir, wtmesh

from worktree_mesh import resume

KILLED = -signal.SIGKILL


def wait_for(path: Path) -> str:
    """Shell words that wait until ``path`` exists, and fail if it never does (a lane
    that writes it would then not have run beside the proof)."""
    return (f"i=0; while [ ! -e {path} ]; do i=$((i+1)); [ $i -gt 2400 ] && "
            f"{{ echo {path} never came >&2; exit 9; }}; sleep 0.05; done")


def appending(runs: Path, name: str) -> str:
    """A proof that appends its name and the tree it sees to ``runs``."""
    return f'echo "{name} $(git rev-parse HEAD^{{tree}})" >> {runs}'


def writer(unit_id: str, file: str, *, first: str = "", **extra: Any) -> dict[str, Any]:
    return {"id": unit_id, "objective": f"write {file}", "unit_scope": file,
            "lanes": {"coder": {"command": f"{first}echo {unit_id} > {file}"}}, **extra}


def ledger(repo: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in state_dir(repo).glob("runs/*/ledger.jsonl")
            for line in path.read_text().splitlines()]


def proven(runs: Path, name: str, tree: str) -> int:
    return runs.read_text().splitlines().count(f"{name} {tree}")


def test_a_red_base_stops_the_run_and_every_lane(repo: Path, write_plan: Any,
                                                 tmp_path: Path) -> None:
    started = tmp_path / "lane-started"
    # The proof fails on the base once the first lane is running: it is stopped then.
    plan = write_plan({
        "max_active": 2, "sandbox_writable": [str(tmp_path)],
        "proof_command": f"{wait_for(started)}; echo the base is red; exit 1",
        "units": [
            {"id": "u1", "objective": "hang", "unit_scope": "a.txt",
             "lanes": {"coder": {"command": f"touch {started}; exec sleep 600"}}},
            writer("u2", "b.txt", depends_on=["u1"]),
        ]})
    base = git(repo, "rev-parse", "main")
    res = wtmesh("run", plan, "--json", cwd=repo, timeout=120)  # the lane would wait on
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    summary = res.json()
    assert summary["exit_code"] == 3
    states = {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}
    assert states == {"u1": ("failed", "delivery_blocked"), "u2": ("failed", "delivery_blocked")}
    log = state_dir(repo) / "runs" / summary["run_id"] / "base-proof.log"
    finished = [r for r in ledger(repo) if r["event"] == "unit_finished"]
    assert len(finished) == 2
    for record in finished:
        assert record["notes"].startswith(f"the base {base[:12]} fails its own proof `"), record
        assert f"(log: {log})" in record["notes"], record
    assert "the base is red" in log.read_text()
    assert git(repo, "rev-parse", "main") == base
    assert not list(resume._processes_of_run(summary["run_id"]))
    (record,) = [r for r in ledger(repo) if r["event"] == "base_proof"]
    assert (record["status"], record["base"]) == ("fail", base)
    assert f"wtmesh: the base {base[:12]} fails its own proof" in res.stderr
    assert no_worktrees_left(repo)


def test_the_base_is_proven_once_per_proof_beside_the_first_lanes(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    runs, started = tmp_path / "runs", tmp_path / "lane-started"
    # The plan's proof waits on the base for u1's lane to start: were the base proven
    # before any lane started, it would wait in vain.
    proof_a = f"[ -e {started} ] || {{ {wait_for(started)}; }}; {appending(runs, 'A')}"
    plan = write_plan({
        "max_active": 2, "sandbox_writable": [str(tmp_path)], "proof_command": proof_a,
        "units": [
            writer("u1", "a.txt", first=f"touch {started}; "),
            writer("u2", "b.txt"),
            writer("u3", "c.txt", proof_command=appending(runs, "B")),
            writer("u4", "d.txt", proof_command=None),
        ]})
    base_tree = git(repo, "rev-parse", "main^{tree}")
    res = wtmesh("run", plan, cwd=repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert proven(runs, "A", base_tree) == 1
    assert proven(runs, "B", base_tree) == 1
    records = [r for r in ledger(repo) if r["event"] == "base_proof"]
    assert [(r["status"], r["command"]) for r in records] == [
        ("pass", proof_a), ("pass", appending(runs, "B"))]
    base = git(repo, "rev-parse", "main~4")
    assert f"base {base[:12]} proof `{proof_a}` passed in " in res.stdout


def test_a_candidate_whose_tree_is_the_base_is_not_proven_again(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plan = write_plan({
        "sandbox_writable": [str(tmp_path)], "proof_command": appending(runs, "A"),
        "units": [
            writer("add", "extra.txt"),
            {"id": "remove", "objective": "remove it again", "unit_scope": "extra.txt",
             "depends_on": ["add"], "lanes": {"coder": {"command": "rm extra.txt"}}},
        ]})
    base_tree = git(repo, "rev-parse", "main^{tree}")
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert git(repo, "rev-parse", "main^{tree}") == base_tree
    assert proven(runs, "A", base_tree) == 1
    (removal,) = [r for r in ledger(repo)
                  if r["event"] == "proof_finished" and r["unit"] == "remove"]
    assert removal.get("cached") is True


def test_a_resumed_run_does_not_prove_the_base_again(repo: Path, write_plan: Any,
                                                     tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plan = write_plan({"sandbox_writable": [str(tmp_path)],
                       "proof_command": appending(runs, "A"),
                       "units": [writer("u1", "a.txt"), writer("u2", "b.txt")]})
    base_tree = git(repo, "rev-parse", "main^{tree}")
    # Killed once the first candidate is made: the base was proven before it.
    first = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:apply"})
    assert first.returncode == KILLED, first.stderr
    assert proven(runs, "A", base_tree) == 1
    res = wtmesh("run", plan, "--resume", cwd=repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert proven(runs, "A", base_tree) == 1
    records = [r for r in ledger(repo) if r["event"] == "base_proof"]
    assert [(r["status"], r.get("kept", False)) for r in records] == [
        ("pass", False), ("pass", True)]
    assert "passed before the interruption: not run again" in res.stdout


def test_resume_refuses_a_lane_program_that_is_gone(repo: Path, write_plan: Any,
                                                    tmp_path: Path) -> None:
    agent = tmp_path / "bin" / "agent"
    agent.parent.mkdir()
    agent.write_text("#!/bin/sh\necho {} > a.txt\n")
    agent.chmod(0o755)
    plan = write_plan({"proof_command": "true", "units": [
        {"id": "u1", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": [str(agent)]}}}]})
    first = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:lane"})
    assert first.returncode == KILLED, first.stderr
    moved = agent.with_name("moved")
    os.rename(agent, moved)
    (run_dir,) = state_dir(repo).glob("runs/*")
    before = (run_dir / "ledger.jsonl").read_bytes()
    line = one_error_line(wtmesh("run", plan, "--resume", cwd=repo), code=3)
    assert line == (f"wtmesh: error: unit u1, coder lane: {agent} does not exist; "
                    "nothing was started")
    assert (run_dir / "ledger.jsonl").read_bytes() == before
    os.rename(moved, agent)
    res = wtmesh("run", plan, "--resume", cwd=repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
