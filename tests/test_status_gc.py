"""`wtmesh status` and `wtmesh gc` on finished, failed, interrupted and live runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import git, lane, no_worktrees_left, run_worktrees, state_dir, wtmesh

KILLED = -9


def plan_file(tmp_path: Path, units: list[dict[str, Any]], **extra: Any) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"max_active": 2, "proof_command": "test ! -e broken.txt",
                                "units": units, **extra}))
    return plan


def unit(uid: str, *actions: str, **extra: Any) -> dict[str, Any]:
    return {"id": uid, "objective": f"do {uid}", "unit_scope": [f"{uid}.txt", "broken.txt"],
            "lanes": {"coder": {"command": lane("act.py", *(actions or
                                                             (f"write:{uid}.txt={uid}\\n",)))}},
            **extra}


def wtmesh_refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/wtmesh/").splitlines()


def interrupted_run(repo: Path, tmp_path: Path) -> Path:
    """Killed while unit b's lanes had finished and c had not started."""
    plan = plan_file(tmp_path, [unit("a"), unit("b"), unit("c", depends_on=["a"])],
                     max_active=1)
    res = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:lanes-done:2"})
    assert res.returncode == KILLED, res.stderr
    return plan


def test_status_of_an_interrupted_run_says_what_resume_will_do(repo: Path,
                                                                tmp_path: Path) -> None:
    plan = interrupted_run(repo, tmp_path)
    res = wtmesh("status", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "interrupted: its process stopped without finishing" in res.stdout
    assert "resuming it would:" in res.stdout
    assert f"resume with: wtmesh run {plan} --resume " in res.stdout

    status = wtmesh("status", "--json", cwd=repo).json()
    assert status["state"] == "interrupted" and status["exit_code"] is None
    actions = {u["id"]: u["resume"]["action"] for u in status["units"]}
    # a landed; b's lanes finished (its work is on its ref); c never started.
    assert actions == {"a": "landed", "b": "integrate", "c": "start"}
    assert status["resume"]["to_run"] == ["c"]
    assert status["resume"]["to_integrate"] == ["b"]

    # --resume says the same, then does it: b's lanes are not run again.
    res = wtmesh("run", plan, "--resume", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "its lanes had finished: their work is integrated without running them again" \
        in res.stdout
    after = wtmesh("status", "--json", cwd=repo).json()
    assert after["state"] == "finished" and after["exit_code"] == 0 and after["resume"] is None
    assert {u["id"]: u["attempts"] for u in after["units"]} == {"a": 1, "b": 1, "c": 1}


def test_status_of_a_failed_run_shows_the_evidence(repo: Path, tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [
        unit("ok"),
        unit("breaks", "write:broken.txt=x"),
        unit("crashes", "exit:4", "write:never.txt=x"),
    ], proof_command="if [ -e broken.txt ]; then echo 'broken.txt must not exist'; exit 1; fi")
    assert wtmesh("run", plan, cwd=repo).returncode == 1
    status = wtmesh("status", "--json", cwd=repo).json()
    by_id = {u["id"]: u for u in status["units"]}
    assert status["state"] == "finished" and status["exit_code"] == 1
    assert by_id["ok"]["state"] == "integrated" and by_id["ok"]["evidence"] == ""
    assert by_id["breaks"]["failure_code"] == "proof_failed"
    assert by_id["breaks"]["evidence"] == "proof.log: broken.txt must not exist"
    assert by_id["crashes"]["failure_code"] == "lane_failed"
    text = wtmesh("status", status["run_id"], cwd=repo).stdout
    assert "finished, exit code 1" in text and "nothing to resume" in text


def test_status_without_runs_or_with_a_wrong_id_is_one_line(repo: Path) -> None:
    res = wtmesh("status", cwd=repo)
    assert res.returncode == 2
    assert res.stderr == "wtmesh: error: no wtmesh run in this repository yet\n"
    res = wtmesh("status", "nope", cwd=repo)
    assert res.returncode == 2 and "no run 'nope'" in res.stderr


def test_gc_dry_run_lists_and_removes_nothing(repo: Path, tmp_path: Path) -> None:
    interrupted_run(repo, tmp_path)
    refs = wtmesh_refs(repo)
    worktrees = git(repo, "worktree", "list")
    res = wtmesh("gc", "--dry-run", cwd=repo)
    assert res.returncode == 0
    assert "would remove worktree" in res.stdout
    assert "kept run" in res.stdout and "can be resumed" in res.stdout
    assert wtmesh_refs(repo) == refs and git(repo, "worktree", "list") == worktrees


def test_gc_keeps_an_interrupted_runs_work_resumable_then_cleans_it_once_done(
        repo: Path, tmp_path: Path) -> None:
    plan = interrupted_run(repo, tmp_path)
    res = wtmesh("gc", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "removed worktree" in res.stdout
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert wtmesh_refs(repo), "an interrupted run's refs are kept for --resume"
    assert wtmesh("run", plan, "--resume", cwd=repo).returncode == 0
    assert wtmesh_refs(repo), "a finished run's refs stay until gc"
    res = wtmesh("gc", cwd=repo)
    assert "removed ref refs/wtmesh/" in res.stdout
    assert wtmesh_refs(repo) == [] and no_worktrees_left(repo)
    assert not list(state_dir(repo).glob("runs/*/run.lock"))
    # The record of what happened stays.
    assert wtmesh("status", "--json", cwd=repo).json()["exit_code"] == 0
    assert wtmesh("gc", cwd=repo).stdout == "nothing to clean up\n"


def test_gc_unfinished_drops_an_interrupted_runs_refs(repo: Path, tmp_path: Path) -> None:
    interrupted_run(repo, tmp_path)
    assert wtmesh("gc", "--unfinished", cwd=repo).returncode == 0
    assert wtmesh_refs(repo) == [] and no_worktrees_left(repo)


def test_gc_never_touches_a_live_run(repo: Path, tmp_path: Path) -> None:
    go, started = tmp_path / "go", tmp_path / "started"
    plan = plan_file(tmp_path, [{
        "id": "slow", "objective": "o", "unit_scope": "slow.txt",
        "lanes": {"coder": {"command": f"touch {started}; "
                                       f"while [ ! -e {go} ]; do sleep 0.05; done; "
                                       "echo s > slow.txt"}}}],
                     sandbox_writable=[str(tmp_path)])
    run = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan)], cwd=repo,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the lane runs: its worktree is complete
        assert started.exists(), "the lane never started"
        (run_id,) = os.listdir(repo / ".git" / "wtmesh" / "runs")
        home = run_worktrees(repo, run_id)
        before = sorted(home.iterdir())
        assert before, "the run's worktrees are there to keep"
        res = wtmesh("gc", cwd=repo)
        assert res.returncode == 0
        assert "kept run" in res.stdout and "running" in res.stdout
        assert "removed" not in res.stdout
        # Nothing of the run's went (its integration worktree may have come meanwhile).
        assert all((path / ".git").is_dir() for path in before)
    finally:
        go.touch()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert (repo / "slow.txt").read_text() == "s\n"


def test_gc_never_prunes_a_worktree_it_did_not_make(repo: Path, tmp_path: Path) -> None:
    mine = tmp_path / "users-worktree"
    git(repo, "worktree", "add", "-q", "--detach", str(mine))
    subprocess.run(["rm", "-rf", str(mine)], check=True)  # e.g. on an unmounted disk
    interrupted_run(repo, tmp_path)
    assert wtmesh("gc", "--unfinished", cwd=repo).returncode == 0
    assert str(mine) in git(repo, "worktree", "list", "--porcelain")


def test_a_run_id_is_a_name_never_a_path(repo: Path, tmp_path: Path) -> None:
    """A run id from the command line cannot climb out of the state directory, even to
    a directory that holds a ledger."""
    elsewhere = repo / ".git" / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ledger.jsonl").write_text('{"seq": 1, "event": "run_started"}\n')
    for args in (["status", "../elsewhere"], ["log", "../elsewhere", "u1"],
                 ["ledger", "--run", "../elsewhere"]):
        res = wtmesh(*args, cwd=repo)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr == "wtmesh: error: no run '../elsewhere' in this repository\n"


@pytest.mark.parametrize("point", ["admin-claimed:1", "admin-claimed:2", "admin-emptied:1",
                                   "admin-emptied:2"])
def test_a_kill_while_a_worktrees_admin_dir_is_made_or_removed_leaves_nothing_after_gc(
        repo: Path, tmp_path: Path, point: str) -> None:
    """Killed with a worktree's private admin dir half made or half removed: the dir
    says whose it is, so resuming and gc leave nothing of the run's worktrees behind."""
    plan = plan_file(tmp_path, [unit("a"), unit("b"), unit("c")], max_active=1)
    res = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": f"at:{point}"})
    assert res.returncode == KILLED, res.stderr
    resumed = wtmesh("run", plan, "--resume", cwd=repo)
    if resumed.returncode != 0:  # killed before the run had a ledger: start it afresh
        assert "no run to resume" in resumed.stderr or "nothing to resume" in resumed.stderr, \
            resumed.stderr
        assert wtmesh("run", plan, cwd=repo).returncode == 0
    assert sorted(git(repo, "log", "--format=%s", "main").splitlines()) == [
        "a: do a", "b: do b", "c: do c", "initial"]
    assert wtmesh("gc", cwd=repo).returncode == 0
    assert no_worktrees_left(repo)
