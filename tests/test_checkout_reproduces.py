"""SPEC 10: a unit's change holds only what a checkout of it reproduces. Hostile lanes
plant symlinks that escape only once resolved through other links (in the unit's tree, in
the start tree, or in another unit's landed change); each fails ``scope_violation``,
naming it, and nothing of it lands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import PY, git, wtmesh


def run_plan(repo: Path, write_plan: Any, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each unit's record in the ``--json`` summary, with the notes its
    ``unit_finished`` ledger event gives."""
    res = wtmesh("run", write_plan(data), "--json", cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    summary = res.json()
    ledger = repo / ".git/wtmesh/runs" / summary["run_id"] / "ledger.jsonl"
    notes = {event["unit"]: event.get("notes", "")
             for event in map(json.loads, ledger.read_text().splitlines())
             if event["event"] == "unit_finished"}
    return {unit["id"]: {**unit, "notes": notes[unit["id"]]} for unit in summary["units"]}


def run_units(repo: Path, write_plan: Any, units: dict[str, tuple[str, str | list[str]]],
              **plan: Any) -> dict[str, dict[str, Any]]:
    """Run ``{id: (unit_scope, coder command)}`` in plan order."""
    return run_plan(repo, write_plan, {
        "units": [{"id": uid, "objective": f"hostile {uid}", "unit_scope": scope,
                   "lanes": {"coder": {"command": command, "timeout_s": 120}}}
                  for uid, (scope, command) in units.items()], **plan})


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
    enters ``.git`` (as an NTFS or HFS+ file system reads a name) or cannot resolve."""
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
    }, max_active=4)
    assert {uid: outcome(u) for uid, u in units.items()} == {
        "a1-up": ("integrated", None), "b1-esc": ("failed", "scope_violation"),
        "a2-esc": ("integrated", None), "b2-up": ("failed", "scope_violation")}
    assert units["b1-esc"]["notes"] == \
        "symlink pointing outside the repository: s1/esc (via s1/up)"
    assert units["b2-up"]["notes"] == \
        "symlink pointing outside the repository: s2/esc (via s2/up)"
    landed = tree_paths(repo)
    assert {"s1/up", "s2/esc"} <= landed and not {"s1/esc", "s2/up"} & landed
