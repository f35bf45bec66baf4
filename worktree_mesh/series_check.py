"""A patch_first run checks its own series (SPEC 10): ``git am`` of it onto ``base`` must
give the integrated commits' trees, one patch after another.

The check runs in a throwaway repository of its own under the run's tmp directory: it
borrows the user's objects (alternates) and has its own HEAD, index and files, so none
of the user's refs, worktrees, index or objects is touched, and deleting the directory
deletes everything it made. Only the files the series touches are checked out, since
``git apply --index`` inside ``git am`` reads no other (a full checkout of a large
repository costs seconds).

``git am`` runs as a reviewer's would with git's defaults and ``--keep-cr`` (the command
the run prints): mailsplit otherwise strips the CR of every CRLF line, and a file with
CRLF line ends no longer applies, or is created with LF ones. Settings that would change
what it applies (apply.*, am.*, core.autocrlf, ...) are pinned, and no hook runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .git import Git, Sha, decode_path
from .proc import CommandError, Completed

# How a reviewer applies the series (printed by the run and in its report): the check
# below is this command, on a git with its default settings.
REVIEWER_AM = "git am --keep-cr"

# What a default git does, whatever the user's configuration says.
_AM_CONFIG = (
    "-c", "apply.whitespace=nowarn",
    "-c", "apply.ignoreWhitespace=no",
    "-c", "core.autocrlf=false",
    "-c", "core.safecrlf=false",
    "-c", "core.attributesFile=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.sparseCheckout=false",
    "-c", "rerere.enabled=false",
    "-c", "merge.default=text",
    "-c", "i18n.commitEncoding=UTF-8",
)
_AM_OPTIONS = ("--quiet", "--keep-cr", "--no-3way", "--no-scissors", "--patch-format=mbox",
               "--no-gpg-sign", "--no-rerere-autoupdate", "--whitespace=nowarn")
_COMMITTER = {"GIT_COMMITTER_NAME": "wtmesh", "GIT_COMMITTER_EMAIL": "wtmesh@localhost"}
_SHOWN_PATHS = 5  # how many differing files a note names


@dataclass(frozen=True)
class SeriesCheck:
    ok: bool
    patches: int
    notes: str  # what did not reproduce, when not ok


def verify(git: Git, base: Sha, head: Sha, patch_dir: Path, scratch: Path) -> SeriesCheck:
    """Apply the series in ``patch_dir`` onto ``base`` with ``git am`` in ``scratch`` (a
    directory made and removed here) and compare each commit it makes with the
    integrated commit of ``base..head`` at the same place."""
    shutil.rmtree(scratch, ignore_errors=True)  # a check cut off by a crash
    try:
        return _verify(git, base, head, patch_dir, scratch)
    except (CommandError, OSError) as exc:  # not shown to reproduce: not delivered
        return SeriesCheck(False, len(_series(patch_dir)),
                           f"the series could not be checked: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _verify(git: Git, base: Sha, head: Sha, patch_dir: Path, scratch: Path) -> SeriesCheck:
    integrated = git.run("rev-list", "--reverse", f"{base}..{head}", "--").text.split()
    names = _series(patch_dir)
    if len(names) != len(integrated):
        return SeriesCheck(False, len(names), f"the series lists {len(names)} patches for "
                                              f"{len(integrated)} integrated commits")
    if not names:
        return SeriesCheck(True, 0, "")
    outside = [n for n in names if "/" in n or n in (".", "..")]
    if outside:
        return SeriesCheck(False, len(names), f"the series names {outside[0]!r}, not a file "
                                              "of the patch directory")
    missing = [n for n in names if not (patch_dir / n).is_file()]
    if missing:
        return SeriesCheck(False, len(names), f"the series lists {missing[0]}, which is not "
                                              "in the patch directory")
    repo = _ScratchRepository.make(git, scratch, base, _touched(git, base, integrated))
    applied = repo.am(*(str(patch_dir / n) for n in names))
    return _compare(repo, base, names, integrated, applied)


def _series(patch_dir: Path) -> list[str]:
    try:
        return (patch_dir / "series").read_text("utf-8", "surrogateescape").splitlines()
    except OSError:
        return []


def _touched(git: Git, base: Sha, commits: list[str]) -> set[str]:
    """Every path a commit of the series changes (both sides of a rename)."""
    paths: set[str] = set()
    parent = base
    for commit in commits:
        paths.update(p for change in git.changes(parent, commit) for p in change.paths)
        parent = Sha(commit)
    return paths


def _compare(repo: _ScratchRepository, base: Sha, names: list[str], integrated: list[str],
             applied: Completed) -> SeriesCheck:
    made = repo.git("rev-list", "--reverse", f"{base}..HEAD", "--").text.split()
    if applied.returncode != 0 or len(made) != len(names):
        stopped = names[min(len(made), len(names) - 1)]
        why = [line for line in applied.stderr.decode("utf-8", "replace").splitlines()
               if line.strip()]
        return SeriesCheck(False, len(names), f"git am stops at {stopped}: "
                                              f"{why[0] if why else 'it made no commit'}")
    trees = repo.git("rev-parse", *(f"{c}^{{tree}}" for c in [*made, *integrated])).text.split()
    pairs = zip(names, integrated, trees[:len(made)], trees[len(made):], strict=True)
    for name, commit, got, want in pairs:
        if got != want:
            differ = [decode_path(p) for p in repo.git(
                "diff-tree", "-r", "-z", "--name-only", "--no-renames", want, got
            ).stdout.split(b"\0") if p]
            shown = ", ".join(differ[:_SHOWN_PATHS]) + (", ..." if differ[_SHOWN_PATHS:] else "")
            return SeriesCheck(False, len(names), f"git am of {name} does not give the tree of "
                                                  f"the integrated commit {commit[:12]}: "
                                                  f"{shown or 'the trees differ'}")
    return SeriesCheck(True, len(names), "")


class _ScratchRepository:
    """A bare repository borrowing the user's objects, used with a work tree beside it."""

    def __init__(self, git: Git, root: Path) -> None:
        self._git = git
        self.git_dir = root / "repo.git"
        self.work_tree = root / "files"

    @classmethod
    def make(cls, git: Git, root: Path, base: Sha, touched: set[str]) -> _ScratchRepository:
        repo = cls(git, root)
        repo.work_tree.mkdir(parents=True)
        object_format = git.run("rev-parse", "--show-object-format").text.strip()
        # cwd given and no --git-dir: git init must never see the user's repository.
        # --template=: no hooks or config copied from a template directory.
        git.run("init", "-q", "--bare", "--template=", f"--object-format={object_format}",
                str(repo.git_dir), cwd=root)
        alternates = repo.git_dir / "objects" / "info" / "alternates"
        alternates.parent.mkdir(parents=True, exist_ok=True)
        alternates.write_text(f"{(git.common_dir / 'objects').resolve()}\n", "utf-8")
        repo.git("update-ref", "--no-deref", "HEAD", base)
        repo.git("read-tree", base)
        # Only what the series touches and base has: git apply --index reads no more.
        present = {decode_path(p) for p in repo.git("ls-files", "-z").stdout.split(b"\0") if p}
        wanted = sorted(touched & present)
        if wanted:
            listing = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in wanted)
            repo.git("checkout-index", "-q", "-f", "-u", "-z", "--stdin", input=listing)
        return repo

    def git(self, *args: str, input: bytes | None = None) -> Completed:
        return self._git.run(*_AM_CONFIG, f"--git-dir={self.git_dir}",
                             f"--work-tree={self.work_tree}", *args, cwd=self.work_tree,
                             env=_COMMITTER, input=input)

    def am(self, *patches: str) -> Completed:
        """``git am`` of ``patches``, as a reviewer's stock git runs it; its result,
        whatever it is."""
        return self._git.run(*_AM_CONFIG, f"--git-dir={self.git_dir}",
                             f"--work-tree={self.work_tree}", "am", *_AM_OPTIONS, "--",
                             *patches, cwd=self.work_tree, env=_COMMITTER, check=False)
