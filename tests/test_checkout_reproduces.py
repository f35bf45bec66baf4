"""SPEC 10: a unit's change holds only what a checkout of it reproduces. Hostile lanes
plant symlinks that escape only once resolved through other links (in the unit's tree, in
the start tree, or in another unit's landed change), embedded repositories, and gitlinks
to commits that exist nowhere; each fails ``scope_violation``, naming it, and nothing of
it lands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, git, wtmesh

from worktree_mesh import diffs
from worktree_mesh.git import Git, Sha, discover
from worktree_mesh.scope import Scope


def ledger(repo: Path, run_id: str) -> list[dict[str, Any]]:
    path = repo / ".git/wtmesh/runs" / run_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_plan(repo: Path, write_plan: Any, data: dict[str, Any], *args: str,
             env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each unit's record in the ``--json`` summary, with the notes its
    ``unit_finished`` ledger event gives and the run's id."""
    res = wtmesh("run", write_plan(data), "--json", *args, cwd=repo, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    summary = res.json()
    notes = {event["unit"]: event.get("notes", "") for event in ledger(repo, summary["run_id"])
             if event["event"] == "unit_finished"}
    return {unit["id"]: {**unit, "notes": notes[unit["id"]], "run_id": summary["run_id"]}
            for unit in summary["units"]}


def run_units(repo: Path, write_plan: Any,
              units: dict[str, tuple[str | list[str], str | list[str]]], *args: str,
              env: dict[str, str] | None = None, **plan: Any) -> dict[str, dict[str, Any]]:
    """Run ``{id: (unit_scope, coder command)}`` in plan order; ``args``: the command
    line's."""
    return run_plan(repo, write_plan, {
        "units": [{"id": uid, "objective": f"hostile {uid}", "unit_scope": scope,
                   "lanes": {"coder": {"command": command, "timeout_s": 120}}}
                  for uid, (scope, command) in units.items()], **plan}, *args, env=env)


def outcome(unit: dict[str, Any]) -> tuple[str, str | None]:
    return unit["status"], unit["failure_code"]


def tree_paths(repo: Path, rev: str = "main") -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", "-z", rev).split("\0")) - {""}


def commit_file(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


# -- symlinks --------------------------------------------------------------------------


def test_case_9_a_link_through_a_directory_link_does_not_land(repo: Path,
                                                              write_plan: Any) -> None:
    """Issue 12, case 9: ``src/up -> ..`` and ``src/esc -> up/../outside.txt``; taken
    alone, ``src/esc`` reads as ``src/outside.txt``, but a checkout leaves the repo."""
    base = git(repo, "rev-parse", "main")
    units = run_units(repo, write_plan, {
        "u9": ("src/", "mkdir src && ln -s .. src/up && ln -s up/../outside.txt src/esc")})
    assert outcome(units["u9"]) == ("failed", "scope_violation")
    assert "symlink pointing outside the repository: src/esc (via src/up)" in \
        units["u9"]["notes"]
    assert git(repo, "rev-parse", "main") == base
    assert not (repo / "src").exists()


def test_hostile_link_shapes_each_fail_naming_the_link(repo: Path, write_plan: Any) -> None:
    """Each harmless-looking link by link; in a checkout each leaves the repository,
    enters ``.git`` (as an NTFS or HFS+ file system reads a name) or cannot resolve; or
    git refuses to record it (that was an internal error)."""
    chain = " && ".join(f"ln -s l{i + 1} v5/l{i}" for i in range(41))
    units = run_units(repo, write_plan, {
        # A link to a link to outside: v1/d/up is v1/d, so three '..' leave from there.
        "u-hops": ("v1/", ("mkdir -p v1/d && ln -s d/l2 v1/l1 && ln -s . v1/d/up && "
                          "ln -s up/../../../x v1/d/l2")),
        # Thirty links in a row, the last climbing through a directory link.
        "u-long": ("v2/", "mkdir v2 && ln -s .. v2/up && "
                          + " && ".join(f"ln -s l{i + 1} v2/l{i}" for i in range(30))
                          + " && ln -s up/../x v2/l30"),
        "u-ntfs": ("v3/", ("mkdir v3 && ln -s ../git~1/config v3/short && "
                          "ln -s ../.git./hooks v3/dots")),
        "u-hfs": ("v6/", ("mkdir v6 && ln -s \"../.g$(printf '\\342\\200\\214')it/config\" "
                         "v6/zwnj")),
        "u-loops": ("v4/", "mkdir v4 && ln -s loop v4/loop && ln -s b v4/a && ln -s a v4/b"),
        "u-41": ("v5/", f"mkdir v5 && {chain} && echo end > v5/l41"),
        # git refuses a symlinked .gitmodules, however spelt ("invalid path"): in any case,
        # as NTFS short names (the fallback form too), after a backslash.
        "u-modules": (["v7/", ".gitmodules"], ("mkdir v7 && ln -s calc/ops.py .gitmodules && "
                                              "ln -s x v7/.GITMODULES")),
        "u-short-modules": ("v8/", ("mkdir v8 && ln -s x 'v8/GI7EBA~1' && "
                                    "ln -s x 'v8/x\\gitmod~2'")),
    }, max_active=3)
    assert {uid: outcome(u) for uid, u in units.items()} == {
        uid: ("failed", "scope_violation") for uid in units}
    notes = {uid: u["notes"] for uid, u in units.items()}
    assert notes["u-hops"] == ("symlink pointing outside the repository: "
                               "v1/d/l2 (via v1/d/up), v1/l1 (via v1/d/l2, v1/d/up)")
    assert notes["u-long"].startswith("symlink pointing outside the repository: v2/l0 "
                                      "(via v2/l1, v2/l2, v2/l3, ...), ")
    assert ", v2/l30 (via v2/up), " in notes["u-long"]
    assert notes["u-ntfs"] == "symlink pointing into .git: v3/dots, v3/short"
    assert notes["u-hfs"] == "symlink pointing into .git: v6/zwnj"
    loop = "symlink loop (more than 40 links to follow): "
    assert notes["u-loops"] == loop + "v4/a (via v4/b), v4/b (via v4/a), v4/loop"
    # From v5/l1 on, 40 links or fewer lead to the file: only v5/l0 cannot resolve.
    assert notes["u-41"] == loop + "v5/l0 (via v5/l1, v5/l2, v5/l3, ...)"
    assert notes["u-modules"] == "symlink git refuses to record: .gitmodules, v7/.GITMODULES"
    assert notes["u-short-modules"] == "symlink git refuses to record: v8/GI7EBA~1, v8/x\\gitmod~2"
    assert git(repo, "log", "--format=%s", "main") == "initial"


def test_links_of_the_start_tree_count(repo: Path, write_plan: Any) -> None:
    """The tree the unit would land includes what is there already: a new link through
    a link the user committed, or a deletion that makes an untouched link escape. A link
    that escaped before the unit and that it leaves alone fails no one."""
    (repo / "src").mkdir()
    (repo / "src/up").symlink_to("..")
    (repo / "tools").mkdir()
    (repo / "tools/python").symlink_to("/usr/bin/python3")
    (repo / "w/d/e").mkdir(parents=True)
    (repo / "w/d/e/keep").write_text("k\n")
    (repo / "w/c").symlink_to("d/e")
    (repo / "w/l").symlink_to("c/../../..")  # w/d/e, up three: the top
    commit_file(repo, "links of the user's")
    units = run_units(repo, write_plan, {
        "u-through": ("src/", "ln -s up/../outside.txt src/esc"),
        "u-via-user": ("docs/", "mkdir docs && ln -s ../tools/python docs/py"),
        "u-unlink": ("w/c", "rm w/c"),
        "u-fine": ("calc/", "ln -s ops.py calc/alias.py"),
    })
    assert {uid: outcome(u) for uid, u in units.items()} == {
        "u-through": ("failed", "scope_violation"),
        "u-via-user": ("failed", "scope_violation"),
        "u-unlink": ("failed", "scope_violation"),
        "u-fine": ("integrated", None),
    }
    assert units["u-through"]["notes"].endswith("src/esc (via src/up)")
    assert units["u-via-user"]["notes"].endswith("docs/py (via tools/python)")
    # The deleted link is not what escapes: the untouched one it leaves behind is.
    assert units["u-unlink"]["notes"] == "symlink pointing outside the repository: w/l"
    assert tree_paths(repo) >= {"w/c", "calc/alias.py"}
    assert not {"src/esc", "docs/py"} & tree_paths(repo)


BARRIER = ("import os, pathlib, sys, time\n"
           "d = pathlib.Path(sys.argv[1])\n"
           "(d / os.environ['WTMESH_UNIT_ID']).touch()\n"
           "while len(list(d.iterdir())) < int(sys.argv[2]):\n"
           "    time.sleep(0.02)\n"
           "for pair in sys.argv[3:]:\n"
           "    link, target = pair.split('=')\n"
           "    os.makedirs(os.path.dirname(link), exist_ok=True)\n"
           "    os.symlink(target, link)\n")


def test_a_link_that_escapes_only_with_another_units_link_does_not_land(
        repo: Path, write_plan: Any, tmp_path: Path) -> None:
    """Four units start together from the same commit (each lane waits until all four
    run), so no unit's own tree shows the escape: it appears only in the candidate tree,
    where one unit's link meets another's. Either order, the later unit fails, naming the
    link that escapes; the earlier one lands."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def lane(*links: str) -> list[str]:
        return [PY, "-c", BARRIER, str(barrier), "4", *links]

    units = run_units(repo, write_plan, {
        "a1-up": ("s1/up", lane("s1/up=..")),
        "b1-esc": ("s1/esc", lane("s1/esc=up/../outside.txt")),
        "a2-esc": ("s2/esc", lane("s2/esc=up/../outside.txt")),
        "b2-up": ("s2/up", lane("s2/up=..")),
    }, max_active=4, sandbox_writable=[str(barrier)])  # the lanes meet there
    assert {uid: outcome(u) for uid, u in units.items()} == {
        "a1-up": ("integrated", None), "b1-esc": ("failed", "scope_violation"),
        "a2-esc": ("integrated", None), "b2-up": ("failed", "scope_violation")}
    assert units["b1-esc"]["notes"] == \
        "symlink pointing outside the repository: s1/esc (via s1/up)"
    assert units["b2-up"]["notes"] == \
        "symlink pointing outside the repository: s2/esc (via s2/up)"
    landed = tree_paths(repo)
    assert {"s1/up", "s2/esc"} <= landed and not {"s1/esc", "s2/up"} & landed


@pytest.mark.parametrize("batch", ["1", "auto"])
def test_in_a_batch_a_link_is_checked_on_the_tree_that_would_land(
        repo: Path, write_plan: Any, tmp_path: Path, batch: str) -> None:
    """A batch applies every unit onto the chain so far: a link escapes through a unit
    ahead of it in the chain. Where that unit lands, the link's unit fails; where the
    proof takes that unit out, the link's unit goes round again without it and lands,
    as one unit at a time gives. All four start together; with the landing window
    long, the batch gathers all four."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def lane(*links: str, then: str = "") -> list[str] | str:
        command = [PY, "-c", BARRIER, str(barrier), "4", *links]
        return shlex.join(command) + then if then else command

    units = run_units(repo, write_plan, {
        "a1-up": ("s1/up", lane("s1/up=..")),
        "b1-esc": ("s1/esc", lane("s1/esc=up/../outside.txt")),
        "c2-up": (["s2/up", "broken.txt"], lane("s2/up=..", then=" && echo > broken.txt")),
        "d2-esc": ("s2/esc", lane("s2/esc=up/../outside.txt")),
    }, "--batch", batch, env={"WTMESH_LANDING_WINDOW_S": "600"}, max_active=4,
        proof_command="test ! -e broken.txt", sandbox_writable=[str(barrier)])
    assert {uid: outcome(u) for uid, u in units.items()} == {
        "a1-up": ("integrated", None), "b1-esc": ("failed", "scope_violation"),
        "c2-up": ("failed", "proof_failed"), "d2-esc": ("integrated", None)}
    assert units["b1-esc"]["notes"] == \
        "symlink pointing outside the repository: s1/esc (via s1/up)"
    assert tree_paths(repo) >= {"s1/up", "s2/esc"}
    assert not {"s1/esc", "s2/up", "broken.txt"} & tree_paths(repo)
    if batch == "auto":  # one chain held all four; d2-esc was proven without c2-up
        proven = [event["units"] for event in ledger(repo, units["a1-up"]["run_id"])
                  if event["event"] == "proof_started"]
        assert proven == [["a1-up", "c2-up"], ["a1-up"], ["d2-esc"]]


# -- embedded repositories and gitlinks --------------------------------------------------

COMMIT = "git add -A && git commit -q -m inner"
EMBEDDED = "embedded git repository (its files cannot land)"


def test_case_10_an_embedded_repository_does_not_land_as_a_gitlink(
        repo: Path, write_plan: Any) -> None:
    """Issue 12, case 10: ``git init`` + a commit in ``vendor/lib``: ``git add -A`` makes
    it a gitlink to a commit that exists only in the worktree."""
    base = git(repo, "rev-parse", "main")
    units = run_units(repo, write_plan, {
        "u10": ("vendor/", (f"git init -q vendor/lib && cd vendor/lib && echo code > lib.py "
                           f"&& {COMMIT}"))})
    assert outcome(units["u10"]) == ("failed", "scope_violation")
    assert units["u10"]["notes"] == f"{EMBEDDED}: vendor/lib"
    assert git(repo, "rev-parse", "main") == base


def test_every_kind_of_embedded_repository_fails_the_unit(repo: Path,
                                                          write_plan: Any) -> None:
    """Without a commit (``git add -A`` fails: it was an internal error), a ``.git``
    file or link borrowing the user's repository (a gitlink to a commit that does
    exist), ``git init`` in a tracked directory, one deep in a new directory, and names
    git refuses because a file system may read them as ``.git`` (NTFS also at a ``\\``)."""
    units = run_units(repo, write_plan, {
        "u-nocommit": ("e1/", "git init -q e1/lib && echo x > e1/lib/f"),
        "u-gitfile": ("e2/", ('mkdir -p e2/lib && echo "gitdir: $WTMESH_REPO/.git" > '
                             'e2/lib/.git && echo x > e2/lib/f')),
        "u-gitlink": ("e3/", 'mkdir -p e3/lib && ln -s "$WTMESH_REPO/.git" e3/lib/.git'),
        "u-tracked": ("calc/", "git init -q calc && echo '# more' >> calc/ops.py"),
        "u-deep": ("e4/", (f"mkdir -p e4/new && echo t > e4/new/top && "
                          f"git init -q e4/new/deep/lib && cd e4/new/deep/lib && "
                          f"echo y > y && {COMMIT}")),
        "u-case": ("e5/", "mkdir -p e5/.GIT && echo '[core]' > e5/.GIT/config"),
        "u-short": ("e6/", "mkdir -p 'e6/git~1' && echo x > 'e6/git~1/config'"),
        "u-backslash": ("e7/", "mkdir e7 && echo x > 'e7/x\\.git'"),
    }, max_active=3)
    assert {uid: outcome(u) for uid, u in units.items()} == {
        uid: ("failed", "scope_violation") for uid in units}
    named = {"u-nocommit": "e1/lib", "u-gitfile": "e2/lib", "u-gitlink": "e3/lib",
             "u-tracked": "calc", "u-deep": "e4/new/deep/lib", "u-case": "e5/.GIT",
             "u-short": "e6/git~1", "u-backslash": "e7/x\\.git"}
    assert {uid: u["notes"] for uid, u in units.items()} == {
        uid: f"{EMBEDDED}: {path}" for uid, path in named.items()}
    assert git(repo, "log", "--format=%s", "main") == "initial"


def test_an_embedded_repository_from_the_fixer_fails_the_unit(repo: Path,
                                                              write_plan: Any) -> None:
    """The fixer makes a repository of a directory the coder added: no path is pending
    any more (the coder's snapshot took them up), but the change still lies in it."""
    plan = {"units": [{
        "id": "u1", "objective": "o", "unit_scope": "lib/",
        "lanes": {"coder": {"command": "mkdir lib && echo a > lib/a.py"},
                  "fixer": {"command": f"cd lib && git init -q && {COMMIT}"}}}]}
    unit = run_plan(repo, write_plan, plan)["u1"]
    assert outcome(unit) == ("failed", "scope_violation")
    assert unit["notes"] == f"{EMBEDDED}: lib"
    assert git(repo, "log", "--format=%s", "main") == "initial"


GHOST = "1234567890abcdef1234567890abcdef12345678"
STAGE_GHOST = (f"mkdir -p vendor/ghost && git update-index --add "
               f"--cacheinfo 160000,{GHOST},vendor/ghost")


def test_a_gitlink_a_lane_stages_is_its_own(repo: Path, write_plan: Any) -> None:
    """No repository in the worktree at all: the lane stages a gitlink to a made-up
    commit straight into its index, over an empty directory. That index is the lane's
    ``.git``'s, not the one wtmesh snapshots from: the worktree holds no change."""
    units = run_units(repo, write_plan, {
        "u-ghost": ("vendor/", f"{STAGE_GHOST} && git ls-files -s vendor | grep -q ^160000")})
    assert outcome(units["u-ghost"]) == ("no_diff", None)
    assert units["u-ghost"]["notes"] == "the coder changed nothing"
    assert git(repo, "log", "--format=%s", "main") == "initial"


def test_a_gitlink_a_lane_stages_in_wtmeshs_own_index_does_not_land(
        repo: Path, write_plan: Any) -> None:
    """Unsandboxed, a lane can find wtmesh's admin dir for its worktree and stage the
    gitlink in the very index the snapshot is taken from: the scope check refuses it."""
    find_admin = ('for a in "$WTMESH_REPO"/.git/wtmesh/admin/*/; do '
                  '[ "$(cat "$a/worktree")" = "$WTMESH_WORKTREE" ] && admin=$a; done; '
                  '[ -n "$admin" ] && export GIT_INDEX_FILE="$admin/index"')
    units = run_units(repo, write_plan, {
        "u-ghost": ("vendor/", f"{find_admin} && {STAGE_GHOST}")}, sandbox="none")
    assert outcome(units["u-ghost"]) == ("failed", "scope_violation")
    assert units["u-ghost"]["notes"] == \
        "gitlink to a commit that is not in the repository: vendor/ghost"
    assert git(repo, "log", "--format=%s", "main") == "initial"


def test_the_scope_check_refuses_gitlinks_to_commits_it_lacks(repo: Path, tmp_path: Path) -> None:
    """Whatever makes the snapshot: a result commit whose tree has a gitlink to a missing
    commit, or to an object that is not a commit, fails, naming it; one to a commit here
    passes."""
    g = Git(discover(repo).common_dir)
    start = Sha(git(repo, "rev-parse", "HEAD"))
    blob = git(repo, "rev-parse", "HEAD:README.md")
    env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / "scratch-index")}
    verdicts = {}
    for name, sha in [("missing", "1234567890abcdef1234567890abcdef12345678"),
                      ("blob", blob), ("here", start),
                      ("odd\tname", "1234567890abcdef1234567890abcdef12345678")]:
        for args in (["read-tree", start],
                     ["update-index", "--add", "--cacheinfo", f"160000,{sha},vendor/{name}"]):
            subprocess.run(["git", *args], cwd=repo, check=True, env=env)
        tree = subprocess.run(["git", "write-tree"], cwd=repo, check=True, capture_output=True,
                              text=True, env=env).stdout.strip()
        result = g.commit_tree(tree, [start], "result")
        verdicts[name] = diffs.collect(g, start, result, Scope.parse("**"),
                                       tmp_path / name / "unit.diff").violations
    assert verdicts == {
        "missing": ("gitlink to a commit that is not in the repository: vendor/missing",),
        "blob": ("gitlink to a commit that is not in the repository: vendor/blob",),
        "here": (),
        # Named as every other violation names a path, as git spells it.
        "odd\tname": ('gitlink to a commit that is not in the repository: "vendor/odd\\tname"',)}


def make_repo_with_submodule(tmp_path: Path) -> Path:
    sub = tmp_path / "sub"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "s.txt").write_text("s\n")
    commit_file(sub, "sub")
    repo = tmp_path / "super"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub),
        "vendor/sub")
    commit_file(repo, "initial")
    return repo


def test_a_submodule_moved_to_a_commit_only_its_worktree_has_does_not_land(
        tmp_path: Path, write_plan: Any) -> None:
    """A lane populates the repository's submodule and commits in it: the gitlink would
    move to a commit this repository lacks, and the submodule is a repository embedded in
    the worktree, which the unit fails on first. Deleting the submodule lands as a
    deletion."""
    repo = make_repo_with_submodule(tmp_path)
    before = git(repo, "rev-parse", "HEAD:vendor/sub")
    units = run_units(repo, write_plan, {
        "u-bump": ("vendor/", ("git -c protocol.file.allow=always submodule -q update --init "
                              "&& cd vendor/sub && echo more >> s.txt && "
                              "git commit -q -am bump")),
    })
    assert outcome(units["u-bump"]) == ("failed", "scope_violation")
    assert units["u-bump"]["notes"] == f"{EMBEDDED}: vendor/sub"
    assert git(repo, "rev-parse", "main:vendor/sub") == before
    units = run_units(repo, write_plan, {
        "u-drop": ("**", "git rm -q vendor/sub")})
    assert outcome(units["u-drop"]) == ("integrated", None)
    assert "vendor/sub" not in tree_paths(repo)
