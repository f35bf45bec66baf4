"""Detect and undo what a lane changed in the user's repository outside its worktree.

SPEC 10: a lane cannot change the user's repository outside its own worktree through
git. A sandbox makes the repository read-only to lanes, and a git dir of a lane's own
keeps the git a lane runs in its worktree away from it; what neither covers is an
unsandboxed lane writing the repository by absolute path (``git -C "$WTMESH_REPO" ...``,
``$WTMESH_REPO/.git/config``). So before the first lane starts the run takes a
fingerprint of what no lane may change; after each lane ``restore()`` puts back whatever
differs and says what it was, and the unit fails ``safety_regression_risk`` naming it.

Fingerprinted (paths relative to the common git dir):

- by bytes: ``config``, ``config.worktree``, ``HEAD``, ``shallow``,
  ``objects/info/alternates``, every entry under ``hooks/`` and ``info/`` (with its
  mode; a symbolic link as a link: nothing is followed, and a fifo is never opened), and
  each of the user's linked worktrees' ``HEAD``, ``gitdir``, ``commondir``,
  ``config.worktree`` and ``locked``. A new registration under ``worktrees/`` is a change.
- refs as git reads them (``for-each-ref``: packed and loose alike; a symbolic ref by its
  target), and by bytes any file under ``refs/`` git cannot read as a ref (a planted one).
  A ``packed-refs`` garbled so that git reads no ref at all is put back as git last
  read it.
- the index of the worktree the integrator brings along (``index_of``: the target's, in
  commit_first), by content: each path's entries and its skip-worktree and
  assume-unchanged flags, compared with the tree its HEAD names. ``wtmesh run`` refused
  to start unless that index matched HEAD, and the integrator keeps it matching, so any
  other difference was made during the run. Stat data is not compared: an editor's
  ``git status`` refreshing the index is no change.

Not fingerprinted, on purpose:

- refs wtmesh itself moves (``ignore_refs``: other runs' refs, stranded branches, the
  target in commit_first). This run's own refs (``own_refs``) are compared with what
  wtmesh last wrote there: every such write goes through ``own_writes``, which records
  it under the guard's lock, so a lane that deletes or moves one is seen.
- the index of the user's other worktrees: the user may stage there during a run, and
  nothing tells their ``git add`` from a lane's. Nor the files of the user's working
  trees: a lane can write those by path, and only a sandbox prevents it.
- objects: a lane can add objects, which change nothing that is named.

Limits: what changed is blamed on the lane whose check first sees it. One lane at a time
(``--max-active 1``) that is exact; with several units' lanes running at once, a
change made by one may be found, and undone, after another ends, and that other unit
fails. Changes made while no lane ran (by a proof, or a process a lane left behind) are
found by the check at the end of the run. Anything the user changes in the repository's
git metadata during an unsandboxed run is indistinguishable from a lane's and is undone
too (a removed ref is named with its commit, so nothing is lost).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .git import Git, decode_path

# On every call the guard makes: the calls that look and the calls that restore must not
# run what a lane may just have planted (Git.run pins core.hooksPath already).
_PINS = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
         "-c", "core.untrackedCache=false")

_FILES = ("config", "config.worktree", "HEAD", "shallow", "objects/info/alternates")
_TREES = ("hooks", "info")
_ADMIN_FILES = ("HEAD", "gitdir", "commondir", "config.worktree", "locked")
_KEEP_MAX = 64 << 20  # bytes kept to restore a file; beyond that only its digest

Expect = Callable[[Mapping[str, str | None]], None]


@dataclass(frozen=True)
class _Node:
    """One file system entry: a file, a symbolic link, a directory, or anything else."""

    kind: str  # file | link | dir | other
    mode: int  # permission bits
    digest: str  # sha256 of a file's bytes or a link's target
    data: bytes | None  # those bytes, when small enough to keep

    def same_as(self, other: _Node) -> bool:
        return (self.kind, self.mode, self.digest) == (other.kind, other.mode, other.digest)


@dataclass(frozen=True)
class _Index:
    """A worktree's index by content: each path's entries (``mode sha stage``) and the
    ``ls-files -v`` tag of its first entry (``S`` skip-worktree, lower case
    assume-unchanged)."""

    entries: dict[bytes, tuple[bytes, ...]]
    tags: dict[bytes, str]


@dataclass
class _Print:
    files: dict[str, _Node]  # read without running git
    refs: dict[str, str]  # refname -> object id, or "ref: <target>" for a symbolic ref
    ref_files: dict[str, _Node]  # files under refs/ git does not read as refs
    refs_error: str | None = None


@dataclass(frozen=True)
class _IndexDiff:
    paths: list[bytes]  # entries that differ from what is expected
    flags: list[bytes]  # flags that differ from the snapshot's


class RepoGuard:
    """Fingerprints a repository's git metadata; says what changed and puts it back."""

    def __init__(self, git: Git, *, own_refs: str, ignore_refs: Sequence[str] = (),
                 own_worktrees: Sequence[Path] = ()) -> None:
        """``own_refs``: this run's ref namespace (``refs/wtmesh/<run-id>/``), compared
        with what ``own_writes`` recorded. ``ignore_refs``: refs (a name, or a prefix
        ending in ``/``) others move. ``own_worktrees``: where earlier versions of wtmesh
        kept the worktrees they registered with git (``wtmesh gc`` removes those
        registrations, during a run too); the current one registers none."""
        self.git = git
        self.common = git.common_dir
        self.own_refs = own_refs
        self.ignore_refs = tuple(ignore_refs)
        self.own_worktrees = tuple(own_worktrees)
        self._lock = threading.RLock()
        self._base: _Print | None = None
        self._index_of: Path | None = None  # the worktree whose index is watched
        self._index_base: _Index | None = None
        self._staged: dict[bytes, tuple[bytes, ...]] = {}  # differed from HEAD at start
        self._admin_names: dict[str, Path | None] = {}  # user's registration -> worktree
        self._saved_indexes: dict[str, bytes] = {}  # to recreate a removed registration
        # packed-refs as it was when git last read the refs: what to put back when a
        # lane garbles it so that git reads no ref at all (see _take_refs).
        self._readable_packed_refs: tuple[_Node | None] | None = None

    # -- public ------------------------------------------------------------------------

    def stop_watching_index(self) -> None:
        """The integrator left the watched worktree behind (its index at an older commit
        than its branch, on purpose): from now on that index is the user's to fix."""
        with self._lock:
            self._index_of = None
            self._index_base = None

    def snapshot(self, index_of: Path | None = None) -> None:
        """Record what no lane may change; ``index_of`` is the worktree whose index the
        integrator keeps at its HEAD (None: no index is watched)."""
        with self._lock:
            self._index_of = index_of
            self._admin_names = self._user_registrations()
            self._base = self._take()
            self._saved_indexes = {}
            for name in self._admin_names:
                saved = self.common / "worktrees" / name / "index"
                if saved.is_file():
                    self._saved_indexes[name] = saved.read_bytes()
            self._index_base = None
            self._staged = {}
            if self._index_of is not None:
                index = self._read_index()
                tree = self._read_head_tree()
                if index is not None and tree is not None:
                    self._index_base = index
                    self._staged = {p: index.entries.get(p, ()) for p in
                                    _differing(index.entries, tree, {})}

    def check(self) -> list[str]:
        """What differs from the snapshot, one line per thing. Looking runs git with the
        repository's configuration as it now is: after a lane, ``restore()`` is the call
        to make, which puts the files back before any git runs."""
        with self._lock:
            if self._base is None:
                return []
            now = self._take()
            items = self._describe_file_changes(self._file_changes(self._base.files, now.files))
            items += self._describe_refs(now)
            return items + self._describe_index(self._index_diff())

    def restore(self) -> list[str]:
        """Put back everything that differs from the snapshot; returns what it was.
        Files first, without running git, so that a planted ``core.fsmonitor``,
        ``core.hooksPath`` or ``include.path`` is gone before the git calls that restore
        refs and the index."""
        with self._lock:
            if self._base is None:
                return []
            changed_files = self._file_changes(self._base.files, self._take_files())
            for rel, old, _new in sorted(changed_files, key=lambda c: _restore_order(c[0])):
                _put(self.common / rel, old)
            self._recreate_indexes(changed_files)
            items = self._describe_file_changes(changed_files)
            now = self._take_refs_and_files()
            if now.refs_error:
                items += self._describe_refs(now)
                self._put_readable_packed_refs()
                now = self._take_refs_and_files()
                if now.refs_error:
                    return items
            items += self._describe_refs(now)
            for rel, old, _new in self._file_changes(self._base.ref_files, now.ref_files):
                _put(self.common / rel, old)
            for name, was, seen in self._ref_changes(now):
                self._put_ref(name, was, seen)
            index_diff = self._index_diff()
            items += self._describe_index(index_diff)
            self._put_index(index_diff)
            return items

    @contextmanager
    def own_writes(self) -> Iterator[Expect]:
        """Around a write of wtmesh's own to the repository (a ref of this run, the
        target's worktree brought along): no check runs meanwhile, and ``expect``
        records the refs written (``{ref: new}``, None for a deletion)."""
        with self._lock:
            yield self._expect

    # -- taking a fingerprint ----------------------------------------------------------

    def _take(self) -> _Print:
        files = self._take_files()
        refs = self._take_refs_and_files()
        refs.files = files
        return refs

    def _take_refs_and_files(self) -> _Print:
        """Refs, then the files under ``refs/`` that were not among them."""
        refs, listed, error = self._take_refs()
        if error:  # no ref could be listed, so none can be told from a planted file
            return _Print({}, {}, {}, error)
        return _Print({}, refs, self._unreadable_ref_files(listed), error)

    def _take_files(self) -> dict[str, _Node]:
        files: dict[str, _Node] = {}
        for rel in _FILES:
            _record(self.common, rel, files)
        for rel in _TREES:
            _walk(self.common, rel, files)
        # Written by git itself (update-server-info, which gc runs), for dumb transports.
        files.pop("info/refs", None)
        for name in sorted({*self._user_registrations(), *self._admin_names}):
            rel = f"worktrees/{name}"
            _record(self.common, rel, files)
            if rel in files:
                for leaf in _ADMIN_FILES:
                    _record(self.common, f"{rel}/{leaf}", files)
        return files

    def _user_registrations(self) -> dict[str, Path | None]:
        """Every entry under ``worktrees/`` but those of wtmesh's, with the path of its
        worktree where its ``gitdir`` names one (git >= 2.48 may write it relative to
        the entry). wtmesh itself never adds one, so an entry however incomplete (no
        ``gitdir``) is the user's or a lane's."""
        root = self.common / "worktrees"
        found: dict[str, Path | None] = {}
        try:
            names = sorted(os.listdir(root))
        except OSError:
            return found
        for name in names:
            try:
                gitdir = os.fsdecode((root / name / "gitdir").read_bytes().strip())
            except OSError:
                found[name] = None
                continue
            worktree = Path(os.path.normpath(root / name / gitdir)).parent
            if not any(worktree.is_relative_to(own) for own in self.own_worktrees):
                found[name] = worktree
        return found

    def _take_refs(self) -> tuple[dict[str, str], set[str], str | None]:
        """The watched refs and their values, every name listed, and why git could not
        list them (None when it could)."""
        packed_refs = _read_node(self.common / "packed-refs")  # read before git reads it
        res = self._git("for-each-ref", "--format=%(refname)%00%(symref)%00%(objectname)")
        if res.returncode != 0:
            lines = res.stderr.decode("utf-8", "replace").strip().splitlines()
            return {}, set(), lines[-1] if lines else f"for-each-ref exited {res.returncode}"
        self._readable_packed_refs = (packed_refs,)
        refs: dict[str, str] = {}
        listed: set[str] = set()
        for line in res.stdout.split(b"\n"):
            if not line:
                continue
            name_b, symref, oid = line.split(b"\0")
            name = decode_path(name_b)
            listed.add(name)
            if self._watched(name):
                refs[name] = f"ref: {decode_path(symref)}" if symref else oid.decode()
        return refs, listed, None

    def _unreadable_ref_files(self, listed: set[str]) -> dict[str, _Node]:
        """Files under ``refs/`` that git did not list: a lane may plant a file that is
        not a ref at all, which every later ``git`` warns about. Only names are read
        for the rest (a loose ref per branch: there may be thousands)."""
        unlisted = [rel for rel in _file_names(self.common, "refs")
                    if rel not in listed and not rel.endswith(".lock") and self._watched(rel)]
        if not unlisted:
            return {}
        # Listed again after the walk: a ref made between the listing and the walk is
        # a ref, not a planted file (one deleted meanwhile is gone from the disk too).
        _refs, again, error = self._take_refs()
        found: dict[str, _Node] = {}
        for rel in unlisted:
            node = _read_node(self.common / rel)
            if node is not None and (error or rel not in again):
                found[rel] = node
        return found

    def _watched(self, ref: str) -> bool:
        if ref.startswith(self.own_refs):
            return True
        return not any(ref == p or (p.endswith("/") and ref.startswith(p))
                       for p in self.ignore_refs)

    def _expect(self, refs: Mapping[str, str | None]) -> None:
        if self._base is None:
            return
        for ref, value in refs.items():
            if not self._watched(ref):
                continue
            if value is None:
                self._base.refs.pop(ref, None)
            else:
                self._base.refs[ref] = value

    # -- comparing ---------------------------------------------------------------------

    @staticmethod
    def _file_changes(base: Mapping[str, _Node], files: Mapping[str, _Node]
                      ) -> list[tuple[str, _Node | None, _Node | None]]:
        changes = []
        for rel in sorted({*base, *files}):
            old, new = base.get(rel), files.get(rel)
            if old is None or new is None or not old.same_as(new):
                changes.append((rel, old, new))
        return changes

    def _ref_changes(self, now: _Print) -> list[tuple[str, str | None, str | None]]:
        assert self._base is not None
        base = self._base.refs
        if now.refs_error:
            return []
        return [(name, base.get(name), now.refs.get(name))
                for name in sorted({*base, *now.refs}) if base.get(name) != now.refs.get(name)]

    def _index_diff(self) -> _IndexDiff:
        if self._index_of is None or self._index_base is None:
            return _IndexDiff([], [])
        index, tree = self._read_index(), self._read_head_tree()
        if index is None or tree is None:
            return _IndexDiff([], [])
        paths = _differing(index.entries, tree, self._staged)
        base_tags = self._index_base.tags
        flags = sorted(p for p, tag in index.tags.items()
                       if p in base_tags and tag != "M" and base_tags[p] != "M"
                       and _flags(tag) != _flags(base_tags[p]))
        return _IndexDiff(paths, flags)

    # -- describing --------------------------------------------------------------------

    def _label(self, rel: str) -> str:
        return f"{self.common.name}/{rel}"

    def _describe_refs(self, now: _Print) -> list[str]:
        assert self._base is not None
        if now.refs_error:
            return [f"refs cannot be read: {now.refs_error}"]
        items = self._describe_file_changes(self._file_changes(self._base.ref_files,
                                                               now.ref_files))
        return items + [self._describe_ref(*change) for change in self._ref_changes(now)]

    def _describe_file_changes(self, changes: list[tuple[str, _Node | None, _Node | None]]
                               ) -> list[str]:
        items: list[str] = []
        # What lies in a directory made, removed or replaced goes without saying.
        whole = {rel for rel, old, new in changes if _whole_dir(old, new)}
        for rel, old, new in changes:
            if any(rel.startswith(f"{parent}/") for parent in whole):
                continue
            if _is_head(rel):
                items.append(self._describe_head(rel, old, new))
            elif old is None:
                items.append(f"{self._label(rel)} created")
            elif new is None:
                items.append(f"{self._label(rel)} removed")
            elif _is_config(rel) and old.kind == new.kind == "file":
                items += self._describe_config(rel, old, new)
            else:
                items.append(f"{self._label(rel)} changed")
        return items

    def _describe_head(self, rel: str, old: _Node | None, new: _Node | None) -> str:
        name = "HEAD"
        if rel != "HEAD":
            worktree = self._admin_names.get(rel.split("/")[1])
            name = f"HEAD of worktree {worktree}" if worktree else self._label(rel)

        def said(node: _Node | None) -> str:
            if node is None:
                return "none"
            if node.data is None:
                return node.kind
            return node.data.decode("utf-8", "replace").strip()[:80]
        return f"{name} moved (was {said(old)}, now {said(new)})"

    def _describe_config(self, rel: str, old: _Node, new: _Node) -> list[str]:
        """Key by key where git can read both versions (``git config --file``, which
        follows no ``include.path``), else the file as a whole."""
        before, after = self._config_entries(old), self._config_entries(new)
        if before is None or after is None:
            return [f"{self._label(rel)} changed"]
        items = []
        for key in sorted({k for k, _ in before} | {k for k, _ in after}):
            was = sorted(v for k, v in before.elements() if k == key)
            now = sorted(v for k, v in after.elements() if k == key)
            if was == now:
                continue
            what = "added" if not was else "removed" if not now else "changed"
            items.append(f"{self._label(rel)}: {key} {what}")
        return items or [f"{self._label(rel)} changed"]

    def _config_entries(self, node: _Node) -> Counter[tuple[str, str]] | None:
        if node.data is None:
            return None
        with tempfile.TemporaryDirectory(prefix="wtmesh-config-") as tmp:
            path = Path(tmp) / "config"
            path.write_bytes(node.data)
            res = self._git("config", "--file", str(path), "--list", "--null")
        if res.returncode != 0:
            return None
        entries: Counter[tuple[str, str]] = Counter()
        for record in res.stdout.split(b"\0"):
            if record:
                key, _, value = record.partition(b"\n")
                entries[(decode_path(key), decode_path(value))] += 1
        return entries

    @staticmethod
    def _describe_ref(name: str, old: str | None, new: str | None) -> str:
        def short(value: str) -> str:
            return value if value.startswith("ref: ") else value[:12]
        if old is None:
            assert new is not None
            return f"{name} created ({short(new)})"
        if new is None:
            return f"{name} deleted (was {short(old)})"
        return f"{name} moved (was {short(old)}, now {short(new)})"

    def _describe_index(self, diff: _IndexDiff) -> list[str]:
        if self._index_of is None:
            return []
        where = self._index_of
        items = []
        if diff.paths:
            items.append(f"index of {where}: staged changes to {_some(diff.paths)}")
        if diff.flags:
            items.append(f"index of {where}: skip-worktree or assume-unchanged flags "
                         f"changed on {_some(diff.flags)}")
        return items

    # -- restoring ---------------------------------------------------------------------

    def _recreate_indexes(self, changes: list[tuple[str, _Node | None, _Node | None]]
                          ) -> None:
        """A registration of the user's that a lane removed comes back with the index
        it had at the snapshot (its HEAD and links are restored as files)."""
        for rel, old, new in changes:
            parts = rel.split("/")
            if len(parts) == 2 and parts[0] == "worktrees" and new is None and old:
                saved = self._saved_indexes.get(parts[1])
                index = self.common / rel / "index"
                if saved is not None and not index.exists():
                    _write_file(index, saved, 0o644)

    def _put_readable_packed_refs(self) -> None:
        """packed-refs back as git last read it (git reads no ref past a line it cannot
        parse). A ref git moved since is a loose file, which takes precedence over it
        (unless a ``pack-refs`` ran in between); what lanes changed is then put back
        ref by ref."""
        if self._readable_packed_refs is None:
            return
        (node,) = self._readable_packed_refs
        if node is None or node.data is not None:  # one too large to keep stays as it is
            _put(self.common / "packed-refs", node)

    def _put_ref(self, name: str, value: str | None, seen: str | None) -> None:
        """Put ``name`` back to ``value`` over the ``seen`` one, by compare-and-swap: a
        ref moved again since the look (a commit of the user's) is left as it now is,
        and the next check names it. ``--no-deref``: the ref itself, even where a lane
        made it a symbolic ref (whose value ``update-ref`` cannot compare)."""
        if value is not None and value.startswith("ref: "):
            self._git("symbolic-ref", name, value[5:])
            return
        if seen is None:  # git's "must not exist yet", in the repository's hash length
            seen = "0" * len(value or "")
        expected = [] if seen.startswith("ref: ") else [seen]
        if value is None:
            self._git("update-ref", "--no-deref", "-d", name, *expected)
        else:
            self._git("update-ref", "--no-deref", "-m", "wtmesh: undo a lane's change",
                      name, value, *expected)

    def _put_index(self, diff: _IndexDiff) -> None:
        if self._index_of is None or self._index_base is None:
            return
        if diff.paths:
            tree = self._read_head_tree() or {}
            zero = b"0" * _oid_length(tree)
            script = bytearray()
            for path in diff.paths:
                script += b"0 " + zero + b"\t" + path + b"\0"  # mode 0: remove every stage
                for entry in self._staged.get(path, tree.get(path, ())):
                    script += entry + b"\t" + path + b"\0"
            self._git_in_index("update-index", "-z", "--index-info", input=bytes(script))
        index = self._read_index()
        if index is None:
            return
        base_tags = self._index_base.tags
        for flag, pick in (("skip-worktree", 0), ("assume-unchanged", 1)):
            for wanted in (True, False):
                paths = [p for p in index.entries if p in base_tags and index.tags[p] != "M"
                         and _flags(base_tags[p])[pick] == wanted
                         and _flags(index.tags[p])[pick] != wanted]
                if paths:
                    option = f"--{flag}" if wanted else f"--no-{flag}"
                    self._git_in_index("update-index", "-z", option, "--stdin",
                                       input=b"".join(p + b"\0" for p in paths))

    # -- git ---------------------------------------------------------------------------

    def _git(self, *args: str, input: bytes | None = None) -> proc.Completed:
        return self.git.run(*_PINS, *args, input=input, check=False)

    def _git_in_index(self, *args: str, input: bytes | None = None) -> proc.Completed:
        assert self._index_of is not None
        # Through the git dir the integrator brings this worktree along with (Git.run
        # names it and the work tree); literal paths: names are data, not patterns.
        return self.git.run(*_PINS, *args, cwd=self._index_of,
                            env={"GIT_LITERAL_PATHSPECS": "1"}, input=input, check=False)

    def _read_index(self) -> _Index | None:
        res = self._git_in_index("ls-files", "-s", "-v", "-z")
        if res.returncode != 0:
            return None
        entries: dict[bytes, list[bytes]] = {}
        tags: dict[bytes, str] = {}
        for record in res.stdout.split(b"\0"):
            if not record:
                continue
            head, _, path = record.partition(b"\t")
            tag, _, entry = head.partition(b" ")
            entries.setdefault(path, []).append(entry)
            tags.setdefault(path, tag.decode())
        return _Index({p: tuple(e) for p, e in entries.items()}, tags)

    def _read_head_tree(self) -> dict[bytes, tuple[bytes, ...]] | None:
        """HEAD's tree as index entries (``mode sha 0``); None when HEAD names none."""
        res = self._git_in_index("ls-tree", "-r", "-z", "--full-tree", "HEAD")
        if res.returncode != 0:
            return None
        tree: dict[bytes, tuple[bytes, ...]] = {}
        for record in res.stdout.split(b"\0"):
            if record:
                head, _, path = record.partition(b"\t")
                mode, _type, sha = head.split(b" ")
                tree[path] = (mode + b" " + sha + b" 0",)
        return tree


def own_writes(guard: RepoGuard | None) -> AbstractContextManager[Expect]:
    """``guard.own_writes()``, or nothing to hold where no guard watches."""
    if guard is None:
        return nullcontext(lambda _refs: None)
    return guard.own_writes()


# -- helpers -------------------------------------------------------------------------


def _differing(index: Mapping[bytes, tuple[bytes, ...]],
               tree: Mapping[bytes, tuple[bytes, ...]],
               staged: Mapping[bytes, tuple[bytes, ...]]) -> list[bytes]:
    """Paths whose index entries are not what is expected: what was staged at the
    snapshot, else HEAD's tree."""
    return sorted(p for p in {*index, *tree, *staged}
                  if index.get(p, ()) != staged.get(p, tree.get(p, ())))


def _whole_dir(old: _Node | None, new: _Node | None) -> bool:
    """A directory made, removed, or replaced by something else (a link to another)."""
    return (old is not None and old.kind == "dir") != (new is not None and new.kind == "dir")


def _oid_length(tree: Mapping[bytes, tuple[bytes, ...]]) -> int:
    """40 (SHA-1) or 64 (SHA-256), as the tree's own entries say."""
    for entries in tree.values():
        return len(entries[0].split(b" ")[1])
    return 40


def _flags(tag: str) -> tuple[bool, bool]:
    """(skip-worktree, assume-unchanged) from an ``ls-files -v`` tag."""
    return tag.upper() == "S", tag.islower()


def _some(paths: Sequence[bytes], most: int = 5) -> str:
    shown = ", ".join(decode_path(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _is_head(rel: str) -> bool:
    parts = rel.split("/")
    return rel == "HEAD" or (len(parts) == 3 and parts[0] == "worktrees" and parts[2] == "HEAD")


def _is_config(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1] in ("config", "config.worktree") and not rel.startswith(
        ("hooks/", "info/", "refs/"))


def _restore_order(rel: str) -> tuple[int, str]:
    """Configuration first (a planted ``core.fsmonitor`` must be gone before anything
    else), then by path, so a directory comes back before what it holds."""
    return (0 if _is_config(rel) else 1, rel)


def _read_node(path: Path) -> _Node | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.fsencode(os.readlink(path))
        return _Node("link", 0, hashlib.sha256(target).hexdigest(), target)
    if stat.S_ISDIR(st.st_mode):
        return _Node("dir", mode, "", b"")
    if not stat.S_ISREG(st.st_mode):
        return _Node("other", mode, "", None)
    # O_NOFOLLOW | O_NONBLOCK: something swapped in since the lstat (a link, a fifo) is
    # never followed and never blocks us.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return _Node("other", mode, "", None)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return _Node("other", mode, "", None)
        digest = hashlib.sha256()
        kept: bytes | None = b""
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if kept is not None:
                kept = kept + chunk if len(kept) + len(chunk) <= _KEEP_MAX else None
    return _Node("file", mode, digest.hexdigest(), kept)


def _record(root: Path, rel: str, out: dict[str, _Node]) -> None:
    node = _read_node(root / rel)
    if node is not None:
        out[rel] = node


def _file_names(root: Path, rel: str) -> Iterator[str]:
    """Paths of the files (anything not a directory) below ``root/rel``, without
    reading them; links are not followed."""
    pending = [rel]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(root / current) as entries:
                for child in entries:
                    name = f"{current}/{child.name}"
                    if child.is_dir(follow_symlinks=False):
                        pending.append(name)
                    else:
                        yield name
        except OSError:
            continue


def _walk(root: Path, rel: str, out: dict[str, _Node]) -> None:
    """``rel`` and, when it is a directory (not a link to one), everything below."""
    pending = [rel]
    while pending:
        current = pending.pop()
        node = _read_node(root / current)
        if node is None:
            continue
        out[current] = node
        if node.kind == "dir":
            try:
                children = os.listdir(root / current)
            except OSError:
                continue
            pending.extend(f"{current}/{child}" for child in children)


def _put(path: Path, node: _Node | None) -> None:
    """Make ``path`` what ``node`` says (None: nothing there)."""
    current = _read_node(path)
    if current is not None and node is not None and current.same_as(node):
        return
    if current is not None and (node is None or current.kind != "dir" or node.kind != "dir"):
        if current.kind == "dir":
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if node is None:
        return
    if node.kind == "dir":
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(node.mode)
    elif node.kind == "link" and node.data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(node.data, path)
    elif node.kind == "file" and node.data is not None:
        _write_file(path, node.data, node.mode)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Through a temporary file and ``os.replace``, as git writes its own files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.wtmesh-restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
