"""The integrator's promises (SPEC 4): ordered apply, proof gate, safe landing."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
from conftest import (
    PROOF,
    PY,
    Result,
    git,
    no_worktrees_left,
    one_error_line,
    run_worktrees,
    wtmesh,
)


def run(repo: Path, plan: Path, *args: str, expect: int | None = None) -> dict[str, Any]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo)
    assert "Traceback" not in res.stderr
    if expect is not None:
        assert res.returncode == expect, res.stderr
    summary: dict[str, Any] = res.json()
    return summary


def status(summary: dict[str, Any], unit_id: str) -> tuple[str, str | None]:
    unit = next(u for u in summary["units"] if u["id"] == unit_id)
    return unit["status"], unit["failure_code"]


def numbered_file(repo: Path) -> None:
    (repo / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    git(repo, "add", "lines.txt")
    git(repo, "commit", "-q", "-m", "lines")


def test_three_way_apply_when_plain_apply_fails(repo: Path, write_plan: Any) -> None:
    """The unit starts from an older base; the target has since changed a nearby line, so
    the diff's context no longer matches, but a three-way merge is clean."""
    numbered_file(repo)
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / "lines.txt").read_text().replace("line 3\n", "line 3 (target)\n")
    (repo / "lines.txt").write_text(text)
    git(repo, "commit", "-q", "-am", "target moves")
    plan = write_plan({"base": base, "units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "sed -i 's/^line 5$/line 5 (unit)/' lines.txt"}}}]})
    summary = run(repo, plan, expect=0)
    assert status(summary, "u1") == ("integrated", None)
    text = (repo / "lines.txt").read_text()
    assert "line 3 (target)\n" in text and "line 5 (unit)\n" in text


def test_conflict_is_integration_conflict_and_nothing_applied(repo: Path,
                                                              write_plan: Any) -> None:
    numbered_file(repo)
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / "lines.txt").read_text().replace("line 5\n", "line 5 (target)\n")
    (repo / "lines.txt").write_text(text)
    git(repo, "commit", "-q", "-am", "target moves")
    tip = git(repo, "rev-parse", "HEAD")
    plan = write_plan({"base": base, "units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "sed -i 's/^line 5$/line 5 (unit)/' lines.txt; echo n > new.txt"}}}]})
    summary = run(repo, plan, expect=1)
    assert status(summary, "u1") == ("failed", "integration_conflict")
    assert git(repo, "rev-parse", "HEAD") == tip
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / "new.txt").exists()


def test_proof_failure_takes_the_change_back(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": PROOF, "units": [
        {"id": "good", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": "echo a > a.txt"}}},
        {"id": "bad", "objective": "o", "unit_scope": "calc/",
         "lanes": {"coder": {"command": "echo 'def add(a, b): return 0' >> calc/ops.py; "
                                        "echo b > calc/extra.txt"}}},
        {"id": "after", "objective": "o", "unit_scope": "c.txt",
         "lanes": {"coder": {"command": "echo c > c.txt"}}},
    ]})
    summary = run(repo, plan, expect=1)
    assert status(summary, "bad") == ("failed", "proof_failed")
    assert status(summary, "after") == ("integrated", None)
    assert not (repo / "calc/extra.txt").exists()
    assert "return 0" not in (repo / "calc/ops.py").read_text()
    log = git(repo, "log", "--format=%s", "main").splitlines()
    assert log[:2] == ["after: o", "good: o"]
    # The proof log says why.
    run_dir = repo / ".git/wtmesh/runs" / summary["run_id"]
    assert "FAILED" in (run_dir / "units/bad/proof.log").read_text()


@pytest.mark.parametrize(("proof", "why"), [
    ("echo tampered >> README.md", "proof left tracked files modified (README.md)"),
    ("rm calc/ops.py", "proof left tracked files modified (calc/ops.py)"),
    # The proof's git has a repository of its own: what it stages or commits there is
    # nothing to wtmesh, but the files it moves are.
    ("git mv README.md README.txt", "proof left tracked files modified (README.md)"),
])
def test_proof_that_changes_tracked_files_fails(repo: Path, write_plan: Any,
                                                 proof: str, why: str) -> None:
    # Only on the unit's tree: the base passes its own proof.
    plan = write_plan({"proof_command": f"if [ -e a.txt ]; then {proof}; fi", "units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    # Unsandboxed, where nothing stops a proof's git from writing: it is caught after.
    summary = run(repo, plan, "--sandbox", "none", expect=1)
    assert status(summary, "u1") == ("failed", "proof_failed")
    ledger = repo / ".git/wtmesh/runs" / summary["run_id"] / "ledger.jsonl"
    (finished,) = [json.loads(line) for line in ledger.read_text().splitlines()
                   if '"unit_finished"' in line]
    assert finished["notes"] == why
    assert "tampered" not in (repo / "README.md").read_text()
    assert git(repo, "log", "--format=%s", "main").splitlines() == ["initial"]


def test_files_the_proof_creates_are_never_committed(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": "echo report > report.xml; mkdir -p .cache; "
                                        "touch .cache/x",
                       "units": [{"id": "u1", "objective": "o",
                                  "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=0)
    files = git(repo, "show", "--name-only", "--format=", summary["head"]).splitlines()
    assert files == ["a.txt"]


def test_proof_timeout_fails(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": "test ! -e a.txt || sleep 30", "proof_timeout_s": 0.5,
                       "units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=1)
    assert status(summary, "u1") == ("failed", "proof_failed")


def test_unit_proof_command_overrides_plan(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"proof_command": "false", "units": [
        {"id": "u1", "objective": "o", "proof_command": "test -f README.md",
         "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=0)
    assert status(summary, "u1") == ("integrated", None)


def test_proof_runs_on_exactly_the_tree_that_lands(repo: Path, write_plan: Any,
                                                   tmp_path: Path) -> None:
    seen = tmp_path / "proven-trees"
    plan = write_plan({"proof_command": f"git rev-parse HEAD^{{tree}} >> {seen}",
                       "sandbox_writable": [str(tmp_path)], "units": [
        {"id": f"u{i}", "objective": "o", "unit_scope": f"f{i}.txt",
         "lanes": {"coder": {"command": f"echo {i} > f{i}.txt"}}} for i in range(3)]})
    summary = run(repo, plan, expect=0)
    landed = [git(repo, "rev-parse", f"{u['commit']}^{{tree}}") for u in summary["units"]]
    # First the base's own proof, beside the lanes.
    assert seen.read_text().split() == [git(repo, "rev-parse", "main~3^{tree}"), *landed]


def test_no_hooks_run_not_even_ones_a_lane_plants(repo: Path, write_plan: Any,
                                                  tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    hooks = repo / ".git/hooks"
    for name in ("post-checkout", "reference-transaction", "pre-commit", "post-commit",
                 "pre-applypatch", "post-index-change"):
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        (hooks / name).chmod(0o755)
    plant = ("h=$WTMESH_REPO/.git/hooks/post-merge; "
             f"printf '#!/bin/sh\\necho planted >> {marker}\\n' > $h; chmod +x $h; "
             "echo $WTMESH_RUN_ID > run.txt")
    for mode in ("commit_first", "patch_first"):
        # The planted hook is found and removed after the lane (its unit fails); the
        # user's own hooks stay, and none runs while the other unit integrates.
        plan = write_plan({"delivery_mode": mode, "max_active": 1, "units": [
            {"id": "u1", "objective": "o", "unit_scope": "run.txt",
             "lanes": {"coder": {"command": plant}}},
            {"id": "u2", "objective": "o", "unit_scope": f"{mode}.txt",
             "lanes": {"coder": {"command": f"echo 2 > {mode}.txt"}}}]},
            f"plan-{mode}.json")
        # Unsandboxed, so that the lane can plant its hook (the sandbox would refuse).
        summary = run(repo, plan, "--sandbox", "none", expect=1)
        assert status(summary, "u1") == ("failed", "safety_regression_risk")
        assert status(summary, "u2") == ("integrated", None)
        assert not (hooks / "post-merge").exists()
    assert not marker.exists(), marker.read_text()


def test_identity_falls_back_to_wtmesh_when_none_configured(repo: Path, write_plan: Any,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{role}_NAME")
        monkeypatch.delenv(f"GIT_{role}_EMAIL")
    plan = write_plan({"units": [{"id": "u1", "objective": "o",
                                  "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=0)
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", summary["head"]) == \
        "wtmesh <wtmesh@localhost>|wtmesh <wtmesh@localhost>"
    git(repo, "config", "user.name", "Repo Owner")
    git(repo, "config", "user.email", "owner@example.com")
    plan2 = write_plan({"units": [{"id": "u2", "objective": "o",
                                   "lanes": {"coder": {"command": "echo b > b.txt"}}}]}, "p2.json")
    summary = run(repo, plan2, expect=0)
    assert git(repo, "log", "-1", "--format=%an <%ae>", summary["head"]) == \
        "Repo Owner <owner@example.com>"


def test_target_moved_by_hand_mid_run_is_integrated_onto(repo: Path, write_plan: Any) -> None:
    # The first unit's lane commits to the target in the user's repository, as a person
    # would by hand while the run goes on.
    hand = ('cd "$WTMESH_REPO" && echo hand > hand.txt && git add hand.txt && '
            'git commit -q -m "by hand" && cd - >/dev/null && echo a > a.txt')
    plan = write_plan({"units": [
        {"id": "u1", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": hand}}},
        {"id": "u2", "objective": "o", "unit_scope": "b.txt",
         "lanes": {"coder": {"command": "echo b > b.txt"}}}]})
    summary = run(repo, plan, "--sandbox", "none", expect=0)  # the person is not sandboxed
    log = git(repo, "log", "--format=%s", "main").splitlines()
    assert log[:3] == ["u2: o", "u1: o", "by hand"]
    assert (repo / "hand.txt").exists() and (repo / "a.txt").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert summary["head"] == git(repo, "rev-parse", "HEAD")


def test_user_worktree_that_cannot_follow_strands_commits_safely(repo: Path, write_plan: Any
                                                                 ) -> None:
    """The user creates (untracked) the very file the unit adds: bringing the worktree
    along would overwrite it, so the target stays put, the commits go to
    wtmesh/<run-id>/integrated, the run exits 3 and the user's file is intact."""
    grab = 'echo "mine" > "$WTMESH_REPO/a.txt"; echo unit > a.txt'
    plan = write_plan({"units": [{"id": "u1", "objective": "o",
                                  "lanes": {"coder": {"command": grab}}}]})
    tip = git(repo, "rev-parse", "main")
    summary = run(repo, plan, "--sandbox", "none", expect=3)  # the lane plays the user
    assert git(repo, "rev-parse", "main") == tip
    assert (repo / "a.txt").read_text() == "mine\n"
    branch = f"wtmesh/{summary['run_id']}/integrated"
    assert summary["stranded_ref"] == branch
    assert git(repo, "show", f"{branch}:a.txt") == "unit"
    assert summary["head"] == git(repo, "rev-parse", branch)


def test_target_checked_out_in_a_linked_worktree_is_brought_along(repo: Path,
                                                                   write_plan: Any,
                                                                   tmp_path: Path) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "main")
    plan = write_plan({"target": "main", "units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=0)
    assert (linked / "a.txt").read_text() == "a\n"
    assert git(linked, "status", "--porcelain") == ""
    assert git(linked, "rev-parse", "HEAD") == summary["head"]
    assert not (repo / "a.txt").exists()  # 'other' is untouched
    # The user's own worktree survives; only ours are removed.
    assert linked.is_dir()
    listing = git(repo, "worktree", "list", "--porcelain")
    assert listing.count("worktree ") == 2


def test_patch_first_never_touches_target_or_worktree(repo: Path, write_plan: Any) -> None:
    (repo / "untracked.txt").write_text("user's\n")
    tip = git(repo, "rev-parse", "main")
    reflog = git(repo, "reflog", "main")
    plan = write_plan({"delivery_mode": "patch_first", "units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, expect=0)
    assert git(repo, "rev-parse", "main") == tip and git(repo, "reflog", "main") == reflog
    assert not (repo / "a.txt").exists()
    assert (repo / "untracked.txt").read_text() == "user's\n"
    patch = Path(summary["patch_dir"]) / "0001-u1.patch"
    text = patch.read_text()
    assert text.startswith("From ") and "Subject: [PATCH] u1: o" in text
    assert "Wtmesh-Unit: u1" in text


def test_patch_dir_option(repo: Path, write_plan: Any, tmp_path: Path) -> None:
    out = tmp_path / "out-patches"
    plan = write_plan({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    summary = run(repo, plan, "--delivery", "patch_first", "--patch-dir", str(out), expect=0)
    assert summary["patch_dir"] == str(out)
    assert (out / "series").read_text() == "0001-u1.patch\n"


def integrator_lock(repo: Path) -> filelock.FileLock:
    """The lock another run holds while it integrates."""
    path = repo / ".git/wtmesh/integrator.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))


def run_one_unit_while_locked(repo: Path, write_plan: Any) -> tuple[Result, Path]:
    """A one-unit run that waits one second for the lock another run holds; and its plan."""
    plan = write_plan({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    with integrator_lock(repo):
        return wtmesh("run", plan, "--lock-timeout", "1", cwd=repo), plan


def test_second_run_waits_for_the_lock_then_times_out(repo: Path, write_plan: Any) -> None:
    res, _plan = run_one_unit_while_locked(repo, write_plan)
    assert res.returncode == 3
    assert "waiting for the integrator lock" in res.stdout
    assert "timed out" in res.stderr and "Traceback" not in res.stderr
    assert not (repo / "a.txt").exists()


def test_a_start_that_times_out_on_the_lock_offers_no_resume(repo: Path,
                                                             write_plan: Any) -> None:
    """Refused while waiting to start, the run was never made: naming a --resume for it
    would send the user after a run that does not exist."""
    res, plan = run_one_unit_while_locked(repo, write_plan)
    line = one_error_line(res, 3)
    assert "timed out" in line and "--resume" not in line, line
    assert not list((repo / ".git/wtmesh").glob("runs/*/ledger.jsonl"))
    again = wtmesh("run", plan, "--resume", cwd=repo)
    assert again.returncode == 2 and "no run of" in again.stderr


def test_a_run_that_times_out_on_the_lock_later_is_resumed_as_it_says(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Once the run exists, a lock timeout at its first landing names the run to resume,
    and resuming it with that id lands the unit."""
    started, locked = tmp_path / "lane-started", tmp_path / "locked"
    plan = write_plan({"sandbox_writable": [str(tmp_path)],  # the lane and the test meet
                       "units": [{"id": "u1", "objective": "o", "lanes": {"coder": {
        "command": f"touch {started}; until [ -e {locked} ]; do sleep 0.02; done; "
                   "echo a > a.txt"}}}]})
    run_proc = subprocess.Popen([PY, "-m", "worktree_mesh", "run", str(plan),
                                 "--lock-timeout", "1"], cwd=repo, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_file(started, run_proc)
        with integrator_lock(repo):
            locked.touch()
            _out, err = run_proc.communicate(timeout=120)
    finally:
        if run_proc.poll() is None:
            run_proc.kill()
    line = one_error_line(Result(run_proc.returncode, "", err.decode()), 3)
    match = re.search(r"--resume (\S+)$", line)
    assert match, line
    resumed = wtmesh("run", plan, "--resume", match.group(1), "--json", cwd=repo)
    assert resumed.returncode == 0, resumed.stderr
    assert [u["status"] for u in resumed.json()["units"]] == ["integrated"]
    assert git(repo, "show", "main:a.txt") == "a"


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Until ``path`` exists; fails at once if ``process`` ends first (and after a
    bound far beyond any wait, rather than hang)."""
    give_up = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < give_up, f"{path} never appeared"
        time.sleep(0.02)


def test_worktrees_removed_unless_kept(repo: Path, write_plan: Any) -> None:
    plan = write_plan({"units": [
        {"id": "u1", "objective": "o", "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    run(repo, plan, expect=0)
    assert no_worktrees_left(repo)
    plan2 = write_plan({"units": [
        {"id": "u2", "objective": "o", "lanes": {"coder": {"command": "echo b > b.txt"}}}]},
        "p2.json")
    summary = run(repo, plan2, "--keep-worktrees", expect=0)
    assert not no_worktrees_left(repo)
    # Refs of the unit's work stay until gc, whatever happened.
    refs = git(repo, "for-each-ref", "--format=%(refname)", f"refs/wtmesh/{summary['run_id']}")
    assert f"refs/wtmesh/{summary['run_id']}/units/u2/result" in refs.splitlines()
    assert run_worktrees(repo, summary["run_id"]).is_dir()
