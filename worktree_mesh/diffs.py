"""A unit's change: the raw diff (the artifact), its file list and stats, and its scope check.

The raw bytes from git are what gets applied, streamed to the unit's file and never held
whole in memory; only the hunks' headers are parsed (with unidiff's grammar), for the
statistics. Paths come from ``diff-tree -z`` so odd and non-UTF-8 names stay exact.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from unidiff.constants import RE_HUNK_HEADER

from .git import Change, Git, Sha
from .scope import Scope
from .state import atomic_file
from .text import quote_path

SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"


@dataclass(frozen=True)
class UnitDiff:
    """What wtmesh knows of a unit's diff, which lies on disk (``collect``'s ``dest``)."""
    sha256: str
    size: int  # bytes
    files: tuple[str, ...]  # every path touched; both sides of a rename
    added: int
    removed: int
    violations: tuple[str, ...]  # why it breaks its scope, one line each
    touches_links: bool = False  # adds, changes or removes a symlink (see link_violations)

    @property
    def empty(self) -> bool:
        return self.size == 0

    def stats(self) -> dict[str, int]:
        return {"files": len(self.files), "added": self.added, "removed": self.removed}


class LineCount:
    """Lines added and removed in a unified diff, fed one line at a time: the hunks'
    headers read with unidiff's grammar, their bodies counted, nothing else kept, so that
    a diff costs no memory by its size (unidiff's ``PatchSet`` keeps an object per line).
    Outside a hunk (headers, binary patches) nothing is counted."""

    def __init__(self) -> None:
        self.added = self.removed = 0
        self._old_left = self._new_left = 0  # lines of the current hunk still to come

    def feed(self, line: bytes) -> None:
        if self._old_left > 0 or self._new_left > 0:
            kind = line[:1]
            if kind == b"+":
                self.added += 1
                self._new_left -= 1
                return
            if kind == b"-":
                self.removed += 1
                self._old_left -= 1
                return
            if kind == b" " or line in (b"\n", b"\r\n"):  # context (an empty one, bare)
                self._old_left -= 1
                self._new_left -= 1
                return
            if kind == b"\\":  # "\ No newline at end of file"
                return
            self._old_left = self._new_left = 0  # not a hunk's line: the hunk ended short
        if line.startswith(b"@@ "):
            header = RE_HUNK_HEADER.match(line.decode("utf-8", "surrogateescape"))
            if header is not None:
                _, old_length, _, new_length, _ = header.groups()
                self._old_left = int(old_length) if old_length is not None else 1
                self._new_left = int(new_length) if new_length is not None else 1


# Code points HFS+ ignores in names, so ".g\u200cit" is ".git" on a Mac (git's
# is_hfs_dotgit refuses such paths for the same reason).
_HFS_IGNORABLE = frozenset(map(chr, [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F),
                                     *range(0x206A, 0x2070), 0xFEFF]))


def _as_read(name: str) -> str:
    """``name`` as a case-insensitive HFS+ or NTFS file system reads it: ignorable code
    points dropped, any case, an alternate data stream (``x::$DATA``) and trailing dots
    and spaces cut off."""
    folded = "".join(ch for ch in name if ch not in _HFS_IGNORABLE).lower()
    return folded.split(":", 1)[0].rstrip(". ")


def is_dotgit(name: str) -> bool:
    """Is ``name`` one a file system may take for ``.git`` (also as its NTFS short name
    ``git~1``)? These are the names git itself refuses in a path (core.protectNTFS,
    protectHFS)."""
    return _as_read(name) in (".git", "git~1")


def _names_in(path: str) -> list[str]:
    """The names of ``path`` as git's check of a path for ``.git`` splits it: at ``/`` and
    at ``\\`` too (verify_path, with core.protectNTFS on everywhere: NTFS reads both)."""
    return re.split(r"[/\\]", path)


def _enters_git_dir(path: str) -> bool:
    return any(is_dotgit(name) for name in _names_in(path))


# -- where a symlink points, in the tree it lands in --------------------------------------

# Linux's MAXSYMLINKS: one path lookup follows at most this many links, then fails ELOOP.
MAX_LINK_FOLLOWS = 40


@dataclass(frozen=True)
class Resolution:
    """Where a path leads in a checkout of a tree: ``path`` repo-relative ("" the top),
    or ``problem`` ("outside", ".git", "loop") and no path; ``via``, the links followed."""

    path: str | None
    problem: str | None
    via: tuple[str, ...]


def resolve(path: str, links: Mapping[str, bytes]) -> Resolution:
    """``path`` resolved as the kernel would in a checkout of a tree whose symlinks are
    ``links`` (repo-relative path -> target): every link met on the way is followed, in
    the path's own directories and in each target, at most MAX_LINK_FOLLOWS times. A name
    that is not a link is taken as a directory whether or not the tree has it, as
    ``os.path.realpath`` does: a missing directory may appear (another unit, the user)
    and must not turn a harmless-looking link into an escape later. Going above the top,
    or an absolute target, leaves the repository; passing through a ``.git`` enters it."""
    pending = path.split("/")
    pending.reverse()  # a stack: the next name last
    resolved: list[str] = []
    via: list[str] = []
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not resolved:
                return Resolution(None, "outside", tuple(via))
            resolved.pop()
            continue
        here = "/".join([*resolved, name])
        target = links.get(here)
        if target is None:
            if is_dotgit(name):
                return Resolution(None, ".git", tuple(via))
            resolved.append(name)
            continue
        via.append(here)
        if len(via) > MAX_LINK_FOLLOWS:
            return Resolution(None, "loop", tuple(via))
        # symlink(2) takes a C string: a checkout cuts a target at its first NUL.
        text = target.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if text.startswith("/"):
            return Resolution(None, "outside", tuple(via))
        names = text.split("/")
        names.reverse()
        pending.extend(names)
    return Resolution("/".join(resolved), None, tuple(via))


_LINK_PROBLEMS = {
    "outside": "symlink pointing outside the repository",
    ".git": "symlink pointing into .git",
    "loop": f"symlink loop (more than {MAX_LINK_FOLLOWS} links to follow)",
}


def _bad_links(links: Mapping[str, bytes]) -> dict[str, Resolution]:
    out = {}
    for link in links:
        resolution = resolve(link, links)
        if resolution.problem is not None:
            out[link] = resolution
    return out


def _touches_links(changes: Sequence[Change]) -> bool:
    return any(SYMLINK_MODE in (c.old_mode, c.new_mode) for c in changes)


def link_violations(git: Git, old: str, new: str, changes: Sequence[Change]) -> list[str]:
    """Why the symlinks of tree ``new`` (``old`` plus ``changes``) break SPEC 10, one line
    per kind: each link that leaves the repository, enters ``.git`` or loops there, resolved
    through every link of ``new``, and that the change made so (a link it changed, or
    one that was fine in ``old``: ``src/esc -> up/../x`` escapes once ``src/up -> ..``
    is added). Where the resolution only depends on which symlinks a tree has (see
    ``resolve``), a change that touches no symlink makes no new escape."""
    if not _touches_links(changes):
        return []
    new_links = git.symlinks_in(new)
    bad = _bad_links(new_links)
    if not bad:
        return []
    already_bad = _bad_links(git.symlinks_in(old))
    changed = {path for change in changes for path in change.paths}
    lines = []
    for problem, label in _LINK_PROBLEMS.items():
        named = [_name_link(link, resolution) for link, resolution in bad.items()
                 if resolution.problem == problem
                 and (link in changed or link not in already_bad)]
        if named:
            lines.append(f"{label}: " + ", ".join(named))
    return lines


def _name_link(link: str, resolution: Resolution, shown: int = 3) -> str:
    """The link, and the first few other links its resolution went through."""
    others = [quote_path(p) for p in dict.fromkeys(resolution.via) if p != link]
    if not others:
        return quote_path(link)
    more = ", ..." if len(others) > shown else ""
    return f"{quote_path(link)} (via {', '.join(others[:shown])}{more})"


def _ntfs_reads_as(rest: str, name: str, short_prefix: str) -> bool:
    """Does NTFS read the start of ``rest`` (a path from a separator on) as ``.<name>``?
    git's is_ntfs_dot_generic, step by step: ``.<name>`` in any case; or a short name,
    ``<name[:6]>~1`` to ``~4``, or the fallback of exactly eight characters (a prefix of
    ``short_prefix``, ``~``, digits not starting with 0); then nothing but dots and spaces
    up to the end or an alternate data stream (``:``)."""
    low = "".join(ch.lower() if ch.isascii() else ch for ch in rest)  # git's tolower

    def only_dots_and_spaces(at: int) -> bool:
        return not low[at:].split(":", 1)[0].strip(". ")

    if low.startswith("." + name):
        return only_dots_and_spaces(1 + len(name))
    if low[:6] == name[:6] and low[6:7] == "~" and low[7:8] in ("1", "2", "3", "4"):
        return only_dots_and_spaces(8)
    head = low[:8]
    tilde = head.find("~")
    return (len(head) == 8 and 0 <= tilde <= 6 and head[:tilde] == short_prefix[:tilde]
            and head[tilde + 1] in "123456789"
            and all(ch in "0123456789" for ch in head[tilde + 2:])
            and only_dots_and_spaces(8))


def _is_gitmodules(path: str) -> bool:
    """Would git refuse a symlink at ``path`` as a ``.gitmodules``? Its verify_path asks
    is_ntfs_dotgitmodules of the path from the start and after each ``/`` or ``\\``;
    the code points HFS+ ignores are dropped first (is_hfs_dotgitmodules, on where
    core.protectHFS is, as on a Mac)."""
    folded = "".join(ch for ch in path if ch not in _HFS_IGNORABLE)
    starts = [0, *(at + 1 for at, ch in enumerate(folded) if ch in "/\\")]
    return any(_ntfs_reads_as(folded[at:], "gitmodules", "gi7eba") for at in starts)


def links_git_refuses(worktree: Path, paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` that are symlinks a file system may take for ``.gitmodules``:
    ``git add`` refuses them ("invalid path"), as git reads that file when it writes
    submodules into a checkout."""
    return [path for path in dict.fromkeys(paths)
            if _is_gitmodules(path.rstrip("/")) and os.path.islink(worktree / path)]


# -- gitlinks and embedded repositories ------------------------------------------------


def _lost_gitlinks(git: Git, changes: Sequence[Change]) -> list[str]:
    """Gitlinks the change adds or moves to a commit this repository lacks: a checkout
    gets an empty directory, and what the lane committed there is lost with its
    worktree (``git add -A`` records a lane's ``git init`` + commit as such a link)."""
    gitlinks = {c.paths[-1]: c.new_sha for c in changes if c.new_mode == GITLINK_MODE}
    missing = set(git.not_commits(sorted(set(gitlinks.values()))))
    return [path for path, sha in gitlinks.items() if sha in missing]


def embedded_repositories(worktree: Path, paths: Iterable[str]) -> list[str]:
    """Repositories inside ``worktree`` (not its top) that ``paths`` (relative to it; a
    directory may end in ``/``) lie in or are: a directory holding a ``.git`` of any
    kind (directory, file, link), named by that directory; or a name a file system may
    take for ``.git`` (``.GIT``, ``git~1``, ``x\\.git``: NTFS splits at ``\\`` too),
    named itself. ``git add -A`` records the first as a gitlink (its files never land)
    or, before its first commit, fails ("does not have a commit checked out"); it
    refuses the second ("invalid path").
    Only real directories are entered, as git's own walk does: never a symlink."""
    found: dict[str, None] = {}
    plain: set[str] = set()  # real directories without a .git
    for path in paths:
        names = path.rstrip("/").split("/")
        for depth in range(1, len(names) + 1):
            here = "/".join(names[:depth])
            if here in plain:
                continue
            if here in found:
                break
            if _enters_git_dir(names[depth - 1]):
                found[here] = None
                break
            try:
                is_dir = stat.S_ISDIR(os.lstat(worktree / here).st_mode)
            except OSError:
                break
            if not is_dir:
                break
            if os.path.lexists(worktree / here / ".git"):
                found[here] = None
                break
            plain.add(here)
    return list(found)


def collect(git: Git, start: Sha, final: Sha, scope: Scope, dest: Path) -> UnitDiff:
    """The change from ``start`` to ``final``, written to ``dest`` (the unit's diff: the
    raw bytes from git, which is what gets applied), checked against ``scope``."""
    changes, sha256, size, count = _write_diff(git, start, final, dest)
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
    violations.extend(link_violations(git, start, final, changes))
    lost = _lost_gitlinks(git, changes)
    if lost:
        violations.append("gitlink to a commit that is not in the repository: "
                          + ", ".join(map(quote_path, lost)))
    return UnitDiff(sha256, size, tuple(files), count.added, count.removed,
                    tuple(violations), _touches_links(changes))


def _write_diff(git: Git, start: Sha, final: Sha,
                dest: Path) -> tuple[list[Change], str, int, LineCount]:
    """git's diff to ``dest`` in one pass, hashed and counted on the way, never whole in
    memory: a unit's diff costs memory by the length of its longest line, not its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_native_id()}.raw")
    try:
        changes, offset = git.diff_to(start, final, raw)
        digest, size, count = hashlib.sha256(), 0, LineCount()
        with open(raw, "rb") as source, atomic_file(dest) as out:
            source.seek(offset)
            for line in source:
                out.write(line)
                digest.update(line)
                size += len(line)
                count.feed(line)
    finally:
        raw.unlink(missing_ok=True)
    return changes, digest.hexdigest(), size, count
