"""The worktree pool on its own, on a real repository: reuse, growth up to its size, a
unit that takes a released worktree rather than wait for a fill, and fill failures."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import git, git_first_on_path, wtmesh

from worktree_mesh.git import Git, discover
from worktree_mesh.proc import CommandError
from worktree_mesh.worktrees import WorktreePool


class GatedGit(Git):
    """Real git; ``worktree_add`` waits for ``gate`` once ``hold`` is set, so a test
    decides when a fill finishes."""

    def __init__(self, common_dir: Path) -> None:
        super().__init__(common_dir)
        self.hold = False
        self.gate = threading.Event()
        self.fill_s = 0.0
        self.fills_started = threading.Semaphore(0)

    def worktree_add(self, path: Path, commit: str) -> None:
        self.fills_started.release()
        if self.hold:
            assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.fill_s)
        super().worktree_add(path, commit)


def make_pool(repo: Path, size: int, fill_s: float = 0.0
              ) -> tuple[WorktreePool, GatedGit, str]:
    """A pool whose fills take ``fill_s`` seconds more, as on a large repository."""
    info = discover(repo)
    gated = GatedGit(info.common_dir)
    gated.fill_s = fill_s
    root = info.common_dir / "wtmesh" / "worktrees" / "test-run"
    return WorktreePool(gated, root, size=size), gated, git(repo, "rev-parse", "HEAD")


def test_released_worktrees_are_reused_and_the_pool_grows_to_its_size(repo: Path) -> None:
    pool, _git, head = make_pool(repo, size=2)
    try:
        first = pool.acquire(head)
        second = pool.acquire(head)
        assert first != second
        pool.release(first)
        assert pool.acquire(head) == first
        assert git(first, "rev-parse", "HEAD") == head
    finally:
        pool.remove_all()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not pool.root.exists()


def test_a_unit_takes_a_released_worktree_instead_of_waiting_for_a_fill(repo: Path) -> None:
    pool, gated, head = make_pool(repo, size=2)
    try:
        first = pool.acquire(head)
        (first / "left-over.txt").write_text("from the first unit\n")
        gated.hold = True  # the next fill does not finish until the gate opens
        got: list[Path] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire(head)))
        waiter.start()
        assert gated.fills_started.acquire(timeout=30)
        assert gated.fills_started.acquire(timeout=30), "the waiting unit started no fill"
        pool.release(first)
        waiter.join(30)
        assert got == [first], "the waiting unit did not take the released worktree"
        assert not (first / "left-over.txt").exists()  # and it came back clean
        gated.gate.set()
    finally:
        gated.gate.set()
        pool.remove_all()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


class FillFailsGit(Git):
    """Real git; the fill fails after the worktree is registered, as a full disk would."""

    def worktree_add(self, path: Path, commit: str) -> None:
        super().worktree_add(path, commit)
        self.run("reset", "-q", "--hard", "0" * 40, cwd=path)  # no such commit: fails


def test_a_failed_fill_reaches_the_unit_that_waits_and_leaves_nothing(repo: Path) -> None:
    info = discover(repo)
    root = info.common_dir / "wtmesh" / "worktrees" / "test-run"
    pool = WorktreePool(FillFailsGit(info.common_dir), root, size=1)
    try:
        with pytest.raises(CommandError):
            pool.acquire(git(repo, "rev-parse", "HEAD"))
        assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
        assert not any(root.iterdir())
    finally:
        pool.remove_all()
    assert not root.exists()


def test_the_integration_worktree_fills_beside_the_first_unit(repo: Path,
                                                            tmp_path: Path) -> None:
    """No landing can begin before the integration worktree exists, and with quick lanes
    the first unit is ready to land about as soon as its own worktree is: both fill from
    the start."""
    calls = tmp_path / "git-calls"
    # The first unit's fill takes two seconds, as on a large repository.
    env = git_first_on_path(tmp_path, f"""echo "start $PWD $*" >> {calls}
case "$PWD $*" in */w001' '*reset*) sleep 2;; esac
"$REAL_GIT" "$@"; code=$?
echo "end $PWD $*" >> {calls}
exit $code
""")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "echo a > a.txt"}}}]}))
    res = wtmesh("run", plan, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    lines = calls.read_text().splitlines()
    unit_filled = next(i for i, line in enumerate(lines)
                       if line.startswith("end ") and line.split()[1].endswith("/w001")
                       and " reset " in line)
    integration_added = next(i for i, line in enumerate(lines)
                             if line.startswith("start ") and " reset -q --hard " in line
                             and "/integration " in line)
    assert integration_added < unit_filled


def acquire_in_thread(pool: WorktreePool, head: str) -> tuple[threading.Thread, list[Path]]:
    got: list[Path] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire(head)))
    thread.start()
    return thread, got


def test_a_worktree_coming_free_sooner_than_a_fill_is_waited_for(repo: Path) -> None:
    """Quick lanes share the worktree there is rather than pay for another fill."""
    pool, slow, head = make_pool(repo, size=2, fill_s=0.5)
    try:
        first = pool.acquire(head)  # a fill of 0.5 s: what a fill costs is known now
        thread, got = acquire_in_thread(pool, head)
        time.sleep(0.1)  # the first unit's quick lane
        pool.release(first)
        thread.join(30)
        assert got == [first]
        assert slow.fills_started.acquire(timeout=0)  # the first fill
        assert not slow.fills_started.acquire(timeout=1), "a second worktree was filled"
    finally:
        pool.remove_all()


def test_a_unit_whose_wait_outlasts_a_fill_gets_a_worktree_of_its_own(repo: Path) -> None:
    pool, slow, head = make_pool(repo, size=2, fill_s=0.5)
    try:
        first = pool.acquire(head)
        thread, got = acquire_in_thread(pool, head)  # the first unit never lets go
        thread.join(30)
        assert got and got[0] != first
        assert git(got[0], "rev-parse", "HEAD") == head
    finally:
        pool.remove_all()


def test_before_any_fill_ends_a_unit_fills_only_into_an_idle_slot(repo: Path) -> None:
    pool, slow, head = make_pool(repo, size=2, fill_s=0.5)
    pool._slots = 1  # noqa: SLF001 - a 2-CPU machine: one fill at a time
    try:
        slow.hold = True
        one, got_one = acquire_in_thread(pool, head)
        assert slow.fills_started.acquire(timeout=30)
        two, got_two = acquire_in_thread(pool, head)
        # With the one slot busy and no fill's cost known, the second unit waits for
        # that fill instead of queueing a second one behind it.
        assert not slow.fills_started.acquire(timeout=1)
        slow.gate.set()
        deadline = time.monotonic() + 30
        while not (got_one or got_two) and time.monotonic() < deadline:
            time.sleep(0.01)
        pool.release((got_one or got_two)[0])  # whoever got it: a quick lane, done
        one.join(30)
        two.join(30)
        assert got_one == got_two
        assert not slow.fills_started.acquire(timeout=1), "a second worktree was filled"
    finally:
        slow.gate.set()
        pool.remove_all()


def test_a_resume_with_nothing_left_to_land_makes_no_worktree(repo: Path,
                                                               tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "echo a > a.txt"}}}]}))
    # Killed right after its one unit landed, before the run could say it had ended.
    killed = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:land"})
    assert killed.returncode == -9
    calls = tmp_path / "git-calls"
    env = git_first_on_path(tmp_path, f"""echo "$*" >> {calls}
exec "$REAL_GIT" "$@"
""")
    resumed = wtmesh("run", plan, "--resume", "--json", cwd=repo, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert [u["status"] for u in resumed.json()["units"]] == ["integrated"]
    # The landed unit is recognised; no worktree is filled only to be removed again.
    assert "worktree add" not in calls.read_text()
