"""Bad input to the CLI: one clear line on stderr, the right exit code, no traceback, and
nothing changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import git, lane, one_error_line, repo_snapshot, state_dir, wtmesh


def assert_unchanged(repo: Path, before: dict[str, Any]) -> None:
    """No ref, worktree, HEAD, index or file changed, and no state (not even a lock
    file) was written."""
    assert not state_dir(repo).exists()
    assert repo_snapshot(repo) == before


@pytest.fixture
def plan(write_plan: Callable[..., Path]) -> Path:
    """A valid plan whose unit would add a file."""
    return write_plan({"lanes": {"coder": {"command": lane("act.py", "write:new.txt=new\\n")}},
                       "units": [{"id": "u1", "objective": "Add a file"}]})


# -- no repository -------------------------------------------------------------------------


def test_run_outside_a_repository(tmp_path: Path, plan: Path) -> None:
    outside = tmp_path / "outside" / "work"
    outside.mkdir(parents=True)
    res = wtmesh("run", plan, cwd=outside,
                 env={"GIT_CEILING_DIRECTORIES": str(outside.parent)})
    line = one_error_line(res, 3)
    assert "not inside a git repository" in line and str(outside) in line
    assert res.stdout == ""
    assert list(outside.iterdir()) == []
    assert list(outside.parent.iterdir()) == [outside]


def test_repo_option_pointing_at_a_non_repository(tmp_path: Path, repo: Path,
                                                  plan: Path) -> None:
    """``--repo`` wins over the repository containing the current directory."""
    elsewhere = tmp_path / "ceiling" / "plain"
    elsewhere.mkdir(parents=True)
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, "--repo", elsewhere, cwd=repo,
                 env={"GIT_CEILING_DIRECTORIES": str(elsewhere.parent)})
    line = one_error_line(res, 3)
    assert str(elsewhere) in line and "git repository" in line
    assert list(elsewhere.iterdir()) == []
    assert_unchanged(repo, before)


def test_repo_option_pointing_nowhere(tmp_path: Path, repo: Path, plan: Path) -> None:
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, "--repo", tmp_path / "missing", cwd=repo)
    line = one_error_line(res, 3)
    assert str(tmp_path / "missing") in line
    assert not (tmp_path / "missing").exists()
    assert_unchanged(repo, before)


def test_repo_option_runs_on_that_repository(tmp_path: Path, repo: Path, plan: Path) -> None:
    """The positive side of ``--repo``: run from an unrelated directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = wtmesh("run", plan, "--repo", repo, cwd=elsewhere,
                 env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert (repo / "new.txt").read_text() == "new\n"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", ""])
def test_bad_landing_window_is_a_usage_error(repo: Path, plan: Path, value: str) -> None:
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, cwd=repo, env={"WTMESH_LANDING_WINDOW_S": value})
    line = one_error_line(res, 2)
    assert "WTMESH_LANDING_WINDOW_S" in line and repr(value) in line
    assert_unchanged(repo, before)


# -- a dirty target ------------------------------------------------------------------------


def test_modified_tracked_file_refuses_to_start(repo: Path, plan: Path) -> None:
    ops = repo / "calc" / "ops.py"
    dirty = ops.read_bytes() + b"\n# my unsaved work \xe2\x9c\x93\r\n"
    ops.write_bytes(dirty)
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, cwd=repo)
    line = one_error_line(res, 3)
    assert "uncommitted changes" in line and "'main'" in line
    assert ops.read_bytes() == dirty
    assert not (repo / "new.txt").exists()
    assert_unchanged(repo, before)


def test_staged_change_refuses_to_start(repo: Path, plan: Path) -> None:
    readme = repo / "README.md"
    staged = readme.read_bytes() + b"staged line\n"
    readme.write_bytes(staged)
    git(repo, "add", "README.md")
    # And a staged new file, which exists only in the index.
    (repo / "added.txt").write_bytes(b"only in the index\n")
    git(repo, "add", "added.txt")
    before = repo_snapshot(repo)
    assert "staged line" in before["staged"] and "added.txt" in before["staged"]
    res = wtmesh("run", plan, cwd=repo)
    line = one_error_line(res, 3)
    assert "uncommitted changes" in line
    assert readme.read_bytes() == staged
    assert (repo / "added.txt").read_bytes() == b"only in the index\n"
    assert_unchanged(repo, before)


def test_staged_then_reverted_in_worktree_still_refuses(repo: Path, plan: Path) -> None:
    """The index differs from HEAD even though the file on disk does not."""
    readme = repo / "README.md"
    original = readme.read_bytes()
    readme.write_bytes(original + b"staged\n")
    git(repo, "add", "README.md")
    readme.write_bytes(original)
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, cwd=repo)
    one_error_line(res, 3)
    assert readme.read_bytes() == original
    assert_unchanged(repo, before)


def test_dirty_target_checked_out_in_another_worktree(tmp_path: Path, repo: Path,
                                                      plan: Path) -> None:
    """The target's worktree is the one that must be clean, wherever it is."""
    git(repo, "branch", "feature")
    other = tmp_path / "feature-wt"
    git(repo, "worktree", "add", "-q", str(other), "feature")
    (other / "README.md").write_text("changed in the feature worktree\n")
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, "--target", "feature", cwd=repo)
    line = one_error_line(res, 3)
    assert "'feature'" in line and str(other) in line
    assert (other / "README.md").read_text() == "changed in the feature worktree\n"
    assert_unchanged(repo, before)


def test_untracked_file_does_not_block(repo: Path, plan: Path) -> None:
    (repo / "notes.txt").write_bytes(b"my notes\n")
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.json()["units"][0]["status"] == "integrated"
    assert (repo / "new.txt").read_text() == "new\n"
    assert (repo / "notes.txt").read_bytes() == b"my notes\n"
    assert git(repo, "status", "--porcelain") == "?? notes.txt"
    assert git(repo, "log", "-1", "--format=%s") == "u1: Add a file"


def test_patch_first_does_not_mind_a_dirty_target(repo: Path, plan: Path) -> None:
    """patch_first never touches the target or the user's worktree."""
    ops = repo / "calc" / "ops.py"
    dirty = ops.read_bytes() + b"# mine\n"
    ops.write_bytes(dirty)
    head = git(repo, "rev-parse", "HEAD")
    res = wtmesh("run", plan, "--delivery", "patch_first", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert ops.read_bytes() == dirty
    assert git(repo, "rev-parse", "HEAD") == head
    assert not (repo / "new.txt").exists()


# -- bad target and base ---------------------------------------------------------------------


def test_target_branch_that_does_not_exist(repo: Path, plan: Path) -> None:
    before = repo_snapshot(repo)
    res = wtmesh("run", plan, "--target", "nope", cwd=repo)
    line = one_error_line(res, 2)
    assert "'nope'" in line and "does not exist" in line
    assert_unchanged(repo, before)


def test_plan_target_that_does_not_exist(repo: Path, write_plan: Callable[..., Path]) -> None:
    plan = write_plan({"target": "release", "lanes": {"coder": {"command": lane("act.py")}},
                       "units": [{"id": "u1", "objective": "o"}]})
    before = repo_snapshot(repo)
    line = one_error_line(wtmesh("run", plan, cwd=repo), 2)
    assert "'release'" in line and "does not exist" in line
    assert_unchanged(repo, before)


def test_detached_head_without_target(repo: Path, plan: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    head = git(repo, "rev-parse", "HEAD")
    refs = git(repo, "for-each-ref")
    line = one_error_line(wtmesh("run", plan, cwd=repo), 2)
    assert "detached" in line and "--target" in line
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "for-each-ref") == refs
    assert not state_dir(repo).exists()


@pytest.mark.parametrize("base", ["nope", "HEAD~5", "HEAD^{tree}", "0" * 40, "--all"])
def test_base_that_is_not_a_commit(repo: Path, plan: Path, base: str) -> None:
    before = repo_snapshot(repo)
    line = one_error_line(wtmesh("run", plan, f"--base={base}", cwd=repo), 2)
    assert repr(base) in line and "not a commit" in line
    assert_unchanged(repo, before)


# -- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragment"), [
    (["run", "PLAN", "--bogus"], "--bogus"),
    (["--bogus"], "--bogus"),
    (["run"], "Missing argument 'PLAN'"),
    (["validate"], "Missing argument 'PLAN'"),
    (["run", "PLAN", "--max-active"], "--max-active"),
    (["run", "PLAN", "--max-active", "0"], "--max-active"),
    (["run", "PLAN", "--max-active", "-3"], "--max-active"),
    (["run", "PLAN", "--max-active", "two"], "--max-active"),
    (["run", "PLAN", "--delivery", "later"], "--delivery"),
    (["run", "PLAN", "--lock-timeout", "-1"], "--lock-timeout"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors(repo: Path, plan: Path, args: list[str], fragment: str) -> None:
    before = repo_snapshot(repo)
    argv = [str(plan) if a == "PLAN" else a for a in args]
    res = wtmesh(*argv, cwd=repo)
    line = one_error_line(res, 2)
    assert fragment in line
    assert res.stdout == ""
    assert_unchanged(repo, before)


def test_option_overrides_plan_value(repo: Path, write_plan: Callable[..., Path]) -> None:
    """``--max-active 0`` is refused even when the plan's value is fine, and a valid one
    overrides the plan's (recorded in the ledger)."""
    plan = write_plan({"max_active": 3, "lanes": {"coder": {"command": lane("act.py")}},
                       "units": [{"id": "u1", "objective": "o"}]})
    one_error_line(wtmesh("run", plan, "--max-active", "0", cwd=repo), 2)
    res = wtmesh("run", plan, "--max-active", "1", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    run_id = res.json()["run_id"]
    ledger = (state_dir(repo) / "runs" / run_id / "ledger.jsonl").read_text().splitlines()
    started = [e for e in map(json.loads, ledger) if e["event"] == "run_started"]
    assert [e["max_active"] for e in started] == [1]


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["run", "--help"],
                                  ["validate", "--help"]])
def test_help(tmp_path: Path, args: list[str]) -> None:
    res = wtmesh(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert res.stdout.startswith("Usage: wtmesh")


def test_run_help_lists_its_options(tmp_path: Path) -> None:
    out = wtmesh("run", "--help", cwd=tmp_path).stdout
    for option in ("--repo", "--max-active", "--delivery", "--target", "--base",
                   "--patch-dir", "--keep-worktrees", "--lock-timeout", "--json"):
        assert option in out


def test_top_level_help_lists_commands(tmp_path: Path) -> None:
    out = wtmesh("--help", cwd=tmp_path).stdout
    assert "run" in out and "validate" in out
