"""Lanes that attack through git: each test is a lane doing what a hostile agent would do
with the git it finds in its worktree, and what it must not achieve, even unsandboxed.

A lane's worktree lies outside every ``.git`` directory and carries a ``.git`` of its own
(HEAD, an index, the user's objects borrowed read-only); wtmesh's own git calls go
through a private admin dir and never read anything the lane can write. So whatever the
lane does to its ``.git`` — repoint it, plant configuration, hooks, attributes, index
flags, branches, commits — stays there, and is gone when the worktree is reused.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PROOF, alive, git, lane, make_repo, repo_snapshot, state_dir, wtmesh


def shell(script: str, **extra: Any) -> dict[str, Any]:
    return {"command": script, "timeout_s": 60, **extra}


def run_plan(repo: Path, tmp_path: Path, plan: dict[str, Any], *args: str,
             env: dict[str, str] | None = None, expect: int | None = 0) -> dict[str, Any]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    # Unsandboxed: what these tests show holds whether or not bubblewrap confines the
    # lane (with it, the lane could not even reach most of what it attacks).
    res = wtmesh("run", path, "--json", "--sandbox", "none", *args, cwd=repo, env=env)
    if expect is not None:
        assert res.returncode == expect, (res.returncode, res.stderr)
    summary: dict[str, Any] = res.json()
    return summary


def states(summary: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {u["id"]: (u["status"], u["failure_code"]) for u in summary["units"]}


def user_work(repo: Path) -> dict[str, Any]:
    """The user's files, index and HEAD, byte for byte."""
    files = {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(repo).parts}
    snapshot = repo_snapshot(repo)
    del snapshot["state_dir"]
    snapshot["refs"] = git(repo, "for-each-ref", "--format=%(objectname) %(refname)",
                           "refs/heads/", "refs/tags/", "refs/stash")
    return {"files": files, "index": (repo / ".git" / "index").read_bytes(),
            "head": (repo / ".git" / "HEAD").read_bytes(), **snapshot}


def dirty_user_tree(repo: Path) -> None:
    """Uncommitted work a careless runner would lose: a tracked edit (patch_first allows
    it), a staged new file, an untracked note and an ignored file."""
    (repo / "calc" / "ops.py").write_text((repo / "calc" / "ops.py").read_text() + "# mine\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "notes.txt").write_text("my notes\n")
    git(repo, "config", "core.excludesFile", str(repo.parent / "user-ignore"))
    (repo.parent / "user-ignore").write_text("local.cfg\n")
    (repo / "local.cfg").write_text("secret=1\n")


# -- where worktrees live -----------------------------------------------------------------


def test_worktrees_lie_outside_every_git_directory_and_the_users_tree(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    seen = tmp_path / "seen.txt"
    plan = {"lanes": {"coder": shell(f'echo "$WTMESH_WORKTREE" >> {seen}; '
                                     f'git rev-parse --git-dir >> {seen}; echo x > {{id}}.txt')},
            "units": [{"id": "u1", "objective": "one"}, {"id": "u2", "objective": "two"}]}
    summary = run_plan(repo, tmp_path, plan)
    assert [u["status"] for u in summary["units"]] == ["integrated"] * 2
    lines = seen.read_text().split()
    worktrees = [Path(p) for p in lines[0::2]]
    home = tmp_path / "home" / ".local" / "share" / "wtmesh" / "worktrees"
    for worktree, git_dir in zip(worktrees, lines[1::2], strict=True):
        assert ".git" not in worktree.parts
        assert not worktree.is_relative_to(repo)
        assert worktree.is_relative_to(home)
        assert worktree.parent.name == summary["run_id"]
        assert git_dir == ".git"  # the lane's git finds its own repository
    # Nothing registered with the user's repository, nothing left behind.
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not any(home.rglob("w*"))


def test_wtmesh_worktrees_and_xdg_data_home_choose_the_home(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    seen = tmp_path / "seen.txt"
    plan = {"lanes": {"coder": shell(f'echo "$WTMESH_WORKTREE" >> {seen}; echo x > a.txt')},
            "units": [{"id": "u1", "objective": "one"}]}
    run_plan(repo, tmp_path, plan, env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert Path(seen.read_text().split()[-1]).is_relative_to(
        tmp_path / "xdg" / "wtmesh" / "worktrees")
    plan["units"][0]["id"] = "u2"
    run_plan(repo, tmp_path, plan, env={"WTMESH_WORKTREES": str(tmp_path / "elsewhere"),
                                        "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert Path(seen.read_text().split()[-1]).is_relative_to(tmp_path / "elsewhere")


def test_gc_finds_kept_worktrees_through_the_state_directory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    seen = tmp_path / "seen.txt"
    plan = {"lanes": {"coder": shell(f'echo "$WTMESH_WORKTREE" >> {seen}; echo x > a.txt')},
            "units": [{"id": "u1", "objective": "one"}]}
    run_plan(repo, tmp_path, plan, "--keep-worktrees",
             env={"WTMESH_WORKTREES": str(tmp_path / "kept")})
    worktree = Path(seen.read_text().split()[-1])
    assert worktree.is_dir()
    # gc runs without the variable: the run's directory says where its worktrees are.
    res = wtmesh("gc", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert not worktree.exists()
    assert not any((state_dir(repo) / "admin").iterdir())


@pytest.mark.parametrize("how", ["run's worktrees dir", "forged record", "forged admin dir"])
def test_gc_never_removes_through_a_link_where_a_run_keeps_its_worktrees(
        tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path / "repo")
    victim = tmp_path / "victim"
    (victim / "precious").mkdir(parents=True)
    (victim / "precious" / "work.txt").write_text("mine\n")
    (victim / "notes.txt").write_text("mine too\n")
    # A lane puts a link to the victim where gc looks for the run's worktrees: in place
    # of the run's worktrees directory (its worktree's parent), or, by absolute path, in
    # the run's record of where that directory is; gc lists that directory and removes
    # what it finds there. Or it records a worktree of wtmesh's whose path climbs out of
    # that directory with "..".
    if how == "forged admin dir":  # a worktree of wtmesh's "in" the run's directory
        attack = ('admin="$WTMESH_REPO/.git/wtmesh/admin/forged" && mkdir -p "$admin" && '
                  'home=$(dirname "$PWD") && '
                  f'echo "$home/$(realpath --relative-to="$home" {victim})" > "$admin/worktree"')
        expect = 0
    elif how == "forged record":
        evil = tmp_path / "evil"
        attack = (f'mkdir -p {evil} && ln -s {victim} "{evil}/$WTMESH_RUN_ID" && '
                  f'echo "{evil}/$WTMESH_RUN_ID" > '
                  '"$WTMESH_REPO/.git/wtmesh/runs/$WTMESH_RUN_ID/worktrees.path"')
        expect = 0
    else:
        attack = f'home=$(dirname "$PWD") && mv "$home" "$home.moved" && ln -s {victim} "$home"'
        expect = 1  # wtmesh runs no git in a worktree whose path now leads elsewhere
    plan = {"units": [{"id": "u1", "objective": "one",
                       "lanes": {"coder": shell(f"{attack} && echo x > a.txt")}}]}
    # Kept, so that the run's directory is there to climb out of.
    run_plan(repo, tmp_path, plan, "--keep-worktrees", expect=expect)
    res = wtmesh("gc", "--unfinished", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert (victim / "precious" / "work.txt").read_text() == "mine\n"
    assert (victim / "notes.txt").read_text() == "mine too\n"


# -- reproduced case 1: a lane repoints its worktree's git ----------------------------------


def test_a_lane_repointing_its_git_at_the_users_repository_reaches_nothing(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    dirty_user_tree(repo)
    before = user_work(repo)
    # Attempt 1 of u1 makes the worktree's .git a file naming the user's git dir; attempt 1
    # of u2 a git dir of its own whose core.worktree is the user's working tree. Both then
    # fail, so wtmesh resets the worktree for the retry, and the next unit reuses it.
    repoint = {
        "u1": 'rm -rf .git; printf "gitdir: %s/.git\\n" "$WTMESH_REPO" > .git',
        "u2": 'rm -rf .git; d=$PWD/evil-git; git init -q --bare "$d"; '
              'git --git-dir="$d" config core.bare false; '
              'git --git-dir="$d" config core.worktree "$WTMESH_REPO"; '
              'printf "gitdir: %s\\n" "$d" > .git',
    }
    units = [{"id": uid, "objective": f"hostile {uid}", "unit_scope": f"{uid}.txt",
              "lanes": {"coder": shell(
                  f'if [ "$WTMESH_ATTEMPT" = 1 ]; then {script}; exit 1; fi; '
                  f'echo done > {uid}.txt', retries=1)}}
             for uid, script in repoint.items()]
    units.append({"id": "u3", "objective": "honest", "unit_scope": "u3.txt",
                  "lanes": {"coder": shell("echo three > u3.txt")}})
    summary = run_plan(repo, tmp_path, {"delivery_mode": "patch_first", "max_active": 1,
                                        "units": units})
    assert states(summary) == {u: ("integrated", None) for u in ("u1", "u2", "u3")}
    assert user_work(repo) == before


# A lane puts a link to the user's repository where wtmesh will run git next, in its
# worktree: u1 leaves it for its retry (wtmesh cleans and reseeds the worktree), u2 for
# the next unit reusing the worktree, u3 (when it links too) for the worktree's removal
# at the end of the run.
GIT_LINK = 'rm -rf .git && ln -s "$WTMESH_REPO/.git" .git'
TREE_LINK = 'mv "$PWD" "$PWD.moved" && ln -s "$WTMESH_REPO" "$PWD"'


@pytest.mark.parametrize(("link", "u3", "failed"), [
    # The worktree's .git a symlink to the user's git dir: through it, wtmesh's clean,
    # reseeding or removal would empty the user's repository.
    pytest.param(GIT_LINK, f"{GIT_LINK} && echo three > u3.txt", (),
                 id="its-git-to-the-users-git-dir"),
    # The worktree moved aside and a link to the user's working tree in its place:
    # wtmesh's next git call there (a snapshot of the lane's work, the clean before a
    # retry or before the next unit) would check out and clean the user's tree with
    # wtmesh's index, and reseed the user's .git as the lanes' own. Those units fail.
    pytest.param(TREE_LINK, "echo three > u3.txt", ("u1", "u2"),
                 id="its-worktree-to-the-users-tree"),
])
def test_a_lane_linking_to_the_users_repository_reaches_nothing(
        tmp_path: Path, link: str, u3: str, failed: tuple[str, ...]) -> None:
    repo = make_repo(tmp_path / "repo")
    dirty_user_tree(repo)
    before = user_work(repo)
    units = [{"id": "u1", "objective": "link, retry", "unit_scope": "u1.txt",
              "lanes": {"coder": shell(f'if [ "$WTMESH_ATTEMPT" = 1 ]; then {link}; exit 1; '
                                       "fi; echo one > u1.txt", retries=1)}},
             {"id": "u2", "objective": "link", "unit_scope": "u2.txt",
              "lanes": {"coder": shell(f"{link} && echo two > u2.txt")}},
             {"id": "u3", "objective": "last", "unit_scope": "u3.txt",
              "lanes": {"coder": shell(u3)}}]
    summary = run_plan(repo, tmp_path, {"delivery_mode": "patch_first", "max_active": 1,
                                        "units": units}, expect=1 if failed else 0)
    assert user_work(repo) == before
    assert git(repo, "fsck", "--no-dangling") == ""
    found = states(summary)
    ledger = state_dir(repo) / "runs" / summary["run_id"] / "ledger.jsonl"
    notes = {record["unit"]: record["notes"] for line in ledger.read_text().splitlines()
             if (record := json.loads(line))["event"] == "unit_finished"}
    for uid in ("u1", "u2", "u3"):
        if uid in failed:
            assert found[uid][0] == "failed"
            assert "is no longer the directory wtmesh made" in notes[uid], notes[uid]
        else:
            assert found[uid] == ("integrated", None)


def test_a_proof_replacing_the_integration_worktree_with_a_link_reaches_nothing(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    dirty_user_tree(repo)
    before = user_work(repo)
    # u1's proof puts a link to the user's working tree where the integration worktree
    # was, and passes; the next proof's checkout and clean there would go through it.
    proof = ('if [ -e u1.txt ]; then mv "$PWD" "$PWD.moved" && '
             'ln -s "$WTMESH_REPO" "$PWD"; fi')
    units = [{"id": uid, "objective": uid, "unit_scope": f"{uid}.txt",
              "lanes": {"coder": shell(f"echo {uid} > {uid}.txt")}} for uid in ("u1", "u2")]
    summary = run_plan(repo, tmp_path, {"delivery_mode": "patch_first", "proof_command": proof,
                                        "units": units}, expect=1)
    assert user_work(repo) == before
    assert git(repo, "fsck", "--no-dangling") == ""
    assert states(summary) == {"u1": ("failed", "proof_failed"), "u2": ("integrated", None)}


# -- reproduced case 8: index flags survive into the next unit ------------------------------


def test_index_flags_a_lane_sets_never_reach_the_next_unit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # u1 marks calc/ops.py skip-worktree and calc/parse.py assume-unchanged in its own
    # index, and, by absolute path, in every admin index of wtmesh's it can find (an admin
    # dir has no objects of its own: git takes it for a git dir once given the user's);
    # u2 reuses the worktree and edits both files: its edits must land.
    admin_git = ('GIT_OBJECT_DIRECTORY="$WTMESH_REPO/.git/objects" '
                 'git --git-dir="$d" --work-tree="$PWD" update-index')
    flag = ("git update-index --skip-worktree calc/ops.py && "
            "git update-index --assume-unchanged calc/parse.py && "
            'for d in "$WTMESH_REPO"/.git/wtmesh/admin/*/; do '
            f"{admin_git} --skip-worktree calc/ops.py && "
            f"{admin_git} --assume-unchanged calc/parse.py || exit 1; "
            "done; echo one > one.txt")
    plan = {"max_active": 1, "proof_command": PROOF, "units": [
        {"id": "u1", "objective": "flags", "lanes": {"coder": shell(flag)}},
        {"id": "u2", "objective": "edit ops", "lanes": {"coder": {"command": lane(
            "act.py", "append:calc/ops.py=\\n\\ndef twice(a):\\n    return 2 * a\\n",
            "append:calc/parse.py=\\n# parsed\\n")}}},
    ]}
    summary = run_plan(repo, tmp_path, plan)
    assert states(summary) == {"u1": ("integrated", None), "u2": ("integrated", None)}
    assert "def twice" in git(repo, "show", "main:calc/ops.py")
    assert "# parsed" in git(repo, "show", "main:calc/parse.py")
    assert set(summary["units"][1]["files"]) == {"calc/ops.py", "calc/parse.py"}


# -- reproduced case 4: configuration and refs a lane plants through its git ----------------


def test_config_hooks_and_refs_a_lane_plants_stay_in_its_own_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repo")
    marker = tmp_path / "ran"
    program = tmp_path / "evil.sh"
    program.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\ncat\n")
    program.chmod(0o755)
    git(repo, "config", "user.name", "The User")
    git(repo, "config", "user.email", "user@example.com")
    config_before = (repo / ".git" / "config").read_bytes()
    refs_before = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/", "refs/tags/",
                      "refs/stash")
    # Refs and commits first, then the configuration (so that the lane's own git never
    # runs the planted programs: any mark they leave comes from wtmesh's calls).
    plant = "; ".join([
        "git branch evil-branch", "git tag evil-tag",
        "echo stash > calc/ops.py && git stash -q",
        r"printf 'one\r\n' > one.txt", "git add one.txt", "git commit -qm mine",
        f"git config filter.evil.clean {program}",
        f"git config filter.evil.smudge {program}",
        "echo '* filter=evil' > .git/info/attributes",
        f"git config core.fsmonitor {program}",
        f"git config diff.external {program}",
        "git config core.autocrlf true",
        "git config user.email evil@example.com",
        "mkdir -p .git/hooks && cp " + str(program) + " .git/hooks/post-checkout",
        "git config core.hooksPath .git/hooks",
    ])
    plan = {"max_active": 1, "units": [
        {"id": "u1", "objective": "plant", "lanes": {"coder": shell(plant)}},
        {"id": "u2", "objective": "write crlf",
         "lanes": {"coder": shell(r"printf 'line one\r\nx marks\r\n' > two.txt")}},
    ]}
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var)
    summary = run_plan(repo, tmp_path, plan)
    assert states(summary) == {"u1": ("integrated", None), "u2": ("integrated", None)}
    # The lane's commit is not on the target; its change is, as a unit's commit.
    assert git(repo, "log", "-1", "--format=%s", "main~1") == "u1: plant"
    # No filter rewrote a file, no line ending was converted (neither in u1's snapshot,
    # with the planted config in place, nor in u2's), no program ran.
    for rev, content in (("main~1:one.txt", b"one\r\n"),
                         ("main:two.txt", b"line one\r\nx marks\r\n")):
        blob = subprocess.run(["git", "cat-file", "blob", rev], cwd=repo,
                              capture_output=True, check=True).stdout
        assert blob == content, rev
    assert not marker.exists()
    for rev in ("main", "main~1"):
        assert git(repo, "log", "-1", "--format=%ae %ce", rev) == \
            "user@example.com user@example.com"
    assert (repo / ".git" / "config").read_bytes() == config_before
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/", "refs/tags/",
               "refs/stash") == refs_before
    assert not (repo / ".git" / "info" / "attributes").exists()


# -- reproduced case 5: git in the proof ------------------------------------------------------


def test_a_proof_moving_branches_with_its_git_moves_nothing_of_the_users(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    # The proof points main back at the base and stages a reversal, with the git it finds
    # in the integration worktree.
    proof = (f"git update-ref refs/heads/main {base} && git read-tree {base} && "
             "git branch -f planted HEAD && exit 0")
    plan = {"proof_command": proof, "units": [
        {"id": "u1", "objective": "one", "lanes": {"coder": shell("echo one > one.txt")}},
        {"id": "u2", "objective": "two", "lanes": {"coder": shell("echo two > two.txt")}},
    ]}
    summary = run_plan(repo, tmp_path, plan)
    assert states(summary) == {"u1": ("integrated", None), "u2": ("integrated", None)}
    assert git(repo, "log", "--format=%s", f"{base}..main").splitlines() == \
        ["u2: two", "u1: one"]
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/") == \
        "refs/heads/main"


def test_a_lane_committing_in_its_worktree_lands_only_as_its_diff(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    plan = {"units": [{"id": "u1", "objective": "commits", "unit_scope": "a.txt",
                       "lanes": {"coder": shell(
                           "echo a > a.txt && echo b > b.txt && git add -A && "
                           "git -c user.name=x -c user.email=y commit -qm sneaky && "
                           "rm b.txt")}}]}
    summary = run_plan(repo, tmp_path, plan)
    assert states(summary) == {"u1": ("integrated", None)}
    assert summary["units"][0]["files"] == ["a.txt"]
    assert git(repo, "rev-list", "--count", f"{base}..main") == "1"
    assert git(repo, "status", "--porcelain") == ""


# -- reproduced cases 2 and 3: daemons that outlive their lane or proof ----------------------


def test_daemons_a_lane_or_a_proof_starts_end_with_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    pids = tmp_path / "pids"
    daemon = ("setsid sh -c 'while true; do echo x >> \"$WTMESH_WORKTREE/../spray\"; "
              f"sleep 0.05; done' & echo $! >> {pids}")
    # The fixer and the proof first fail if a daemon started before them runs on (not
    # gone, nor a zombie): each ends with its lane, not with the run.
    none_left = (f"touch {pids}; for p in $(cat {pids}); do "
                 "if [ -r /proc/$p/stat ] && ! sed 's/.*) //' /proc/$p/stat | grep -q ^Z; "
                 'then echo "$p runs on" >&2; exit 1; fi; done')
    # Not on the base (whose proof runs beside the coder, and its daemon).
    plan = {"proof_command": f"[ -e a.txt ] || exit 0; {none_left}; {daemon}; exit 0",
            "units": [
        {"id": "u1", "objective": "one", "lanes": {
            "coder": shell(f"{daemon}; echo 1 > a.txt"),
            "fixer": shell(f"{none_left}; {daemon}; echo 2 > b.txt")}},
    ]}
    summary = run_plan(repo, tmp_path, plan)
    assert states(summary) == {"u1": ("integrated", None)}
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 3  # the coder's, the fixer's, the proof's
    assert not any(alive(pid) for pid in started)
