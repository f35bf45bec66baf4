"""A unit's change: the raw diff (the artifact), its file list and stats, and its scope check.

The raw bytes from git are what gets applied; unidiff only reads them for statistics (it
loses binary payloads and rewrites headers when serialised, so nothing is written back
through it). Paths come from ``diff-tree -z`` so odd and non-UTF-8 names stay exact.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from .git import Git, Sha
from .scope import Scope
from .text import quote_path

SYMLINK_MODE = "120000"


@dataclass(frozen=True)
class UnitDiff:
    raw: bytes
    sha256: str
    files: tuple[str, ...]  # every path touched; both sides of a rename
    added: int
    removed: int
    violations: tuple[str, ...]  # why it breaks its scope, one line each

    @property
    def empty(self) -> bool:
        return not self.raw.strip()

    def stats(self) -> dict[str, int]:
        return {"files": len(self.files), "added": self.added, "removed": self.removed}


def _line_stats(raw: bytes) -> tuple[int, int]:
    try:
        patch = PatchSet(raw.decode("utf-8", "surrogateescape"))
    except UnidiffParseError:
        return 0, 0
    return sum(f.added for f in patch), sum(f.removed for f in patch)


def _enters_git_dir(path: str) -> bool:
    return any(part.lower() == ".git" for part in path.split("/"))


def _symlink_leaves_repo(link_path: str, target: bytes) -> bool:
    """Does a symlink at ``link_path`` (repo-relative) point outside the repository?"""
    text = target.decode("utf-8", "surrogateescape")
    if text.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), text))
    return resolved == ".." or resolved.startswith("../") or _enters_git_dir(resolved)


def collect(git: Git, start: Sha, final: Sha, scope: Scope) -> UnitDiff:
    raw, changes = git.diff_and_changes(start, final)
    files: list[str] = []
    for change in changes:
        for path in change.paths:
            if path not in files:
                files.append(path)
    violations: list[str] = []
    outside = scope.outside(files)
    if outside:
        violations.append("outside unit_scope: " + ", ".join(map(quote_path, outside)))
    in_git = [p for p in files if _enters_git_dir(p)]
    if in_git:
        violations.append("under .git/: " + ", ".join(map(quote_path, in_git)))
    escaping = [c.paths[-1] for c in changes
                if c.new_mode == SYMLINK_MODE
                and _symlink_leaves_repo(c.paths[-1], git.cat_blob(c.new_sha))]
    if escaping:
        violations.append("symlink pointing outside the repository: "
                          + ", ".join(map(quote_path, escaping)))
    added, removed = _line_stats(raw)
    return UnitDiff(raw, hashlib.sha256(raw).hexdigest(), tuple(files), added, removed,
                    tuple(violations))
