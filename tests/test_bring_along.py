"""Bringing the user's worktree along (SPEC 11), tried as a hostile world would: the user
commits while a unit is proven, keeps ignored files where a unit lands tracked ones, an
editor holds index.lock, wtmesh is killed between a ledger event and the git write it
records, and the target's linked worktree has been deleted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import git, git_first_on_path, lane, make_repo, one_error_line, state_dir, wtmesh

KILLED = -signal.SIGKILL
Record = dict[str, Any]


# -- driving a run ------------------------------------------------------------------------

def start(repo: Path, plan: Path, *args: str,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env} if env else None
    return subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan), "--json",
                             *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=full_env)


def ledger(repo: Path) -> list[Record]:
    """The run's ledger as far as it is written (a last line being written is skipped)."""
    records = []
    for path in (state_dir(repo) / "runs").glob("*/ledger.jsonl"):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def wait_for(repo: Path, run: subprocess.Popen[bytes],
             wanted: Callable[[Record], bool]) -> Record | None:
    """The first ledger event ``wanted`` accepts, once it is written; None if the run
    ended without one. Waits on the ledger, never on a clock (the deadline only keeps a
    broken run from hanging the suite)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ended = run.poll() is not None
        found = next((r for r in ledger(repo) if wanted(r)), None)
        if found is not None or ended:
            return found
        time.sleep(0.02)
    raise AssertionError("the run neither wrote the event nor ended")


def finish(run: subprocess.Popen[bytes]) -> tuple[int, Record, str]:
    out, err = run.communicate(timeout=300)
    assert b"Traceback" not in err, err.decode()
    return run.returncode, json.loads(out), err.decode()


def run_json(repo: Path, plan: Path, *args: str,
             env: dict[str, str] | None = None) -> tuple[int, Record]:
    res = wtmesh("run", plan, "--json", *args, cwd=repo, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.json()


def unit(summary: Record, unit_id: str) -> Record:
    return next(u for u in summary["units"] if u["id"] == unit_id)


def numbered(repo: Path) -> None:
    (repo / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    git(repo, "add", "lines.txt")
    git(repo, "commit", "-q", "-m", "lines")


def ignore(repo: Path, rule: str) -> str:
    """Commit ``rule`` into .gitignore; returns the .gitignore a unit writes to drop it."""
    before = (repo / ".gitignore").read_text()
    (repo / ".gitignore").write_text(before + rule + "\n")
    git(repo, "commit", "-q", "-am", f"ignore {rule}")
    return before


# -- a commit of the user's while a unit is proven (issue 12, case 11) --------------------

def test_a_commit_of_the_users_during_the_proof_is_built_upon(repo: Path, write_plan: Any,
                                                              tmp_path: Path) -> None:
    """The user commits to the target, touching the unit's file, while the unit's proof
    runs (it waits for a file the test makes after committing). The target moved: the
    unit is applied again on the user's commit and proven again, never stranded."""
    numbered(repo)
    gate = tmp_path / "gate"
    # The unit's proof waits (the base's own does not).
    plan = write_plan({"proof_command": f"if grep -q '^unit 20$' lines.txt; then "
                                        f"while [ ! -e {gate} ]; do sleep 0.05; done; fi",
                       "units": [{"id": "u1", "objective": "o", "unit_scope": "lines.txt",
                                  "lanes": {"coder": {"command":
                                            "sed -i 's/^line 20$/unit 20/' lines.txt"}}}]})
    run = start(repo, plan)
    assert wait_for(repo, run, lambda r: r["event"] == "proof_started"), finish(run)
    (repo / "lines.txt").write_text((repo / "lines.txt").read_text().replace("line 1\n",
                                                                           "user 1\n", 1))
    git(repo, "commit", "-q", "-am", "user")
    users = git(repo, "rev-parse", "HEAD")
    gate.touch()
    code, summary, err = finish(run)
    assert code == 0, err
    assert unit(summary, "u1")["status"] == "integrated"
    assert git(repo, "log", "--format=%s", "main").splitlines() == ["u1: o", "user", "lines",
                                                                    "initial"]
    landed = git(repo, "show", "main:lines.txt").splitlines()
    assert landed[0] == "user 1" and landed[19] == "unit 20"
    proofs = [r for r in ledger(repo) if r["event"] == "proof_started"]
    assert len(proofs) == 2  # proven again on the user's commit
    assert git(repo, "rev-parse", f"{proofs[1]['candidate']}^") == users
    assert git(repo, "rev-parse", "HEAD") == summary["head"]
    assert git(repo, "status", "--porcelain") == ""
    assert "stranded_ref" not in summary


# -- files git does not track in the way (case 12, and its class) ------------------------

def _local_cfg(repo: Path, outside: Path) -> tuple[list[str], list[str], str]:
    keep = ignore(repo, "local.cfg")
    (repo / "local.cfg").write_text("user's secret\n")
    return ["write:.gitignore=" + keep.replace("\n", "\\n"), "write:local.cfg=unit\\n"], \
        [".gitignore", "local.cfg"], "local.cfg"


def _dot_env(repo: Path, outside: Path) -> tuple[list[str], list[str], str]:
    # The fixture ignores .env; a unit that stops ignoring it and adds one.
    keep = (repo / ".gitignore").read_text().replace(".env\n", "")
    (repo / ".env").write_text("TOKEN=user's\n")
    return ["write:.gitignore=" + keep.replace("\n", "\\n"), "write:.env=TOKEN=\\n"], \
        [".gitignore", ".env"], ".env"


def _ignored_dir_where_a_file_lands(repo: Path, outside: Path) -> tuple[list[str], list[str],
                                                                         str]:
    # build/ is ignored (a directory rule); a file named build is not.
    (repo / "build").mkdir()
    (repo / "build" / "cache.bin").write_text("user's build\n")
    return ["write:build=unit\\n"], ["build"], "build/cache.bin"


def _ignored_file_where_a_directory_lands(repo: Path, outside: Path
                                          ) -> tuple[list[str], list[str], str]:
    keep = ignore(repo, "cache")
    (repo / "cache").write_text("user's cache\n")
    return ["write:.gitignore=" + keep.replace("\n", "\\n"), "write:cache/x.txt=unit\\n"], \
        [".gitignore", "cache/x.txt"], "cache"


def _ignored_symlink_where_a_directory_lands(repo: Path, outside: Path
                                             ) -> tuple[list[str], list[str], str]:
    keep = ignore(repo, "out")
    outside.mkdir()
    (outside / "keep.txt").write_text("user's\n")
    (repo / "out").symlink_to(outside)
    return ["write:.gitignore=" + keep.replace("\n", "\\n"), "write:out/x.txt=unit\\n"], \
        [".gitignore", "out/x.txt"], "out"


@pytest.mark.parametrize("case", [_local_cfg, _dot_env, _ignored_dir_where_a_file_lands,
                                  _ignored_file_where_a_directory_lands,
                                  _ignored_symlink_where_a_directory_lands],
                         ids=lambda f: f.__name__.strip("_"))
def test_an_ignored_file_in_the_way_strands_the_run_and_survives(
        repo: Path, write_plan: Any, tmp_path: Path,
        case: Callable[[Path, Path], tuple[list[str], list[str], str]]) -> None:
    """``read-tree -m -u`` silently replaces ignored files: a unit that stops ignoring a
    path and lands a file there (or a directory over it) must not take the user's file.
    The target stays, the commits go to wtmesh/<run>/integrated, and the run names the
    file and the command that brings the worktree along (exit 3)."""
    actions, scope, in_the_way = case(repo, tmp_path / "outside")
    before = {p: (repo / p).read_bytes() if (repo / p).is_file() else None
              for p in (in_the_way, in_the_way.split("/")[0])}
    was_link = (repo / in_the_way).is_symlink()
    tip = git(repo, "rev-parse", "main")
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "unit_scope": scope,
                                  "lanes": {"coder": {"command": lane("act.py", *actions)}}}]})
    code, summary = run_json(repo, plan)
    assert code == 3
    assert git(repo, "rev-parse", "main") == tip
    for path, data in before.items():
        if data is not None:
            assert (repo / path).read_bytes() == data
    assert (repo / in_the_way).is_symlink() == was_link
    if was_link:
        assert (tmp_path / "outside" / "keep.txt").read_text() == "user's\n"
    branch = summary["stranded_ref"]
    assert git(repo, "rev-parse", branch) == summary["head"]
    assert unit(summary, "u1")["status"] == "integrated"
    left = summary["not_brought_along"]
    assert left["worktree"] == str(repo)
    assert in_the_way in left["files"]
    assert left["command"] == f"git -C {repo} merge --ff-only {branch}"
    stranded = next(r for r in ledger(repo) if r["event"] == "stranded")
    assert in_the_way in stranded["files"]
    assert git(repo, "status", "--porcelain") == ""


def test_moved_aside_the_files_named_the_command_given_brings_it_along(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """What the run says to do works: move the named file aside, run the command."""
    actions, scope, in_the_way = _local_cfg(repo, tmp_path)
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "unit_scope": scope,
                                  "lanes": {"coder": {"command": lane("act.py", *actions)}}}]})
    code, summary = run_json(repo, plan)
    assert code == 3
    (repo / in_the_way).rename(tmp_path / "aside")
    subprocess.run(summary["not_brought_along"]["command"], shell=True, check=True, cwd=tmp_path)
    assert git(repo, "rev-parse", "main") == summary["head"]
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "local.cfg").read_text() == "unit\n"


def test_a_file_in_the_way_that_appears_after_the_swap_leaves_the_worktree_behind(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """The user makes an ignored file in the way just after the target moved (a git on
    PATH does it as the compare-and-swap returns): the worktree is left where it was,
    the file survives, later units still land, and the run ends (exit 3) with the one
    command that brings the worktree along."""
    actions, scope, _ = _local_cfg(repo, tmp_path)
    (repo / "local.cfg").unlink()
    old = git(repo, "rev-parse", "main")
    marker = tmp_path / "made"
    env = git_first_on_path(tmp_path, f"""\
"$REAL_GIT" "$@"; rc=$?
case " $* " in *" update-ref "*" refs/heads/main "*)
  if [ $rc = 0 ] && [ ! -e {marker} ]; then
    touch {marker}; echo "user's secret" > {repo}/local.cfg
  fi;;
esac
exit $rc
""")
    plan = write_plan({"units": [
        {"id": "u1", "objective": "o", "unit_scope": scope,
         "lanes": {"coder": {"command": lane("act.py", *actions)}}},
        {"id": "u2", "objective": "o", "unit_scope": "b.txt", "depends_on": ["u1"],
         "lanes": {"coder": {"command": lane("act.py", "write:b.txt=b\\n")}}}]})
    code, summary = run_json(repo, plan, env=env)
    assert code == 3
    assert [u["status"] for u in summary["units"]] == ["integrated", "integrated"]
    assert git(repo, "rev-parse", "main") == summary["head"] != old
    assert "stranded_ref" not in summary
    assert (repo / "local.cfg").read_text() == "user's secret\n"
    assert not (repo / "b.txt").exists()  # not moved again once left behind
    assert git(repo, "diff", "--quiet", "--cached", old) == ""  # the index stayed at old
    left = summary["not_brought_along"]
    assert left["files"] == ["local.cfg"]
    assert left["command"] == f"git -C {repo} read-tree -m -u {old} {summary['head']}"
    assert any(r["event"] == "left_behind" for r in ledger(repo))
    (repo / "local.cfg").rename(tmp_path / "aside")
    subprocess.run(left["command"], shell=True, check=True, cwd=tmp_path)
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "b.txt").read_text() == "b\n"


# -- a transient index.lock (case 13) ---------------------------------------------------

def test_an_index_lock_held_for_a_moment_is_waited_out(repo: Path, write_plan: Any) -> None:
    """An editor's `git status` holds index.lock: the run waits (and says so), and once
    it is released lands normally."""
    lock = repo / ".git" / "index.lock"
    lock.touch()
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": lane("act.py", "write:a.txt=a\\n")}}}]})
    run = start(repo, plan)
    waiting = wait_for(repo, run, lambda r: r["event"] == "index_lock_wait")
    lock.unlink()
    code, summary, err = finish(run)
    assert waiting is not None and waiting["lock"] == str(lock), err
    assert code == 0, err
    assert "stranded_ref" not in summary
    assert git(repo, "rev-parse", "HEAD") == git(repo, "rev-parse", "main") == summary["head"]
    assert (repo / "a.txt").read_text() == "a\n"
    assert git(repo, "status", "--porcelain") == ""


def test_an_index_lock_that_stays_is_a_refusal_that_says_so(repo: Path,
                                                            write_plan: Any) -> None:
    """A lock left by a killed git never goes: after the bound the run strands, naming
    the lock, and nothing of the user's is touched."""
    lock = repo / ".git" / "index.lock"
    lock.touch()
    tip = git(repo, "rev-parse", "main")
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": lane("act.py", "write:a.txt=a\\n")}}}]})
    code, summary = run_json(repo, plan)
    assert code == 3
    assert git(repo, "rev-parse", "main") == tip
    stranded = next(r for r in ledger(repo) if r["event"] == "stranded")
    assert str(lock) in stranded["reason"] and "held" in stranded["reason"]
    assert git(repo, "show", f"{summary['stranded_ref']}:a.txt") == "a"
    lock.unlink()
    assert git(repo, "status", "--porcelain") == ""


# -- kill -9 between a ledger event and its git write (case 14) -------------------------

def stranding_repo(dest: Path) -> tuple[Path, Path]:
    """A repository whose user keeps an untracked a.txt where the first unit lands one,
    and a two-unit plan: both land on the stranded branch."""
    repo = make_repo(dest / "repo")
    (repo / "a.txt").write_text("mine\n")
    plan = dest / "plan.json"
    plan.write_text(json.dumps({"units": [
        {"id": "u1", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:a.txt=unit\\n")}}},
        {"id": "u2", "objective": "o", "unit_scope": "b.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:b.txt=b\\n")}}}]}))
    return repo, plan


def resume_to_end(repo: Path, plan: Path, env: dict[str, str]) -> list[int]:
    """Run with the fault, then resume while killed; every exit code seen."""
    codes = [wtmesh("run", plan, cwd=repo, env=env).returncode]
    while codes[-1] == KILLED:
        res = wtmesh("run", plan, "--resume", cwd=repo)
        assert "Traceback" not in res.stderr, res.stderr
        assert "disappeared" not in res.stderr, res.stderr
        codes.append(res.returncode)
        assert len(codes) < 5, codes
    return codes


def stranded_outcome(repo: Path) -> Record:
    (run_dir,) = (state_dir(repo) / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    branch = summary["stranded_ref"]
    return {
        "exit": summary["exit_code"],
        "states": [u["status"] for u in summary["units"]],
        "finished_once": sorted(r["unit"] for r in records if r["event"] == "unit_finished"),
        "branch": git(repo, "log", "--format=%s", branch).splitlines(),
        "tree": git(repo, "rev-parse", f"{branch}^{{tree}}"),
        "main": git(repo, "log", "--format=%s", "main").splitlines(),
        "mine": (repo / "a.txt").read_text(),
        "status": git(repo, "status", "--porcelain"),
        "in_the_way": summary.get("not_brought_along", {}).get("files"),
    }


@pytest.fixture(scope="module")
def stranded_reference(hermetic_module: None, tmp_path_factory: pytest.TempPathFactory
                       ) -> tuple[Record, range]:
    repo, plan = stranding_repo(tmp_path_factory.mktemp("stranded-reference"))
    assert wtmesh("run", plan, cwd=repo).returncode == 3
    outcome = stranded_outcome(repo)
    assert outcome["states"] == ["integrated", "integrated"]
    assert outcome["main"] == ["initial"] and outcome["mine"] == "mine\n"
    records = ledger(repo)
    # From the first landing on: killing lanes is tests/test_resume.py's.
    first = next(r["seq"] for r in records if r["event"] == "apply_started")
    return outcome, range(first, len(records) + 1)


def test_kill_after_every_ledger_event_of_a_stranding_run_then_resume(
        tmp_path: Path, stranded_reference: tuple[Record, range]) -> None:
    """Killed after any event of the landings (the stranded one included, before its
    branch exists), every resume goes on, and the end is the uninterrupted run's."""
    reference, events = stranded_reference
    for n in events:
        repo, plan = stranding_repo(tmp_path / f"run-{n}")
        codes = resume_to_end(repo, plan, {"WTMESH_FAULT": f"after-event:{n}"})
        assert codes[-1] == 3, (n, codes)
        assert stranded_outcome(repo) == reference, f"killed after event {n}"
        shutil.rmtree(tmp_path / f"run-{n}")


def test_kill_between_the_stranded_event_and_its_branch_then_resume(
        tmp_path: Path, stranded_reference: tuple[Record, range]) -> None:
    """The kill of issue 12's case 14, at the named point: the resume makes the branch
    where the event says it starts."""
    repo, plan = stranding_repo(tmp_path)
    codes = resume_to_end(repo, plan, {"WTMESH_FAULT": "at:strand"})
    assert codes[0] == KILLED, "the fault point was never reached"
    assert codes[-1] == 3
    assert stranded_outcome(repo) == stranded_reference[0]


def test_kill_after_the_swap_then_a_file_in_the_way_leaves_the_worktree_behind(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Killed after the target moved, before the worktree did; then the user makes an
    ignored file in the way. The resume cannot finish the move: it leaves the worktree
    where it was, keeps the file, and ends saying how to bring it along."""
    actions, scope, _ = _local_cfg(repo, tmp_path)
    (repo / "local.cfg").unlink()
    old = git(repo, "rev-parse", "main")
    plan = write_plan({"units": [{"id": "u1", "objective": "o", "unit_scope": scope,
                                  "lanes": {"coder": {"command": lane("act.py", *actions)}}}]})
    killed = wtmesh("run", plan, cwd=repo, env={"WTMESH_FAULT": "at:bring-along"})
    assert killed.returncode == KILLED
    assert git(repo, "rev-parse", "main") != old
    (repo / "local.cfg").write_text("user's secret\n")
    res = wtmesh("run", plan, "--resume", "--json", cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 3, res.stderr
    summary = res.json()
    assert (repo / "local.cfg").read_text() == "user's secret\n"
    assert git(repo, "diff", "--quiet", "--cached", old) == ""
    assert summary["not_brought_along"]["command"] == \
        f"git -C {repo} read-tree -m -u {old} {summary['head']}"
    assert [u["status"] for u in summary["units"]] == ["integrated"]


# -- a stranded branch a lane plants ------------------------------------------------------

# An unsandboxed lane can write the user's repository by path: here it makes this run's
# stranded branch itself, on a commit of its own that carries the run's trailers for u2
# (and a tree of its choosing), then does its unit's work.
PLANT_STRANDED_BRANCH = (
    'R="$WTMESH_REPO"; b=$(echo evil | git -C "$R" hash-object -w --stdin)'
    ' && t=$(printf "100644 blob %s\\tevil.txt\\n" "$b" | git -C "$R" mktree)'
    ' && c=$(printf "u2: forged\\n\\nWtmesh-Run: %s\\nWtmesh-Unit: u2\\n" "$WTMESH_RUN_ID"'
    ' | git -C "$R" commit-tree "$t" -p "$WTMESH_BASE_SHA")'
    ' && git -C "$R" update-ref "refs/heads/wtmesh/$WTMESH_RUN_ID/integrated" "$c"'
    ' && echo unit > a.txt')


def planting_plan(dest: Path) -> Path:
    plan = dest / "plan.json"
    plan.write_text(json.dumps({"max_active": 1, "units": [
        {"id": "u1", "objective": "o", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": PLANT_STRANDED_BRANCH}}},
        {"id": "u2", "objective": "o", "unit_scope": "b.txt",
         "lanes": {"coder": {"command": lane("act.py", "write:b.txt=b\\n")}}}]}))
    return plan


def test_a_stranded_branch_a_lane_planted_is_not_read_as_landings_on_resume(
        repo: Path, tmp_path: Path) -> None:
    """Killed after the lane planted it, the run never stranded: the resume does not take
    the branch for its own (nor its commit for u2's landing); both units land on the
    target, and the planted tree nowhere."""
    plan = planting_plan(tmp_path)
    killed = wtmesh("run", plan, "--sandbox", "none", cwd=repo,
                    env={"WTMESH_FAULT": "at:apply"})
    assert killed.returncode == KILLED, killed.stderr
    code, summary = run_json(repo, plan, "--resume")
    assert code == 0, summary
    assert "stranded_ref" not in summary
    assert [u["status"] for u in summary["units"]] == ["integrated", "integrated"]
    assert git(repo, "log", "--format=%s", "main").splitlines() == ["u2: o", "u1: o",
                                                                    "initial"]
    assert sorted(git(repo, "ls-tree", "--name-only", "main").split()) == \
        sorted(git(repo, "ls-tree", "--name-only", "main~2").split() + ["a.txt", "b.txt"])


def test_a_stranded_branch_a_lane_planted_is_not_built_upon(repo: Path,
                                                            tmp_path: Path) -> None:
    """The user's untracked a.txt strands the run where the lane planted the branch
    already: the branch starts afresh at the target, and holds only the units' commits."""
    (repo / "a.txt").write_text("mine\n")
    code, summary = run_json(repo, planting_plan(tmp_path), "--sandbox", "none")
    assert code == 3, summary
    branch = summary["stranded_ref"]
    assert git(repo, "log", "--format=%s", branch).splitlines() == ["u2: o", "u1: o",
                                                                    "initial"]
    assert "evil.txt" not in git(repo, "ls-tree", "--name-only", branch).split()
    assert (repo / "a.txt").read_text() == "mine\n"


# -- the target's linked worktree deleted (case 16) --------------------------------------

def test_a_deleted_linked_worktree_of_the_target_is_not_brought_along(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Its directory is gone (git lists it as prunable): no file of the user's is there
    to keep safe, so the target just moves."""
    git(repo, "checkout", "-q", "-b", "other")
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "main")
    shutil.rmtree(linked)
    plan = write_plan({"target": "main", "units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": lane("act.py", "write:a.txt=a\\n")}}}]})
    code, summary = run_json(repo, plan)
    assert code == 0
    assert git(repo, "show", "main:a.txt") == "a"
    assert git(repo, "rev-parse", "main") == summary["head"]
    assert not linked.exists()
    assert not (repo / "a.txt").exists()  # 'other' is untouched
    assert git(repo, "status", "--porcelain") == ""


def test_a_locked_linked_worktree_of_the_target_that_is_missing_refuses(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Locked (`git worktree lock`: a removable disk) it will be back, and would come
    back stale: one line, exit 3, nothing moved."""
    git(repo, "checkout", "-q", "-b", "other")
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", str(linked), "main")
    git(repo, "worktree", "lock", "--reason", "on a usb disk", str(linked))
    shutil.rmtree(linked)
    tip = git(repo, "rev-parse", "main")
    plan = write_plan({"target": "main", "units": [{"id": "u1", "objective": "o", "lanes": {
        "coder": {"command": lane("act.py", "write:a.txt=a\\n")}}}]})
    line = one_error_line(wtmesh("run", plan, cwd=repo), 3)
    assert str(linked) in line and "locked" in line
    assert git(repo, "rev-parse", "main") == tip
