"""Typed git operations: the only module that speaks git.

Every call runs hook-free (``core.hooksPath=/dev/null``: the proof is the gate, and a hook
a lane planted must never run inside an integration), without fsmonitor, and with
``core.fsync`` on objects and refs, so a landing that was reported survives a power cut.
Paths are bytes-safe: listings use ``-z`` and are decoded with ``surrogateescape``.

Three kinds of call, so that nothing a lane can write is ever read by wtmesh's git:

- on the repository (refs, the user's own worktrees): ``--git-dir`` is the user's
  common dir, with the pins of ``_CONFIG``;
- on objects alone (diffs, applies into a temporary index, commits, patches): a private
  bare git dir of wtmesh's, ``<state>/shadow``, whose configuration wtmesh writes, with
  system and global configuration off, reading and writing the user's object store
  (``GIT_OBJECT_DIRECTORY``). No user or lane configuration (``apply.*``, ``diff.*``,
  ``format.*``, ``core.autocrlf``, ``commit.gpgSign``, filter and merge drivers) can
  change what lands or run a program there;
- in one of wtmesh's worktrees: ``--git-dir`` is that worktree's private admin dir under
  ``<state>/admin/`` (HEAD, index, configuration: wtmesh's alone), ``--work-tree`` the
  worktree, the same hermetic configuration. The worktree's own ``.git`` (a directory
  wtmesh seeds for the lanes: HEAD, a copy of the index, the user's objects borrowed
  through alternates) belongs to the lanes; whatever they do to it (rewrite it, point it
  at the user's repository, set ``core.worktree`` or skip-worktree bits, plant hooks)
  reaches neither the user's repository nor wtmesh's calls, and it is seeded afresh for
  every unit.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NewType

from . import faults, proc

Sha = NewType("Sha", str)
ZERO_SHA = Sha("0" * 40)

# Settings for every internal call. fsync: git does not fsync loose objects or refs by
# default. gc/maintenance: an auto-gc must not start in the middle of an integration.
# checkout.workers=0: a checkout that writes many files (filling a worktree: the kernel
# creating every file) uses a worker per CPU; git stays sequential below 100 files.
_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "commit.gpgSign=false",
    "-c", "core.fsync=objects,reference",
    "-c", "checkout.workers=0",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.quotePath=true",
    "-c", "advice.detachedHead=false",
)

# Variables that would point our calls (and lanes' git) at another repository or index.
# Discovery honours them (the user's GIT_DIR decides which repo this is); after that every
# call names its repository or worktree explicitly.
_REDIRECTING_ENV = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
    "GIT_EXTERNAL_DIFF", "GIT_DIFF_OPTS", "GIT_QUARANTINE_PATH",
)

# Neutral diff options: plumbing (diff-tree) ignores diff.* UI settings; these flags cover
# the rest (external diff, textconv, prefixes, context, rename detection, submodules).
_RECORDS_READ = 1 << 16  # bytes read at a time while looking for the end of diff-tree's records

_DIFF_OPTIONS = (
    "-r", "-p", "--binary", "--full-index", "--no-ext-diff", "--no-textconv",
    "--src-prefix=a/", "--dst-prefix=b/", "-U3", "-M", "--no-color", "--submodule=short",
)

# System and global configuration off, for the calls on objects and in wtmesh's worktrees:
# their configuration is the file wtmesh wrote, and nothing else.
_HERMETIC_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}

# An index.lock another git command holds (an editor's or IDE's `git status`) is waited
# out this long before moving a worktree counts as refused: such a command holds it for
# milliseconds to a second, while one a killed git left behind stays until removed.
INDEX_LOCK_WAIT_S = 5.0
_INDEX_LOCK_POLL_S = 0.02

# What lands and what is delivered must not depend on anyone's configuration (SPEC 10):
# flags pin what apply, commit-tree and format-patch offer flags for; these pin the rest,
# on those calls only (each line names what the setting would otherwise do).
DELIVERY_CONFIG = (
    "-c", "diff.suppressBlankEmpty=false",  # empty context lines lose their leading space
    "-c", "core.bigFileThreshold=512m",  # files above it become binary patches
    "-c", "i18n.commitEncoding=UTF-8",  # commit-tree labels the message with it unconverted
    "-c", "i18n.logOutputEncoding=UTF-8",  # format-patch re-encodes messages into it
    "-c", "format.mboxrd=false",  # format-patch --stdout would escape "From " lines
    "-c", "merge.default=text",  # apply --3way: the merge driver for files without one
)

# git apply, whatever apply.whitespace (fix rewrites the change, error refuses it) and
# apply.ignoreWhitespace (applies context that does not match) say.
_APPLY_OPTIONS = ("--binary", "--whitespace=nowarn", "--no-ignore-whitespace")

# git format-patch with every setting that shapes its output named: context and prefixes
# (diff.context=0 makes patches git am refuses), hunk order and algorithm, what is left
# out (diff.relative, diff.ignoreSubmodules), and what format.* adds (a cover letter, a
# base, headers, a signature, sign-off, notes, attachments) or changes (subject prefix).
_FORMAT_PATCH_OPTIONS = (
    "--stdout", "--pretty=email", "--binary", "--full-index", "--no-ext-diff", "--no-textconv",
    "--no-color", "--src-prefix=a/", "--dst-prefix=b/", "-U3", "--inter-hunk-context=0",
    "-O/dev/null", "--diff-algorithm=myers", "--indent-heuristic", "-M", "--no-relative",
    "--ignore-submodules=none", "--submodule=short", "--no-numbered", "--no-thread",
    "--no-cover-letter", "--no-base", "--no-signature", "--no-signoff", "--no-notes",
    "--no-attach", "--no-add-header", "--no-to", "--no-cc", "--no-from",
    "--no-force-in-body-from", "--subject-prefix=PATCH", "--encode-email-headers",
)

WTMESH_NAME = "wtmesh"
WTMESH_EMAIL = "wtmesh@localhost"


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key in _REDIRECTING_ENV:
        env.pop(key, None)
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _is_full_id(name: str) -> bool:
    return len(name) in (40, 64) and all(c in "0123456789abcdef" for c in name)


def _parse_raw(fields: list[bytes]) -> tuple[list[Change], int]:
    """Records of ``diff-tree -z --raw`` (":oldmode newmode oldsha newsha status", then
    one path, two for a rename or copy) from the start of ``fields``; also how many
    bytes they took, separators included."""
    out: list[Change] = []
    i = used = 0
    while i < len(fields) and fields[i].startswith(b":"):
        old_mode, new_mode, _old_sha, new_sha, status = fields[i][1:].decode().split(" ")
        count = 2 if status[0] in "RC" else 1
        paths = fields[i + 1:i + 1 + count]
        out.append(Change(status[0], tuple(decode_path(p) for p in paths), new_mode,
                          Sha(new_sha), old_mode))
        used += sum(len(f) + 1 for f in fields[i:i + 1 + count])
        i += 1 + count
    return out, used


def decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class RepoInfo:
    toplevel: Path | None  # None for a bare repository
    git_dir: Path
    common_dir: Path
    head_branch: str | None  # e.g. "main"; None when detached


class NotARepository(Exception):
    pass


def discover(cwd: Path) -> RepoInfo:
    """Find the repository the way git does (GIT_DIR, GIT_CEILING_DIRECTORIES honoured)."""
    if not cwd.is_dir():
        raise NotARepository(f"{cwd} is not a directory")
    res = proc.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir",
         "--is-bare-repository"],
        cwd=cwd, check=False,
    )
    if res.returncode != 0:
        raise NotARepository(f"{cwd} is not inside a git repository")
    git_dir, common_dir, bare = res.text.splitlines()[:3]
    toplevel: Path | None = None
    if bare != "true":
        top = proc.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, check=False)
        if top.returncode == 0 and top.text.strip():
            toplevel = Path(top.text.strip())
    head = proc.run(["git", "symbolic-ref", "-q", "--short", "HEAD"], cwd=cwd, check=False)
    branch = head.text.strip() if head.returncode == 0 else None
    return RepoInfo(toplevel, Path(git_dir), Path(common_dir), branch or None)


@dataclass(frozen=True)
class Change:
    """One entry of ``diff-tree --raw``: ``paths`` has two entries for a rename; the mode
    and blob of the new side (``000000`` and the zero id for a deletion), and the mode of
    the old side (``000000`` for an addition)."""

    status: str
    paths: tuple[str, ...]
    new_mode: str
    new_sha: Sha
    old_mode: str = "000000"


@dataclass(frozen=True)
class WorktreeEntry:
    path: Path
    head: Sha | None
    branch: str | None  # full ref, e.g. refs/heads/main
    bare: bool


class Git:
    """Git operations on one repository, named by its common git directory."""

    def __init__(self, common_dir: Path, *, identity_env: Mapping[str, str] | None = None):
        self.common_dir = common_dir
        self.env = clean_env()
        self._identity = dict(identity_env) if identity_env is not None else None
        self._trees: dict[str, Sha] = {}  # commit id -> its tree (see tree_of)
        self._runner: proc.Runner = proc.run
        self._private: PrivateGit | None = None

    def running_with(self, runner: proc.Runner) -> Git:
        """The same repository, its git commands started by ``runner`` (e.g. at a lower
        CPU priority); what this object has learnt (trees, admin dirs) is shared."""
        other = copy.copy(self)
        other._runner = runner
        return other

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        check: bool = True,
    ) -> proc.Completed:
        """Run git on the repository (``cwd`` None) or in a worktree (``cwd`` given): one of
        wtmesh's, through its private admin dir, or one of the user's, through the git dir
        git itself registered for it (never through a ``.git`` file found there)."""
        argv: list[str] = ["git", *_CONFIG]
        full_env = dict(self.env)
        if cwd is None:
            argv.append(f"--git-dir={self.common_dir}")
        else:
            admin = self.private.admin_of(cwd)
            if admin is not None:
                if self.private.replaced(cwd):
                    raise WorktreeReplaced(cwd)
                argv += [f"--git-dir={admin}", f"--work-tree={cwd}", *self.private.config_args]
                full_env.update(self.private.env)
            else:
                user_git_dir = self._user_git_dir(cwd)
                if user_git_dir is not None:
                    argv += [f"--git-dir={user_git_dir}", f"--work-tree={cwd}"]
        argv.extend(args)
        if env:
            full_env.update(env)
        return self._runner(argv, cwd=cwd, env=full_env, input=input, check=check)

    def run_on_objects(self, *args: str, env: Mapping[str, str] | None = None,
                       input: bytes | None = None, check: bool = True,
                       stdout: BinaryIO | None = None) -> proc.Completed:
        """Run git on objects alone, in wtmesh's private bare git dir (see the module's
        docstring): no user or lane configuration applies. With ``stdout``, its output
        goes to that open file instead of into memory."""
        private = self.private
        argv = ["git", *_CONFIG, f"--git-dir={private.shadow()}", *args]
        full_env = {**self.env, **private.env, **(env or {})}
        return self._runner(argv, cwd=None, env=full_env, input=input, check=check,
                            stdout=stdout)

    @property
    def private(self) -> PrivateGit:
        if self._private is None:
            self._private = PrivateGit(self)
        return self._private

    def _user_git_dir(self, worktree: Path) -> Path | None:
        """The git dir of a worktree of the user's: the main one's ``.git`` directory, or
        the admin entry git registered for a linked one. None: leave it to git (a
        repository found some other way, e.g. ``GIT_DIR``)."""
        dot_git = worktree / ".git"
        if dot_git.is_dir() and not dot_git.is_symlink() \
                and dot_git.resolve() == self.common_dir.resolve():
            return dot_git
        for admin, path in self.worktree_admin_entries():
            if path == worktree:
                return admin
        return None

    # -- objects and refs ----------------------------------------------------------------

    def resolve_commit(self, rev: str) -> Sha | None:
        res = self.run("rev-parse", "-q", "--verify", "--end-of-options", f"{rev}^{{commit}}",
                       check=False)
        return Sha(res.text.strip()) if res.returncode == 0 else None

    def read_ref(self, ref: str) -> Sha | None:
        res = self.run("rev-parse", "-q", "--verify", "--end-of-options", ref, check=False)
        return Sha(res.text.strip()) if res.returncode == 0 else None

    def tree_of(self, commit: str) -> Sha:
        """The tree of a commit; remembered for full ids, which name one commit forever."""
        tree = self._trees.get(commit)
        if tree is None:
            tree = Sha(self.run("rev-parse", "--verify", f"{commit}^{{tree}}").text.strip())
            if _is_full_id(commit):
                self._trees[commit] = tree
        return tree

    def update_ref(self, ref: str, new: str, old: str | None, message: str = "wtmesh") -> bool:
        """Compare-and-swap: move ``ref`` to ``new`` only if it still is ``old``
        (``old`` None: only if it does not exist). False when someone moved it first."""
        res = self.run("update-ref", "-m", message, ref, new, old or ZERO_SHA, check=False)
        return res.returncode == 0

    def set_ref(self, ref: str, new: str, message: str = "wtmesh") -> None:
        """Point one of wtmesh's own refs (never a user's) at ``new``, whatever it was."""
        self.set_refs({ref: new}, message)

    def set_refs(self, refs: Mapping[str, str], message: str = "wtmesh") -> None:
        """``set_ref`` for several refs in one transaction (one git call)."""
        script = "".join(f"update {ref} {new}\n" for ref, new in refs.items())
        self.run("update-ref", "-m", message, "--stdin", input=script.encode())

    def delete_ref(self, ref: str) -> None:
        self.run("update-ref", "-d", ref, check=False)

    def delete_refs(self, refs: Mapping[str, str]) -> None:
        """Delete ``{ref: expected value}`` in one transaction (each only if unchanged)."""
        if refs:
            script = "".join(f"delete {ref} {old}\n" for ref, old in refs.items())
            self.run("update-ref", "--stdin", input=script.encode())

    def list_refs(self, prefix: str) -> dict[str, Sha]:
        res = self.run("for-each-ref", "--format=%(objectname) %(refname)", prefix)
        refs: dict[str, Sha] = {}
        for line in res.text.splitlines():
            sha, _, name = line.partition(" ")
            refs[name] = Sha(sha)
        return refs

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.run("merge-base", "--is-ancestor", ancestor, descendant,
                        check=False).returncode == 0

    def commit_tree(self, tree: str, parents: Sequence[str], message: str) -> Sha:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        # --no-gpg-sign: commit.gpgSign would run gpg (and fail where it has no key).
        res = self.run_on_objects(*DELIVERY_CONFIG, *args, "--no-gpg-sign", "-F", "-",
                                  input=message.encode("utf-8", "surrogateescape"),
                                  env=self.identity_env())
        commit = Sha(res.text.strip())
        if _is_full_id(tree):
            self._trees[commit] = Sha(tree)
        return commit

    def identity_env(self) -> dict[str, str]:
        """Who wtmesh's commits are by: the environment's ``GIT_AUTHOR_*`` /
        ``GIT_COMMITTER_*`` where set, else the repository's ``user.name`` /
        ``user.email``, else wtmesh's own, so a run never fails for want of ``user.email``
        on a fresh machine or in CI. Read once (the run asks before any lane starts) and
        always passed whole: a ``user.email`` a lane plants later changes nobody's commits."""
        if self._identity is None:
            name = self.run("config", "user.name", check=False).text.strip()
            email = self.run("config", "user.email", check=False).text.strip() \
                or os.environ.get("EMAIL", "")
            ident: dict[str, str] = {}
            for role in ("AUTHOR", "COMMITTER"):
                ident[f"GIT_{role}_NAME"] = os.environ.get(f"GIT_{role}_NAME") or name \
                    or WTMESH_NAME
                ident[f"GIT_{role}_EMAIL"] = os.environ.get(f"GIT_{role}_EMAIL") or email \
                    or WTMESH_EMAIL
            self._identity = ident
        return dict(self._identity)

    def cat_blob(self, sha: str) -> bytes:
        return self.run_on_objects("cat-file", "blob", sha).stdout

    def symlinks_in(self, tree: str) -> dict[str, bytes]:
        """Every symlink in ``tree`` (a commit or tree), path -> target, from one
        ``ls-tree`` and one ``cat-file --batch``: a link's target is its blob's bytes.
        ``ls-tree -r`` does not descend into gitlinks, whose files are not in the tree."""
        listing = self.run("ls-tree", "-r", "-z", tree).stdout
        blobs: dict[str, str] = {}
        for record in listing.split(b"\0"):
            meta, _, raw_path = record.partition(b"\t")
            if meta.startswith(b"120000 "):
                blobs[decode_path(raw_path)] = meta.split(b" ")[2].decode()
        if not blobs:
            return {}
        out = self.run("cat-file", "--batch",
                       input="".join(f"{sha}\n" for sha in blobs.values()).encode()).stdout
        links: dict[str, bytes] = {}
        at = 0
        for path in blobs:  # --batch answers in input order: "<id> blob <size>\n<bytes>\n"
            header_end = out.index(b"\n", at)
            size = int(out[at:header_end].split(b" ")[2])
            links[path] = out[header_end + 1:header_end + 1 + size]
            at = header_end + 1 + size + 1
        return links

    def not_commits(self, shas: Sequence[str]) -> list[str]:
        """Those of ``shas`` that name no commit in this repository (missing, or another
        kind of object), from one ``cat-file --batch-check``."""
        if not shas:
            return []
        out = self.run("cat-file", "--batch-check=%(objecttype)", input="".join(
            f"{sha}\n" for sha in shas).encode()).text.splitlines()
        # A missing object answers "<id> missing" instead of its type.
        return [sha for sha, kind in zip(shas, out, strict=True) if kind != "commit"]

    # -- diffs ---------------------------------------------------------------------------

    def object_id(self, rev: str) -> str:
        """A full object id for ``rev``: calls on objects alone know no refs."""
        if _is_full_id(rev):
            return rev
        return self.run("rev-parse", "--verify", "--end-of-options", rev).text.strip()

    def diff(self, old: str, new: str) -> bytes:
        """A binary-safe, full-index unified diff, untouched by the user's diff settings."""
        return self.run_on_objects(*DELIVERY_CONFIG, "diff-tree", *_DIFF_OPTIONS,
                                   self.object_id(old), self.object_id(new)).stdout

    def changes(self, old: str, new: str) -> list[Change]:
        res = self.run_on_objects("diff-tree", "-r", "-z", "--raw", "-M", "--no-ext-diff",
                                  "--no-abbrev", self.object_id(old), self.object_id(new))
        return _parse_raw(res.stdout.split(b"\0"))[0]

    def diff_to(self, old: str, new: str, out: Path) -> tuple[list[Change], int]:
        """``diff`` and ``changes`` from one ``diff-tree``, written to ``out`` as it comes,
        never held in memory (a diff can be larger than is worth holding): with ``--raw -p
        -z`` git prints the NUL-separated records, one more NUL, then exactly the patch
        ``diff`` gives. The changes, and the offset in ``out`` where the patch begins."""
        with open(out, "w+b") as fh:
            self.run_on_objects(*DELIVERY_CONFIG, "diff-tree", "-z", "--raw", "--no-abbrev",
                                *_DIFF_OPTIONS, self.object_id(old), self.object_id(new),
                                stdout=fh)
            fh.seek(0)
            # No record or path is empty, so the first two NULs in a row end the records.
            head = bytearray()
            while (end := head.find(b"\0\0", max(0, len(head) - _RECORDS_READ - 1))) < 0:
                block = fh.read(_RECORDS_READ)
                if not block:
                    return [], len(head)  # nothing differs: git printed nothing
                head += block
        changes, used = _parse_raw(bytes(head[:end + 1]).split(b"\0"))
        assert used == end + 1, "diff-tree's records end where their NULs say"
        return changes, used + 1

    def apply_to_tree(self, base: str, patch: Path, index: Path) -> Sha | None:
        """Apply ``patch`` onto ``base`` in a temporary index; the resulting tree, or None
        when it conflicts. Plain apply first, then three-way. ``apply --3way`` exits 0 even
        when the merge conflicts, so conflicts are read from unmerged entries instead.
        On objects alone: no attributes file or merge driver of anyone's applies."""
        env = {"GIT_INDEX_FILE": str(index)}
        self.run_on_objects("read-tree", base, env=env)
        plain = self.apply(patch, "--cached", env=env)
        if plain.returncode != 0:
            self.run_on_objects("read-tree", base, env=env)
            merged = self.apply(patch, "--cached", "--3way", env=env)
            unmerged = self.run_on_objects("ls-files", "-u", "-z", env=env).stdout
            if merged.returncode != 0 or unmerged:
                return None
        written = self.run_on_objects("write-tree", env=env, check=False)
        return Sha(written.text.strip()) if written.returncode == 0 else None

    def apply(self, patch: Path, *how: str, cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> proc.Completed:
        """``git apply`` with ``how`` (``--index``, ``--cached``, ``--3way``), untouched by
        the user's apply, whitespace and merge settings; non-zero when it does not apply.
        In one of wtmesh's worktrees (``cwd``), or on objects alone."""
        if cwd is None:
            return self.run_on_objects(*DELIVERY_CONFIG, "apply", *how, *_APPLY_OPTIONS,
                                       str(patch), env=env, check=False)
        return self.run(*DELIVERY_CONFIG, "apply", *how, *_APPLY_OPTIONS, str(patch), cwd=cwd,
                        env=env, check=False)

    def format_patch(self, commit: str, out: BinaryIO) -> None:
        """``commit`` as one mail in ``git format-patch`` form, written to ``out`` (a patch
        is as large as its diff), the same whatever the user's diff.* and format.*
        settings (format.useAutoBase, for one, makes it fail)."""
        self.run_on_objects(*DELIVERY_CONFIG, "format-patch", "-1", *_FORMAT_PATCH_OPTIONS,
                            commit, stdout=out)

    # -- worktrees -----------------------------------------------------------------------

    def worktree_add(self, path: Path, commit: str) -> None:
        """A worktree of wtmesh's detached at ``commit``: its files, its private admin dir
        (not registered with the user's repository: ``git worktree list`` never shows
        it, and nothing in ``.git/worktrees/`` is ours), and the lanes' own ``.git``.
        Worktrees of one run, or of two runs, are filled in parallel."""
        path.mkdir(parents=True, exist_ok=True)
        self.private.make_admin(path, commit)
        self.run("reset", "-q", "--hard", commit, cwd=path)
        self.private.seed_lane_repo(path, commit)

    def worktree_remove(self, path: Path) -> None:
        """Remove one worktree of ours, by path (never a bare ``worktree prune``, which
        would also unregister worktrees of the user's whose directory is missing): what
        ``git worktree remove --force`` does, deleting the files outside the admin lock.
        This also copes with a directory already gone or an entry a crash left half
        written, where ``git worktree remove`` refuses. A symlink in the worktree's place
        is unlinked, never followed; a directory that is not the one made there (see
        WorktreeReplaced) is left alone: the path may lead anywhere."""
        if path.is_symlink():
            path.unlink()
        elif path.exists() and not self.private.replaced(path):
            shutil.rmtree(path, ignore_errors=True)
        self.private.forget_admin(path)
        # A worktree an earlier version registered with ``git worktree add``. wtmesh adds
        # none any more, so nothing of its own races this (git worktree list skips an
        # entry whose gitdir file is gone).
        for admin, worktree in self.worktree_admin_entries():
            if worktree == path:
                shutil.rmtree(admin, ignore_errors=True)

    def worktree_admin_entries(self) -> list[tuple[Path, Path]]:
        """``(admin dir, worktree path)`` for every registered worktree, read from the
        admin entries themselves: this works where ``git worktree list`` fails on an
        entry a killed ``worktree add`` left half written."""
        admin_root = self.common_dir / "worktrees"
        entries: list[tuple[Path, Path]] = []
        if not admin_root.is_dir():
            return entries
        for admin in admin_root.iterdir():
            try:
                gitdir = _plain_path(admin.joinpath("gitdir").read_bytes())
            except OSError:
                continue
            if gitdir is not None:
                entries.append((admin, gitdir.parent))
        return entries

    def own_worktrees(self) -> list[Path]:
        """Every worktree of wtmesh's on this repository, found through the state
        directory (and, for runs of earlier versions, git's registrations)."""
        found = [worktree for _admin, worktree in self.private.entries()]
        found += [worktree for _admin, worktree in self.worktree_admin_entries()
                  if worktree not in found]
        return found

    def remove_worktrees_under(self, root: Path) -> list[Path]:
        """Remove every worktree of ours in ``root`` (a directory of wtmesh's). Directly
        in it, as wtmesh makes them: a record a lane wrote may climb out of it with
        ``..``, which ``is_relative_to``, comparing names, would let through."""
        removed = []
        for worktree in self.own_worktrees():
            if worktree.parent == root:
                self.worktree_remove(worktree)
                removed.append(worktree)
        return removed

    def worktrees(self) -> list[WorktreeEntry]:
        res = self.run("worktree", "list", "--porcelain", "-z")
        entries: list[WorktreeEntry] = []
        current: dict[str, str] = {}
        for field in res.stdout.split(b"\0") + [b""]:
            if not field:
                if current:
                    entries.append(WorktreeEntry(
                        Path(current["worktree"]),
                        Sha(current["HEAD"]) if "HEAD" in current else None,
                        current.get("branch"), "bare" in current))
                current = {}
                continue
            key, _, value = decode_path(field).partition(" ")
            current[key] = value
        return entries

    def checkout_clean(self, worktree: Path, commit: str) -> None:
        """Move a worktree to ``commit`` and make it indistinguishable from a fresh checkout:
        no tracked change, no untracked or ignored file, nothing staged, no index flag
        (``checkout --force`` keeps skip-worktree and assume-unchanged bits: an index
        that has any is read afresh from the commit), and a new ``.git`` for the lanes."""
        self.remove_stale_index_lock(worktree)
        if self._index_has_flags(worktree):
            self.run("read-tree", commit, cwd=worktree)
        self.run("checkout", "-q", "--detach", "--force", commit, cwd=worktree)
        self.run("clean", "-q", "-ffdx", cwd=worktree)
        self.private.seed_lane_repo(worktree, commit)

    def _index_has_flags(self, worktree: Path) -> bool:
        """Any skip-worktree (``S``) or assume-unchanged (lower case) entry in the
        worktree's index. wtmesh's index is its own, but it is a file, and a lane
        running unsandboxed can reach any file. (An intent-to-add entry shows as ``H``
        and needs nothing: the checkout drops it, and the clean its file.)"""
        listing = self.run("ls-files", "-v", "-z", cwd=worktree).stdout
        for entry in listing.split(b"\0"):
            if entry and (entry[:1] == b"S" or entry[:1].islower()):
                return True
        return False

    def remove_stale_index_lock(self, worktree: Path) -> None:
        """A killed git inside a lane can leave index.lock behind; the lane's process group
        is gone by the time we get here, so the lock is stale."""
        admin = self.private.admin_of(worktree)
        if admin is None:  # not one of ours: never touch a lock of the user's
            return
        lock = admin / "index.lock"
        if lock.exists():
            lock.unlink()

    def snapshot(self, worktree: Path, parent: str, message: str) -> Sha:
        """Commit everything in the worktree (new, deleted, renamed, binary, mode changes;
        ignored files excluded) as a child of ``parent``, without touching HEAD."""
        self.remove_stale_index_lock(worktree)
        self.run("add", "-A", "--", ".", cwd=worktree)
        tree = self.run("write-tree", cwd=worktree).text.strip()
        return self.commit_tree(tree, [parent], message)

    def pending_paths(self, worktree: Path) -> list[str]:
        """What a snapshot of the worktree would take up: untracked files that are not
        ignored, and tracked ones modified or deleted. A directory git will not descend
        into because it holds a repository comes as one entry, ``dir/``."""
        listing = self.run("ls-files", "-z", "--others", "--modified", "--exclude-standard",
                           cwd=worktree).stdout
        return [decode_path(p) for p in listing.split(b"\0") if p]

    def tracked_changes(self, worktree: Path) -> bytes:
        """Uncommitted changes to tracked files (staged or not); empty when clean.
        ``status`` refreshes stat information itself (in memory: no optional locks)."""
        return self.run("status", "--porcelain=v1", "-z", "--untracked-files=no",
                        cwd=worktree, env={"GIT_OPTIONAL_LOCKS": "0"}).stdout

    def worktree_status(self, worktree: Path) -> tuple[Sha | None, list[str], bool]:
        """A worktree's HEAD, its tracked files with uncommitted changes, and whether it
        holds untracked (not ignored) files, in one ``status`` call (porcelain v2 reports
        HEAD in its branch header). Read-only: refreshed stat information is not written
        back (no optional locks), which is cheaper on a large index."""
        res = self.run("status", "--porcelain=v2", "-z", "--branch", "--untracked-files=normal",
                       cwd=worktree, env={"GIT_OPTIONAL_LOCKS": "0"})
        head: Sha | None = None
        changed: list[str] = []
        untracked = False
        fields = res.stdout.split(b"\0")
        i = 0
        while i < len(fields):
            entry = fields[i]
            if entry.startswith(b"# branch.oid "):
                oid = entry.split(b" ", 2)[2].decode()
                head = Sha(oid) if oid != "(initial)" else None
            elif entry[:2] in (b"1 ", b"u "):
                changed.append(decode_path(entry.split(b" ", 8 if entry[:1] == b"1" else 10)[-1]))
            elif entry[:2] == b"2 ":  # a rename: its original path is the next field
                changed.append(decode_path(entry.split(b" ", 9)[-1]))
                i += 1
            elif entry[:2] == b"? ":
                untracked = True
            i += 1
        return head, changed, untracked

    def head_of(self, worktree: Path) -> Sha | None:
        res = self.run("rev-parse", "-q", "--verify", "HEAD", cwd=worktree, check=False)
        return Sha(res.text.strip()) if res.returncode == 0 else None

    def bring_along(self, worktree: Path, old: str, new: str, *, dry_run: bool = False,
                    on_wait: Callable[[Path], None] | None = None) -> str | None:
        """Move a worktree's index and files from ``old`` to ``new`` (``dry_run``: only
        check that git would); None when done, else why not, in one line.

        ``read-tree -m -u`` refuses when a tracked file it would change is dirty or an
        untracked file is in the way, but overwrites *ignored* files in the way: callers
        check ``untracked_in_the_way`` first. An index.lock held by another git command
        is waited out (``on_wait`` is told, with the lock's path) for up to
        INDEX_LOCK_WAIT_S in all. The index's stat information may be stale (files
        touched but unchanged), which makes read-tree refuse a clean file: only then is
        it refreshed and tried again."""
        args = ("read-tree", "-m", "-u", *(("-n",) if dry_run else ()), old, new)
        deadline = time.monotonic() + INDEX_LOCK_WAIT_S
        moved = self._waiting_out_index_lock(worktree, args, deadline, on_wait)
        if moved.returncode != 0 and not _names_index_lock(moved):
            self._waiting_out_index_lock(worktree, ("update-index", "-q", "--refresh"),
                                         deadline, on_wait)
            moved = self._waiting_out_index_lock(worktree, args, deadline, on_wait)
        if moved.returncode == 0:
            return None
        if _names_index_lock(moved):
            return (f"{self.index_lock(worktree)} was held by another git command for more "
                    f"than {INDEX_LOCK_WAIT_S:g}s")
        why = moved.stderr.decode("utf-8", "surrogateescape").strip().splitlines()
        return why[0] if why else "git read-tree refused"

    def _waiting_out_index_lock(self, worktree: Path, args: Sequence[str], deadline: float,
                                on_wait: Callable[[Path], None] | None) -> proc.Completed:
        """Run git in ``worktree``; while it fails on an index.lock (another git command
        is using the index), wait for the lock to go and run it again, until
        ``deadline``. Git names the lock file in its message in every language."""
        lock: Path | None = None
        while True:
            res = self.run(*args, cwd=worktree, check=False)
            if res.returncode == 0 or not _names_index_lock(res) \
                    or time.monotonic() >= deadline:
                return res
            if lock is None:
                lock = self.index_lock(worktree)
                if on_wait is not None:
                    on_wait(lock)
            time.sleep(_INDEX_LOCK_POLL_S)
            while lock.exists() and time.monotonic() < deadline:
                time.sleep(_INDEX_LOCK_POLL_S)

    def index_lock(self, worktree: Path) -> Path:
        """The lock file git creates beside a worktree's index while it writes it."""
        index = self.run("rev-parse", "--path-format=absolute", "--git-path", "index",
                         cwd=worktree).text.strip()
        return Path(index + ".lock")

    def untracked_in_the_way(self, worktree: Path, old: str, new: str) -> list[str]:
        """Files git does not track, untracked or ignored (a ``.env``, a local config, a
        symlink), that moving ``worktree`` from ``old`` to ``new`` would overwrite or
        delete: at a path the range adds or changes, inside it (a directory where a file
        lands) or at a leading directory of it (a file or symlink where a directory
        lands). Tracked paths are left to read-tree's own checks."""
        landing = [change.paths[-1] for change in self.changes(old, new)
                   if change.status != "D"]
        if not landing:
            return []
        listing = self.run("ls-files", "-z", cwd=worktree).stdout
        tracked = {decode_path(path) for path in listing.split(b"\0") if path}
        found: set[str] = set()
        for path in landing:
            found.update(_untracked_at(worktree, path, tracked))
        return sorted(found)

    def changes_in_the_way(self, worktree: Path, old: str, new: str) -> list[str]:
        """Paths the range ``old..new`` touches whose index entry or file in ``worktree``
        differs from ``old``: the tracked changes a move would overwrite."""
        touched = {path for change in self.changes(old, new) for path in change.paths}
        staged = self.run("diff-index", "--cached", "--name-only", "-z", "--no-renames",
                          old, "--", cwd=worktree, check=False).stdout
        unstaged = self.run("diff-files", "--name-only", "-z", cwd=worktree,
                            check=False).stdout
        differing = {decode_path(path) for path in (staged + unstaged).split(b"\0") if path}
        return sorted(touched & differing)

    def worktree_is_locked(self, path: Path) -> bool:
        """Whether ``git worktree lock`` protects the linked worktree at ``path``: it is
        meant to come back (a removable disk, a network share) even while it is gone."""
        listing = self.run("worktree", "list", "--porcelain", "-z").stdout
        # One NUL after each attribute, one more after each worktree's record.
        for record in listing.split(b"\0\0"):
            fields = record.split(b"\0")
            if fields[0] == b"worktree " + os.fsencode(path):
                return any(field == b"locked" or field.startswith(b"locked ")
                           for field in fields[1:])
        return False


def _plain_path(recorded: bytes) -> Path | None:
    """The path a record of a worktree names, if it is absolute with no ``.`` or ``..``
    in it, as git and wtmesh write them; a record a lane forged with ``<home>/..`` would
    otherwise pass for a worktree in ``<home>``, and be removed."""
    path = os.fsdecode(recorded.strip())
    return Path(path) if os.path.isabs(path) and os.path.normpath(path) == path else None


def _names_index_lock(res: proc.Completed) -> bool:
    return res.returncode != 0 and b"index.lock" in res.stderr


def _untracked_at(root: Path, path: str, tracked: set[str]) -> list[str]:
    """What git does not track at ``path`` under ``root``, or in its way (see
    ``Git.untracked_in_the_way``). Never follows a symlink: git does not either."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        lead = "/".join(parts[:depth])
        try:
            mode = os.lstat(root / lead).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return []  # nothing there, nor below it
        if not stat.S_ISDIR(mode):  # a file or symlink where the range needs a directory
            return [] if lead in tracked else [lead]
    if path in tracked:
        return []
    try:
        mode = os.lstat(root / path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not stat.S_ISDIR(mode):
        return [path]
    # A directory where a file lands: everything in it that git does not track would go.
    found = []
    for dirpath, dirnames, filenames in os.walk(root / path):
        here = Path(dirpath).relative_to(root).as_posix()
        links = [name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
        found += [f"{here}/{name}" for name in [*filenames, *links]
                  if f"{here}/{name}" not in tracked]
    return found


class WorktreeReplaced(proc.CommandError):
    """The path of one of wtmesh's worktrees no longer leads to the directory wtmesh made
    there: a lane moved it away or removed it, or put a symlink in its place (to the
    user's working tree, say). wtmesh's checkout and clean there would then work on the
    user's files with wtmesh's index, and reseeding the lanes' ``.git`` would delete the
    user's; so no git runs there, nothing is seeded there, nothing is removed through
    it. A CommandError: callers treat the worktree as broken beyond repair."""

    def __init__(self, worktree: Path) -> None:
        why = (f"fatal: {worktree} is no longer the directory wtmesh made (moved, removed or "
               "replaced); wtmesh runs no git there")
        super().__init__(proc.Completed(("git", f"--work-tree={worktree}"), 128, b"",
                                        why.encode("utf-8", "surrogateescape")))


class PrivateGit:
    """wtmesh's own git dirs for one repository, under ``<state>/``: the bare ``shadow``
    for calls on objects, and an admin dir per worktree of wtmesh's (``admin/<key>``,
    the key a hash of the worktree's path). Each holds a configuration wtmesh wrote and
    reads and writes the user's objects through ``GIT_OBJECT_DIRECTORY``."""

    def __init__(self, git: Git) -> None:
        self.common_dir = git.common_dir
        self.state = git.common_dir / "wtmesh"
        self.admin_root = self.state / "admin"
        self.objects = git.common_dir / "objects"
        self.env = {**_HERMETIC_ENV, "GIT_OBJECT_DIRECTORY": str(self.objects)}
        # Asked once, of the user's configuration, before any lane ran: the object format
        # (sha256 repositories) and where the user keeps ignore rules, so that what counts
        # as ignored in a worktree is what the user sees as ignored.
        fmt = git.run("rev-parse", "--show-object-format", check=False).text.strip() or "sha1"
        self._format_config = ("" if fmt == "sha1" else
                               f"[extensions]\n\tobjectFormat = {fmt}\n")
        self._version = "0" if fmt == "sha1" else "1"
        excludes = git.run("config", "--path", "core.excludesFile", check=False).text.strip()
        self.config_args: tuple[str, ...] = (("-c", f"core.excludesFile={excludes}")
                                             if excludes else ())
        # worktree -> its admin dir, and where the worktree really was when it was made
        self._known: dict[Path, tuple[Path, str]] = {}
        self._shadow_ready = False

    def _config(self, bare: bool) -> bytes:
        return (f"[core]\n\trepositoryformatversion = {self._version}\n"
                f"\tbare = {'true' if bare else 'false'}\n\tfilemode = true\n"
                "\tlogAllRefUpdates = false\n\tsymlinks = true\n"
                + self._format_config).encode()

    def _make_git_dir(self, path: Path, head: str, *, bare: bool) -> None:
        (path / "refs" / "heads").mkdir(parents=True, exist_ok=True)
        (path / "refs" / "tags").mkdir(exist_ok=True)
        (path / "info").mkdir(exist_ok=True)
        (path / "config").write_bytes(self._config(bare))
        (path / "HEAD").write_text(head + "\n")
        user_excludes = self.common_dir / "info" / "exclude"
        if not bare and user_excludes.is_file():
            shutil.copyfile(user_excludes, path / "info" / "exclude")

    def shadow(self) -> Path:
        path = self.state / "shadow"
        if not self._shadow_ready:
            if not (path / "HEAD").is_file():
                tmp = self.state / f".shadow.{os.getpid()}.{threading.get_ident()}"
                shutil.rmtree(tmp, ignore_errors=True)
                self._make_git_dir(tmp, "ref: refs/heads/none", bare=True)
                try:
                    os.rename(tmp, path)
                except OSError:  # another process made it first
                    shutil.rmtree(tmp, ignore_errors=True)
            self._shadow_ready = True
        return path

    def key(self, worktree: Path) -> Path:
        digest = hashlib.sha256(os.fsencode(worktree)).hexdigest()[:20]
        return self.admin_root / digest

    def admin_of(self, worktree: Path) -> Path | None:
        """The admin dir of one of wtmesh's worktrees; None for any other directory."""
        entry = self._entry(worktree)
        return entry[0] if entry is not None else None

    def replaced(self, worktree: Path) -> bool:
        """Whether ``worktree``, one of wtmesh's, is no longer the directory made there
        (see WorktreeReplaced): gone, or its path leads elsewhere than it did then."""
        entry = self._entry(worktree)
        return entry is not None and not (os.path.isdir(worktree)
                                          and os.path.realpath(worktree) == entry[1])

    def _entry(self, worktree: Path) -> tuple[Path, str] | None:
        known = self._known.get(worktree)
        if known is not None:
            return known
        admin = self.key(worktree)
        try:
            recorded = (admin / "worktree").read_bytes()
            real = (admin / "realpath").read_bytes()
        except OSError:
            return None
        if os.fsdecode(recorded.strip()) != str(worktree):
            return None
        entry = (admin, os.fsdecode(real.rstrip(b"\n")))
        self._known[worktree] = entry
        return entry

    def make_admin(self, worktree: Path, commit: str) -> Path:
        admin = self.key(worktree)
        shutil.rmtree(admin, ignore_errors=True)  # a killed run's, for this very path
        # The claim (which worktree this is for) is written first and removed last
        # (forget_admin): a kill at any moment leaves a dir that says whose it is, so gc
        # removes it with its run's worktrees. Until realpath is written, it is not
        # taken for a usable admin dir (_entry).
        admin.mkdir(parents=True)
        (admin / "worktree").write_bytes(os.fsencode(worktree) + b"\n")
        faults.point("admin-claimed")
        self._make_git_dir(admin, commit, bare=False)
        real = os.path.realpath(worktree)
        (admin / "realpath").write_bytes(os.fsencode(real) + b"\n")
        self._known[worktree] = (admin, real)
        return admin

    def forget_admin(self, worktree: Path) -> None:
        known = self._known.pop(worktree, None)
        admin = known[0] if known is not None else self.key(worktree)
        if not admin.is_dir() or admin.is_symlink():
            return
        for entry in admin.iterdir():  # all but the claim first (see make_admin)
            if entry.name == "worktree":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        faults.point("admin-emptied")
        shutil.rmtree(admin, ignore_errors=True)

    def entries(self) -> list[tuple[Path, Path]]:
        """``(admin dir, worktree)`` for every worktree of wtmesh's on this repository."""
        out: list[tuple[Path, Path]] = []
        if not self.admin_root.is_dir():
            return out
        for admin in self.admin_root.iterdir():
            try:
                worktree = _plain_path((admin / "worktree").read_bytes())
            except OSError:
                continue
            if worktree is not None:
                out.append((admin, worktree))
        return out

    def seed_lane_repo(self, worktree: Path, commit: str) -> None:
        """A fresh ``.git`` directory in the worktree, for the lanes' own git: HEAD at
        ``commit``, the index wtmesh just wrote (so ``git status`` there is clean), the
        user's objects borrowed read-only through alternates, the user's ignore rules.
        Whatever the last lane left there (a ``.git`` file pointing elsewhere, a symlink,
        planted config or hooks, index flags, its own commits) goes; a ``.git`` symlink
        is unlinked, never followed."""
        if self.replaced(worktree):
            raise WorktreeReplaced(worktree)
        dot_git = worktree / ".git"
        if dot_git.is_symlink() or dot_git.is_file():
            dot_git.unlink()
        elif dot_git.exists():
            shutil.rmtree(dot_git)
        self._make_git_dir(dot_git, commit, bare=False)
        (dot_git / "objects" / "info").mkdir(parents=True)
        (dot_git / "objects" / "info" / "alternates").write_bytes(
            os.fsencode(self.objects) + b"\n")
        admin = self.admin_of(worktree)
        if admin is not None and (admin / "index").is_file():
            shutil.copyfile(admin / "index", dot_git / "index")
