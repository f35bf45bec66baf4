"""Names in the state directory: one per run and per unit, never a path that climbs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import git, one_error_line, wtmesh
from hypothesis import given
from hypothesis import strategies as st

from worktree_mesh.state import safe_name, unit_ref_prefix

unit_ids = st.from_regex(re.compile(r"[A-Za-z0-9._-]+", re.ASCII), fullmatch=True)
# Dots behind a short prefix (none, or what an escaped spelling might start with): where
# the spellings of different ids are likeliest to meet.
near_ids = st.builds(lambda prefix, dots: prefix + dots,
                     st.sampled_from(["", "_", "-", "2e", "_2e", "x"]),
                     st.text(alphabet=".", min_size=1, max_size=3))
any_id = unit_ids | near_ids


@given(st.lists(any_id, unique=True, max_size=30))
def test_unit_directory_names_are_one_per_id(ids: list[str]) -> None:
    """Even where the file system ignores case (two ids apart only by case included)."""
    ids += [uid.swapcase() for uid in ids if uid.swapcase() not in ids]
    assert len({safe_name(uid).casefold() for uid in ids}) == len(ids)


@given(any_id)
def test_a_unit_directory_name_is_one_plain_component(unit_id: str) -> None:
    name = safe_name(unit_id)
    assert name not in (".", "..") and "/" not in name and name


def test_dot_ids_and_their_underscored_twins_are_apart() -> None:
    assert len({safe_name(uid) for uid in (".", "..", "_.", "_..", "2e2e", "...")}) == 6


@given(st.lists(any_id, unique=True, max_size=30))
def test_unit_ref_prefixes_are_one_per_id(ids: list[str]) -> None:
    """Even as loose refs where the file system ignores case."""
    ids += [uid.swapcase() for uid in ids if uid.swapcase() not in ids]
    assert len({unit_ref_prefix("r", uid).casefold() for uid in ids}) == len(ids)


def test_ids_apart_only_by_case_get_directories_apart_and_readable() -> None:
    assert [safe_name(uid) for uid in ("Fix-Parser", "fix-parser", "FIX")] == \
        ["^fix-^parser", "fix-parser", "^f^i^x"]


def test_two_units_apart_only_by_case_keep_their_own_files(
        repo: Path, write_plan: Callable[..., Path]) -> None:
    """``Fix`` and ``fix`` run side by side, each with its own directory and refs, whose
    names stay apart where the file system ignores case; both land."""
    plan = write_plan({"max_active": 2, "units": [
        {"id": uid, "objective": "o", "unit_scope": f"{uid}.txt",
         "lanes": {"coder": {"command": f"echo {uid} > {uid}.txt"}}}
        for uid in ("Fix", "fix")]})
    res = wtmesh("run", plan, "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert [u["status"] for u in res.json()["units"]] == ["integrated", "integrated"]
    units = repo / ".git/wtmesh/runs" / res.json()["run_id"] / "units"
    assert sorted(p.name for p in units.iterdir()) == ["^fix", "fix"]
    assert [json.loads((units / name / "unit.json").read_text())["id"]
            for name in ("^fix", "fix")] == ["Fix", "fix"]
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/wtmesh/").split()
    assert len({ref.casefold() for ref in refs}) == len(refs) >= 2
    assert git(repo, "show", "main:Fix.txt") == "Fix"
    assert git(repo, "show", "main:fix.txt") == "fix"


# -- the state directory itself ----------------------------------------------------------

@pytest.fixture
def plan(write_plan: Callable[..., Path]) -> Path:
    return write_plan({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})


def refused_untouched(repo: Path, plan: Path, fragment: str) -> None:
    """``wtmesh run`` refuses in one line, exit 3, and neither the target nor the
    worktrees changed."""
    head = git(repo, "rev-parse", "main")
    line = one_error_line(wtmesh("run", plan, cwd=repo), 3)
    assert fragment in line, line
    assert git(repo, "rev-parse", "main") == head
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_state_dir_that_is_a_file_is_refused(repo: Path, plan: Path) -> None:
    (repo / ".git/wtmesh").write_text("not a directory\n")
    refused_untouched(repo, plan, "is not a directory")
    assert (repo / ".git/wtmesh").read_text() == "not a directory\n"


def test_a_symlinked_state_dir_is_refused(repo: Path, plan: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / ".git/wtmesh").symlink_to(elsewhere)
    refused_untouched(repo, plan, "is a symbolic link")
    assert not list(elsewhere.iterdir())  # nothing made through the link


def test_a_dangling_state_dir_link_is_refused_and_makes_nothing(
        repo: Path, plan: Path, tmp_path: Path) -> None:
    target = tmp_path / "gone" / "state"
    (repo / ".git/wtmesh").symlink_to(target)
    refused_untouched(repo, plan, "is a symbolic link")
    assert not (tmp_path / "gone").exists()


def test_resuming_through_a_symlinked_state_dir_is_refused(
        repo: Path, plan: Path, tmp_path: Path) -> None:
    killed = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:lane"})
    assert killed.returncode == -9
    moved = tmp_path / "moved-state"
    (repo / ".git/wtmesh").rename(moved)
    (repo / ".git/wtmesh").symlink_to(moved)
    line = one_error_line(wtmesh("run", plan, "--resume", cwd=repo), 3)
    assert "is a symbolic link" in line


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for everyone, root included: a read-only bind mount, else an
    immutable directory, else (not root) its write bits off; skips where none works."""
    undo: list[list[str]] = []
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(path), str(path)],
                          capture_output=True).returncode == 0:
            undo.append(["umount", str(path)])
            if subprocess.run(["mount", "-o", "remount,ro,bind", str(path)],
                              capture_output=True).returncode != 0:
                subprocess.run(undo.pop(), check=True)
        if not undo and shutil.which("chattr") and subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode == 0:
            undo.append(["chattr", "-i", str(path)])
    else:
        path.chmod(0o555)
        undo.append(["chmod", "755", str(path)])
    try:
        probe = path / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a directory read-only here: no read-only bind mount "
                        "(needs CAP_SYS_ADMIN) nor immutable flag (needs CAP_LINUX_IMMUTABLE "
                        "and a file system that has it)")
        yield
    finally:
        for command in reversed(undo):
            subprocess.run(command, check=True)


@pytest.mark.parametrize("where", ["state dir", "git dir"])
def test_a_read_only_state_dir_is_refused(repo: Path, plan: Path, where: str) -> None:
    """Where the state directory, or the git directory it would be made in, cannot be
    written (a read-only mount, an immutable directory)."""
    state = repo / ".git/wtmesh"
    if where == "state dir":
        state.mkdir()
    with read_only(state if where == "state dir" else repo / ".git"):
        refused_untouched(repo, plan, "cannot write wtmesh's state in")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_worktrees_home_that_cannot_be_made_is_refused(
        repo: Path, plan: Path, tmp_path: Path, where: str) -> None:
    """``WTMESH_WORKTREES`` naming a file, or a path through one: one line, exit 3, and
    no run is left behind (none to resume, none for gc)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    home = blocker if where == "a file" else blocker / "worktrees"
    res = wtmesh("run", plan, cwd=repo, env={"WTMESH_WORKTREES": str(home)})
    line = one_error_line(res, 3)
    assert "cannot make the run's worktrees directory" in line, line
    assert str(home) in line
    runs = repo / ".git/wtmesh/runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert blocker.read_text() == "a file\n"
