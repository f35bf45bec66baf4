"""Unit scopes: which paths a unit may touch, and whether two scopes can touch the same path.

A scope is a list of repo-relative paths and globs read the way ``.gitignore`` reads them,
but anchored at the repository root: ``src/`` is everything below ``src``, ``docs/*.md``
the Markdown files directly in ``docs``, ``src/**/*.py`` every Python file below ``src``,
``**`` the whole repository. A plain path also covers everything below it when it is a
directory, as in git.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import Any

import pathspec

EVERYTHING = "**"
_GLOB_CHARS = re.compile(r"[*?\[]")


def split_scope(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """A string is split on ``;`` and ``,`` as in mesh CSVs; ``unknown`` reads as ``**``."""
    items = re.split(r"[;,]", value) if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        out.append(EVERYTHING if item == "unknown" else item)
    return out


def pattern_problem(pattern: str) -> str | None:
    """Why a scope pattern is not allowed (it leaves the repository or enters ``.git/``)."""
    if pattern.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", pattern):
        return f"scope {pattern!r} leaves the repository (absolute path)"
    parts = pattern.replace("\\", "/").split("/")
    if ".." in parts:
        return f"scope {pattern!r} leaves the repository ('..')"
    if any(part.lower() == ".git" for part in parts):
        return f"scope {pattern!r} enters .git/"
    return None


def _normalise(pattern: str) -> str:
    while pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = re.sub(r"/{2,}", "/", pattern)
    return pattern or EVERYTHING


def _segments(pattern: str) -> tuple[str, ...]:
    """Pattern as path segments; every pattern also covers what lies below what it
    matches (a matched directory), so each ends in ``**``."""
    parts = [p for p in pattern.strip("/").split("/") if p and p != "."]
    if not parts or parts[-1] != EVERYTHING:
        parts.append(EVERYTHING)
    return tuple(parts)


def _has_glob(segment: str) -> bool:
    return bool(_GLOB_CHARS.search(segment))


def _literal_ends(segment: str) -> tuple[str, str]:
    """The fixed text before the first and after the last glob character."""
    first = _GLOB_CHARS.search(segment)
    assert first is not None
    last = max(segment.rfind(c) for c in "*?]")
    return segment[: first.start()], segment[last + 1:]


def _segments_overlap(a: str, b: str) -> bool:
    """Can one path segment match both? Exact for literals; conservative for two globs
    (they overlap unless their fixed prefixes or suffixes contradict)."""
    glob_a, glob_b = _has_glob(a), _has_glob(b)
    if not glob_a and not glob_b:
        return a == b
    if not glob_a:
        return fnmatch.fnmatchcase(a, b)
    if not glob_b:
        return fnmatch.fnmatchcase(b, a)
    (pa, sa), (pb, sb) = _literal_ends(a), _literal_ends(b)
    prefixes_agree = pa.startswith(pb) or pb.startswith(pa)
    suffixes_agree = sa.endswith(sb) or sb.endswith(sa)
    return prefixes_agree and suffixes_agree


def _patterns_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    @functools.cache
    def walk(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == EVERYTHING:
            # ``**`` matches no segment, or eats the segment b[j] matches.
            return walk(i + 1, j) or (j < len(b) and walk(i, j + 1))
        if j < len(b) and b[j] == EVERYTHING:
            return walk(i, j + 1) or (i < len(a) and walk(i + 1, j))
        if i == len(a) or j == len(b):
            return False
        return _segments_overlap(a[i], b[j]) and walk(i + 1, j + 1)

    return walk(0, 0)


@dataclass(frozen=True)
class Scope:
    patterns: tuple[str, ...]
    _spec: Any = field(init=False, repr=False, compare=False)  # pathspec.PathSpec

    def __post_init__(self) -> None:
        lines = []
        for pattern in self.patterns:
            if pattern.startswith(("!", "#")):
                pattern = "\\" + pattern  # literal, not gitignore negation or comment
            # Only a leading ``**/`` (or ``**`` alone) reaches below the root; ``**.py``
            # is ``*.py`` at the root, as ``_segments`` (and so ``overlaps``) reads it.
            unanchored = pattern == EVERYTHING or pattern.startswith(EVERYTHING + "/")
            lines.append(pattern if unanchored else "/" + pattern)
        object.__setattr__(self, "_spec", pathspec.PathSpec.from_lines("gitignore", lines))

    @classmethod
    def parse(cls, value: str | list[str] | tuple[str, ...] | None) -> Scope:
        items = split_scope(value) if value is not None else []
        return cls(tuple(_normalise(p) for p in items) or (EVERYTHING,))

    @property
    def is_everything(self) -> bool:
        return EVERYTHING in self.patterns

    def matches(self, path: str) -> bool:
        """The path, or a directory above it, matches a pattern. pathspec's gitignore
        flavour does not carry a match of ``src/*`` on the directory ``src/sub`` down to
        ``src/sub/x.py``, though git (and ``overlaps``) does."""
        if self.is_everything:
            return True
        parts = path.split("/")
        return any(self._spec.match_file("/".join(parts[:i]) + "/")
                   for i in range(1, len(parts))) or self._spec.match_file(path)

    def outside(self, paths: list[str]) -> list[str]:
        return [p for p in paths if not self.matches(p)]

    def overlaps(self, other: Scope) -> bool:
        """True when some path could lie in both scopes (never False when one does)."""
        return any(
            _patterns_overlap(_segments(a), _segments(b))
            for a in self.patterns
            for b in other.patterns
        )
