"""Unit scopes: which paths a scope covers, and when two scopes can touch the same path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worktree_mesh.scope import Scope, pattern_problem, split_scope


def covers(pattern: str | list[str], path: str) -> bool:
    return Scope.parse(pattern).matches(path)


# -- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["src/a.py", "src/deep/er/b.txt", "src/x"])
def test_trailing_slash_is_everything_below(path: str) -> None:
    assert covers("src/", path)


@pytest.mark.parametrize("path", ["srcx/a.py", "lib/src/a.py", "a.py", "src"])
def test_trailing_slash_covers_nothing_else(path: str) -> None:
    assert not covers("src/", path)


def test_star_in_a_directory_is_one_level_only() -> None:
    assert covers("docs/*.md", "docs/a.md")
    assert covers("docs/*.md", "docs/.md")
    assert not covers("docs/*.md", "docs/sub/a.md")
    assert not covers("docs/*.md", "docs/a.txt")
    assert not covers("docs/*.md", "other/docs/a.md")
    assert not covers("docs/*.md", "a.md")


def test_double_star_crosses_directories() -> None:
    assert covers("src/**/*.py", "src/a.py")
    assert covers("src/**/*.py", "src/a/b.py")
    assert covers("src/**/*.py", "src/a/b/c/d.py")
    assert not covers("src/**/*.py", "src/a/b.txt")
    assert not covers("src/**/*.py", "lib/a.py")
    assert not covers("src/**/*.py", "a.py")


@pytest.mark.parametrize("path", ["a", "a.py", "deep/er/file.txt", ".hidden/x", "docs/café.md"])
def test_everything(path: str) -> None:
    assert covers("**", path)
    assert Scope.parse(None).matches(path)
    assert Scope.parse([]).matches(path)
    assert Scope.parse("").matches(path)


def test_plain_file_path() -> None:
    assert covers("src/parser.py", "src/parser.py")
    assert not covers("src/parser.py", "src/parser.pyc")
    assert not covers("src/parser.py", "src/parser")
    assert not covers("src/parser.py", "src/other.py")


def test_plain_directory_path_covers_what_is_below() -> None:
    assert covers("src", "src/a.py")
    assert covers("src", "src/deep/b.py")
    assert covers("src/calc", "src/calc/ops.py")
    assert not covers("src", "srcx/a.py")
    assert not covers("src/a", "src/ab")
    assert not covers("src/a", "src/ab/c")


def test_patterns_are_anchored_at_the_repository_root() -> None:
    assert covers("parser.py", "parser.py")
    assert not covers("parser.py", "src/parser.py")
    assert not covers("calc", "src/calc/ops.py")
    assert not covers("*.py", "src/a.py")
    assert covers("*.py", "a.py")
    assert not covers("**.py", "src/a.py")
    assert covers("**.py", "a.py")
    # ``**/`` at the front is the way to say "at any depth".
    assert covers("**/parser.py", "src/parser.py")
    assert covers("**/parser.py", "parser.py")


def test_a_glob_that_matches_a_directory_covers_what_is_below() -> None:
    # As git reads .gitignore: a matched directory takes everything in it along.
    assert covers("src/*", "src/a.py")
    assert covers("src/*", "src/sub/b.py")
    assert covers("*", "a.py")
    assert covers("*", "a/b/c")
    assert covers("x*", "xa/b")
    assert not covers("x*", "a/x")


def test_leading_dot_slash_and_doubled_slashes() -> None:
    assert covers("./src/a.py", "src/a.py")
    assert covers("src//a.py", "src/a.py")
    assert Scope.parse("./src/a.py").patterns == ("src/a.py",)


def test_gitignore_specials_are_literal() -> None:
    # A scope is a list of things a unit may touch, never a negation or a comment.
    assert covers("!important.txt", "!important.txt")
    assert not covers(["a.txt", "!a.txt"], "b.txt")
    assert covers(["a.txt", "!a.txt"], "a.txt")
    assert covers("#notes.md", "#notes.md")


def test_several_patterns_are_a_union() -> None:
    scope = Scope.parse("lib/b.py; lib/c.py, docs/")
    assert scope.patterns == ("lib/b.py", "lib/c.py", "docs/")
    assert scope.matches("lib/b.py") and scope.matches("lib/c.py")
    assert scope.matches("docs/x/y.md")
    assert not scope.matches("lib/d.py")
    assert scope.outside(["lib/b.py", "lib/d.py", "docs/a", "x"]) == ["lib/d.py", "x"]


def test_is_everything() -> None:
    assert Scope.parse(None).is_everything
    assert Scope.parse("unknown").is_everything
    assert Scope.parse(["src/", "**"]).is_everything
    assert not Scope.parse("src/").is_everything


# -- split_scope and pattern_problem ---------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("src/a.py", ["src/a.py"]),
    ("src/a.py;src/b.py", ["src/a.py", "src/b.py"]),
    ("src/a.py, src/b.py ;docs/", ["src/a.py", "src/b.py", "docs/"]),
    (" ; ,, ", []),
    ("", []),
    ("unknown", ["**"]),
    ("src/;unknown", ["src/", "**"]),
    (["a", " b ", "", "unknown"], ["a", "b", "**"]),
    (("x;y",), ["x;y"]),  # a list is taken as given: only a string is split
    ("unknownfile", ["unknownfile"]),
])
def test_split_scope(value: str | list[str], expected: list[str]) -> None:
    assert split_scope(value) == expected


@pytest.mark.parametrize("pattern", [
    "src/", "src/**/*.py", "docs/*.md", "**", "a/./b", ".gitignore", "src/.github/x",
    "a..b", "..a/b", "x/..y",
])
def test_allowed_patterns(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(("pattern", "why"), [
    ("../x", "leaves the repository"),
    ("..", "leaves the repository"),
    ("a/../../b", "leaves the repository"),
    ("a/..", "leaves the repository"),
    ("./../x", "leaves the repository"),
    ("..\\x", "leaves the repository"),
    ("/etc", "absolute"),
    ("/etc/passwd", "absolute"),
    ("~/x", "leaves the repository"),
    ("C:\\Windows", "absolute"),
    (".git/", "enters .git/"),
    (".git", "enters .git/"),
    (".git/hooks/pre-commit", "enters .git/"),
    ("sub/.git/config", "enters .git/"),
    (".GIT/config", "enters .git/"),
])
def test_rejected_patterns(pattern: str, why: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None
    assert why in problem
    assert repr(pattern) in problem


# -- overlaps ----------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [
    ("src/", "src/a.py"),
    ("lib/b.py; lib/c.py", "lib/c.py"),
    ("**", "anything/at/all.txt"),
    ("unknown", "docs/a.md"),
    ("src", "src/deep/x.py"),
    ("src/**/*.py", "src/a/b/c.py"),
    ("src/**/*.py", "src/*.py"),
    # A plain path may be a directory: src/a/b.txt/c.py would lie in both.
    ("src/**/*.py", "src/a/b.txt"),
    ("docs/*.md", "docs/readme.md"),
    ("docs/*.md", "docs/"),
    ("*.py", "x*"),
    ("a/*/c", "a/b/*"),
    ("**/test_*.py", "tests/test_a.py"),
])
def test_overlapping_scopes(a: str, b: str) -> None:
    assert Scope.parse(a).overlaps(Scope.parse(b))
    assert Scope.parse(b).overlaps(Scope.parse(a))


@pytest.mark.parametrize(("a", "b"), [
    ("docs/*.md", "docs/x.txt"),
    ("src/a", "src/ab"),
    ("src/", "lib/"),
    ("lib/b.py; lib/c.py", "lib/d.py"),
    ("parser.py", "src/parser.py"),
    ("*.py", "*.md"),
    ("x*", "y*"),
    ("src/**/*.py", "lib/a.py"),
    ("docs/*.md", "docs/sub/a.md"),
])
def test_disjoint_scopes(a: str, b: str) -> None:
    assert not Scope.parse(a).overlaps(Scope.parse(b))
    assert not Scope.parse(b).overlaps(Scope.parse(a))


# -- properties --------------------------------------------------------------------------

SEGMENTS = ["a", "b", "*.py", "*", "**", "x*", "**.py"]
PATH_SEGMENTS = ["a", "b", "x", "xa", "a.py", "x.py", "b.md"]

patterns = st.builds(
    lambda parts, slash: "/".join(parts) + ("/" if slash else ""),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
    st.booleans(),
)
scopes = st.lists(patterns, min_size=1, max_size=3).map(Scope.parse)
paths = st.lists(st.sampled_from(PATH_SEGMENTS), min_size=1, max_size=5).map("/".join)
PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(scopes, scopes)
def test_overlaps_is_symmetric(a: Scope, b: Scope) -> None:
    assert a.overlaps(b) == b.overlaps(a)


@PROPERTY
@given(scopes)
def test_a_scope_overlaps_itself(a: Scope) -> None:
    assert a.overlaps(a)


@PROPERTY
@given(scopes, scopes, st.lists(paths, min_size=1, max_size=8))
def test_overlaps_is_sound(a: Scope, b: Scope, candidates: list[str]) -> None:
    """Never False while a path lies in both: that would let two units run at once on
    the same file."""
    shared = [p for p in candidates if a.matches(p) and b.matches(p)]
    if shared:
        assert a.overlaps(b), f"{a.patterns} and {b.patterns} both cover {shared[0]}"


@PROPERTY
@given(patterns, paths)
def test_a_covered_path_overlaps_the_scope(pattern: str, path: str) -> None:
    scope = Scope.parse(pattern)
    if scope.matches(path):
        assert scope.overlaps(Scope.parse(path))
