"""Where a symlink points in the tree a unit would land (SPEC 10), read from git's trees
alone, checked against the kernel and ``os.path.realpath`` on a real checkout."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worktree_mesh.diffs import (
    MAX_LINK_FOLLOWS,
    embedded_repositories,
    is_dotgit,
    links_git_refuses,
    resolve,
)
from worktree_mesh.git import Git


def links(**pairs: str) -> dict[str, bytes]:
    return {path.replace("__", "/"): target.encode() for path, target in pairs.items()}


def where(path: str, tree_links: dict[str, bytes]) -> str | None:
    resolution = resolve(path, tree_links)
    return resolution.problem or resolution.path


def test_a_link_through_a_directory_link_is_resolved_physically() -> None:
    """Issue 12, case 9: textually ``src/up/../outside.txt`` is ``src/outside.txt``; in a
    checkout ``src/up`` is the top, so ``..`` leaves the repository."""
    tree = links(src__up="..", src__esc="up/../outside.txt")
    assert where("src/up", tree) == ""
    assert where("src/esc", tree) == "outside"
    assert resolve("src/esc", tree).via == ("src/esc", "src/up")


@pytest.mark.parametrize(("target", "expected"), [
    ("/etc/passwd", "outside"),
    ("//etc", "outside"),
    ("../..", "outside"),
    ("../../x", "outside"),
    ("../x", "x"),
    ("./../d/./b/", "d/b"),
    # .git, however spelt, even in passing.
    ("../.git/config", ".git"),
    ("../.GIT/config", ".git"),
    ("../.git/../calc", ".git"),
    ("../git~1/config", ".git"),
    ("../.git. /config", ".git"),
    ("../.git::$INDEX_ALLOCATION/config", ".git"),
    ("../.g\u200cit/config", ".git"),
    ("../.gitignore", ".gitignore"),
    ("../.github/x", ".github/x"),
    # Itself, and a target cut at a NUL as symlink(2) would.
    ("a", "loop"),
    ("a/x", "loop"),
    ("ok\0/../../../x", "d/ok"),
    # Names that are not links count as directories, present or not.
    ("missing/../../../x", "outside"),
    ("missing/../x", "d/x"),
])
def test_where_one_hostile_link_leads(target: str, expected: str) -> None:
    """The link ``d/a`` alone in its tree."""
    assert where("d/a", links(d__a=target)) == expected


@pytest.mark.parametrize(("tree", "path", "expected"), [
    # A link to a link to outside, each harmless-looking alone.
    (links(l1="d/l2", d__l2="up/../../x", d__up="."), "l1", "outside"),
    (links(hop="tools/python", tools__python="/usr/bin/python3"), "hop", "outside"),
    # The path's own directories: a lookup below a link goes through it.
    (links(src__up=".."), "src/up/src/up/x", "x"),
    (links(src__up=".."), "src/up/../x", "outside"),
    # .git reached through a link.
    (links(src__up="..", src__g="up/.git"), "src/g", ".git"),
    (links(meta=".git", src__g="../meta/hooks"), "src/g", ".git"),
    (links(a="b", b="a"), "a", "loop"),
])
def test_where_a_path_leads_through_links(tree: dict[str, bytes], path: str,
                                          expected: str) -> None:
    assert where(path, tree) == expected


def chain(length: int, end: str) -> dict[str, bytes]:
    """``l0 -> l1 -> ... -> l<length-1> -> end``: ``length`` links to follow from l0."""
    tree = {f"l{i}": f"l{i + 1}".encode() for i in range(length - 1)}
    tree[f"l{length - 1}"] = end.encode()
    return tree


def test_the_link_bound_is_the_kernels(tmp_path: Path) -> None:
    """The kernel follows at most 40 links in one lookup (ELOOP beyond): a checkout of a
    longer chain does not resolve, and neither does the tree's."""
    for length, resolves in ((MAX_LINK_FOLLOWS, True), (MAX_LINK_FOLLOWS + 1, False)):
        tree = chain(length, "end")
        root = tmp_path / str(length)
        root.mkdir()
        (root / "end").write_text("x")
        for path, target in tree.items():
            os.symlink(target, root / path)
        if resolves:
            assert os.stat(root / "l0")
            assert where("l0", tree) == "end"
        else:
            with pytest.raises(OSError) as caught:
                os.stat(root / "l0")
            assert caught.value.errno == errno.ELOOP
            assert where("l0", tree) == "loop"
    assert where("l0", chain(MAX_LINK_FOLLOWS - 1, "up/../x") | {"up": b".."}) == "outside"


@pytest.mark.parametrize("name", [".git", ".GIT", ".Git", "git~1", "GIT~1", ".git.", ".git ",
                                  ".git . .", ".git::$DATA", ".g\u200dit", "\ufeff.git"])
def test_names_taken_for_git(name: str) -> None:
    assert is_dotgit(name)


@pytest.mark.parametrize("name", [".gitx", "git", ".gi", "x.git", ".gitmodules", "git~2",
                                  ".git~1", "..git"])
def test_names_not_taken_for_git(name: str) -> None:
    assert not is_dotgit(name)


# Names a lane can give a file or a link that git refuses to record ("invalid path", its
# verify_path: core.protectNTFS is on everywhere). The checks before a snapshot must name
# each one: otherwise wtmesh's own ``git add -A`` fails, and the unit ends as if wtmesh
# could not run it. Either separator counts, '/' or '\\', as NTFS reads both.
REFUSED_ANY = [".GIT", ".git ", "git~1", "GIT~1.", "x\\.git", ".git\\config", "x\\GIT~1 \\y"]
REFUSED_AS_LINK = [".gitmodules", ".GITMODULES", ".gitmodules. ", ".gitmodules::$DATA",
                   ".gitmodules:x\\y", "gitmod~1", "GITMOD~4 .", "gi7eba~1", "GI7EB~12",
                   "gi7~1234", "~1234567", "x\\.gitmodules", "x\\gi7eba~9"]
ACCEPTED = ["gitmodules", ".gitmodulesx", "gitmod~5", "gi7eba~0", "gi7ebax~1", "gi7eba~1x",
            ".gitmodules\\x", " .git", "a\\b", ".github", ".git~1"]


@pytest.mark.parametrize("kind", ["file", "link"])
def test_every_name_git_refuses_to_record_is_named_first(tmp_path: Path, kind: str) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    verdicts = {}
    for i, name in enumerate([*REFUSED_ANY, *REFUSED_AS_LINK, *ACCEPTED]):
        path = f"d{i}/{name}"
        (tmp_path / f"d{i}").mkdir()
        if kind == "file":
            (tmp_path / path).write_text("x\n")
        else:
            os.symlink("x", tmp_path / path)
        refused = subprocess.run(["git", "add", "--", f"d{i}"], cwd=tmp_path,
                                 capture_output=True).returncode != 0
        named = bool(embedded_repositories(tmp_path, [path])
                     or links_git_refuses(tmp_path, [path]))
        verdicts[name] = (refused, named)
    refusals = REFUSED_ANY + (REFUSED_AS_LINK if kind == "link" else [])
    assert verdicts == {name: (name in refusals,) * 2 for name in verdicts}


# -- the resolver against the file system ---------------------------------------------

# Few names, never the checkout's own, so a resolution that leaves it is gone for good.
NAMES = ["a", "b", "c"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)


@st.composite
def entries(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    """Regular files (None) and links whose targets climb to about the top, go through
    another entry (so links lead through links) and wander on."""
    links = draw(st.lists(paths, min_size=1, max_size=7, unique=True))
    files = draw(st.lists(paths, max_size=3))
    out: list[tuple[str, str | None]] = [(path, None) for path in files]
    for link in links:
        names = [".."] * max(0, link.count("/") + draw(st.integers(-1, 1)))
        through = draw(st.sampled_from(["", *links, *files]))
        names += [through] if through else []
        names += draw(st.lists(st.sampled_from([*NAMES, "..", "."]), max_size=2))
        target = "/".join(names) or "."
        if draw(st.integers(0, 9)) == 0:
            target = "/no-such-root/" + target
        out.append((link, target))
    return draw(st.permutations(out))


def consistent(tree: list[tuple[str, str | None]]) -> dict[str, str | None]:
    """Entries (None: a regular file, else a link's target) with no path below another:
    a git tree cannot hold both (git refuses one beneath a link)."""
    kept: dict[str, str | None] = {}
    for path, target in tree:
        if any(path == k or path.startswith(k + "/") or k.startswith(path + "/")
               for k in kept):
            continue
        kept[path] = target
    return kept


def checkout(tree: dict[str, str | None], scratch: Path) -> tuple[Git, str, Path]:
    """The entries committed to a git tree (from files written in a work tree), and a
    checkout of that tree in a directory of its own."""
    work, git_dir, out = scratch / "work", scratch / "repo.git", scratch / "out" / "checkout"
    for path, target in tree.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        if target is None:
            (work / path).write_text(path)
        else:
            os.symlink(target, work / path)

    def git(*args: str, **env: str) -> str:
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                              capture_output=True, text=True,
                              env={**os.environ, **env}).stdout.strip()

    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    git(f"--work-tree={work}", "add", "-A")
    tree_id = git("write-tree")
    index = str(scratch / "checkout.index")
    git("read-tree", tree_id, GIT_INDEX_FILE=index)
    out.mkdir(parents=True)
    git(f"--work-tree={out}", "checkout-index", "-a", GIT_INDEX_FILE=index)
    return Git(git_dir), tree_id, out


def gave_up(real: str, top: str) -> bool:
    """Did ``realpath`` stop at a cycle inside the checkout ``top``? It then returns the
    link's path and the rest unresolved (Python 3.11), so a link is left in it."""
    parts = Path(real).parts
    return any(os.path.islink(os.path.join(*parts[:i])) for i in range(1, len(parts) + 1)
               if os.path.join(*parts[:i]).startswith(top + os.sep))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries())
def test_resolver_agrees_with_a_checkout(raw: list[tuple[str, str | None]]) -> None:
    tree = consistent(raw)
    with tempfile.TemporaryDirectory() as scratch:
        git, tree_id, out = checkout(tree, Path(scratch))
        top = os.path.realpath(out)
        tree_links = git.symlinks_in(tree_id)
        assert tree_links == {p: t.encode() for p, t in tree.items() if t is not None}
        for link in tree_links:
            mine = resolve(link, tree_links)
            event(f"{mine.problem or 'inside'}, {min(len(set(mine.via)), 3)} links")
            real = os.path.realpath(os.path.join(out, link))
            if gave_up(real, top):
                assert mine.problem == "loop", (link, real)
                continue
            if mine.problem == "loop":
                # More than 40 links on the way though none repeats a cycle: the kernel
                # refuses it too, or stops earlier at a missing name.
                with pytest.raises(OSError):
                    os.stat(os.path.join(out, link))
                continue
            rel = os.path.relpath(real, top)
            if rel == ".." or rel.startswith("../"):
                assert mine.problem == "outside", (link, real)
            else:
                assert (mine.problem, mine.path) == (None, "" if rel == "." else rel), link
            try:
                os.stat(os.path.join(out, link))
            except OSError:
                continue
            # Where the kernel resolves the link, it agrees too.
            assert mine.problem in (None, "outside")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(paths, st.lists(st.sampled_from([*NAMES, "..", ".git", ".GIT"]),
                                          min_size=1, max_size=4).map("/".join)),
                min_size=1, max_size=6))
def test_a_checkout_never_reaches_git_unseen(raw: list[tuple[str, str]]) -> None:
    """Whatever a link leads to in a checkout that lies in ``.git`` (any case), the
    resolver says ``.git`` (or that it leaves the repository first)."""
    tree = consistent([(path, target) for path, target in raw])
    with tempfile.TemporaryDirectory() as scratch:
        git, tree_id, out = checkout(tree, Path(scratch))
        top = os.path.realpath(out)
        tree_links = git.symlinks_in(tree_id)
        for link in tree_links:
            real = os.path.realpath(os.path.join(out, link))
            rel = os.path.relpath(real, top)
            if gave_up(real, top) or rel.startswith(".."):
                continue
            if any(is_dotgit(part) for part in rel.split("/")):
                assert resolve(link, tree_links).problem in (".git", "outside", "loop"), link
