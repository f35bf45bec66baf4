"""Where a repository's wtmesh state lives: ``$(git rev-parse --git-common-dir)/wtmesh/``.

The common dir is the same from every linked worktree, so the lock, the ledgers and
wtmesh's private git dirs are shared by every run on the repository, whichever worktree
started it. The worktrees themselves live outside every ``.git`` directory (agent CLIs
refuse to edit files there: Claude Code calls them sensitive) and outside the user's
working tree: ``$WTMESH_WORKTREES``, else ``$XDG_DATA_HOME/wtmesh/worktrees``, else
``~/.local/share/wtmesh/worktrees``, one folder per repository. Each run records where
its worktrees are in its run directory, so ``gc`` and ``--resume`` find them through the
state directory whatever the environment says later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import EnvironmentRefused, UsageError


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def safe_name(unit_id: str) -> str:
    """A unit's directory name, one per id, even where the file system ignores case
    (macOS, Windows): unit ids are ``[A-Za-z0-9._-]+``, so ``A`` and ``a`` are two ids;
    each capital is spelled ``^`` and its small letter. An id of dots alone (``.``,
    ``..``) names no directory of its own; it is spelled ``+`` and its hex bytes, as in
    ``unit_ref_prefix``. Neither ``^`` nor ``+`` occurs in an id, so no spelling is
    another id's (prefixing ``_`` made ``..`` and ``_..`` share one)."""
    if not unit_id.strip("."):
        return "+" + unit_id.encode().hex()
    return re.sub("[A-Z]", lambda capital: "^" + capital[0].lower(), unit_id)


def unit_ref_prefix(run_id: str, unit_id: str) -> str:
    """``refs/wtmesh/<run-id>/units/<id>``, with the id made a valid ref component.

    Valid unit ids such as ``a..b``, ``x.lock`` or ``.h`` are not valid in a ref name
    (git-check-ref-format), and ids apart only by case are one loose ref where the file
    system ignores case; such an id is spelled ``+`` and its hex bytes instead. ``+``
    never occurs in a unit id, so the spelling cannot collide with another id.
    """
    return f"refs/wtmesh/{run_id}/units/{ref_component(unit_id)}"


def ref_component(name: str) -> str:
    """A ``[A-Za-z0-9._-]+`` name as one ref component (see ``unit_ref_prefix``)."""
    refusable = (name.startswith(".") or name.endswith((".", ".lock"))
                 or ".." in name or name != name.lower())
    return "+" + name.encode().hex() if refusable else name


def candidate_ref_prefix(run_id: str, unit_id: str, candidate: str) -> str:
    """Where a consensus unit's candidate keeps its work: its own ``coder`` and
    ``result`` refs, as a unit has."""
    return f"{unit_ref_prefix(run_id, unit_id)}/candidates/{ref_component(candidate)}"


def scratch_ref(run_id: str) -> str:
    """patch_first: the chain of integrated commits the series is made from."""
    return f"refs/wtmesh/{run_id}/integrated"


def stranded_ref(run_id: str) -> str:
    """commit_first: where units land once the user's worktree could not follow (a
    branch, so the user sees it; ``gc`` never removes it)."""
    return f"refs/heads/wtmesh/{run_id}/integrated"


def worktrees_home() -> Path:
    """Where every repository's wtmesh worktrees live (SPEC 3.2)."""
    override = os.environ.get("WTMESH_WORKTREES")
    if override:
        return Path(override).expanduser().absolute()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data) if data and Path(data).is_absolute() else Path.home() / ".local/share"
    return base / "wtmesh" / "worktrees"


def repo_key(common_dir: Path) -> str:
    """One folder name per repository: readable, and unique by the git dir's path."""
    resolved = common_dir.resolve()
    name = resolved.parent.name if resolved.name == ".git" else resolved.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name.removesuffix(".git")).strip(".") or "repo"
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:8]
    return f"{name}-{digest}"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def for_common_dir(cls, common_dir: Path) -> StateDir:
        return cls(common_dir / "wtmesh")

    def check_usable(self) -> None:
        """Refuse, in one line, a state directory no run can keep its state in, before
        anything is written there (or, when it does not exist yet, anything is made).

        A symbolic link is refused, dangling or not: a run would make the directory it
        names, and its worktrees registered through the link are ones ``gc``, which
        finds them by their path under this directory, never removes."""
        root = self.root
        if root.is_symlink():
            raise EnvironmentRefused(f"{root} is a symbolic link; wtmesh keeps its state "
                                     "only in a directory of its own (remove the link)")
        if root.exists() and not root.is_dir():
            raise EnvironmentRefused(f"{root} is not a directory; wtmesh keeps its state "
                                     "there (move it away)")
        where = root if root.exists() else root.parent
        why = _not_writable(where)
        if why is not None:
            raise EnvironmentRefused(f"cannot write wtmesh's state in {where}: {why}")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def integrator_lock(self) -> Path:
        return self.root / "integrator.lock"

    def run(self, run_id: str) -> RunDir:
        path = self.runs / run_id
        try:
            recorded = Path(os.fsdecode((path / WORKTREES_RECORD).read_bytes().strip()))
        except OSError:
            recorded = None
        if recorded is None or recorded.name != run_id or not recorded.is_absolute():
            recorded = worktrees_home() / repo_key(self.root.parent) / run_id
        return RunDir(path, recorded, run_id)

    def legacy_worktrees(self, run_id: str) -> Path:
        """Where runs of earlier versions kept their worktrees (registered with git)."""
        return self.root / "worktrees" / run_id

    def existing_run(self, run_id: str) -> RunDir:
        """A run named on the command line: a plain name (never a path that climbs out
        of the state directory) with a ledger."""
        plain = re.fullmatch(r"[A-Za-z0-9._-]+", run_id) and run_id.strip(".")
        if not plain or not self.run(run_id).ledger.is_file():
            raise UsageError(f"no run {run_id!r} in this repository")
        return self.run(run_id)

    def run_ids(self) -> list[str]:
        if not self.runs.is_dir():
            return []
        return sorted(p.name for p in self.runs.iterdir() if (p / "ledger.jsonl").exists())


# The file in a run's directory that says where its worktrees are.
WORKTREES_RECORD = "worktrees.path"


@dataclass(frozen=True)
class RunDir:
    path: Path
    worktrees: Path  # outside the state directory (see the module's docstring)
    run_id: str

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.jsonl"

    @property
    def plan_copy(self) -> Path:
        return self.path / "plan.json"

    @property
    def default_patch_dir(self) -> Path:
        return self.path / "patches"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    def unit_dir(self, unit_id: str) -> Path:
        return self.path / "units" / safe_name(unit_id)

    def create(self) -> None:
        """The run's directories. The worktrees' first: they lie where the environment
        says (``WTMESH_WORKTREES``), which may name a file or a read-only mount, and a
        run refused there leaves nothing of itself in the state directory."""
        try:
            self.worktrees.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentRefused(
                f"cannot make the run's worktrees directory {self.worktrees}: "
                f"{exc.strerror or exc} (WTMESH_WORKTREES chooses where they go)") from None
        for path in (self.path, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / WORKTREES_RECORD, os.fsencode(self.worktrees) + b"\n")


def _not_writable(directory: Path) -> str | None:
    """Why files cannot be made in ``directory``, or None. access(2) answers for root
    too where it matters: a read-only mount (EROFS) or an immutable directory (EPERM)."""
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def write_atomic(path: Path, data: bytes) -> None:
    """Whole-file writes go through a temporary file and ``os.replace``."""
    with atomic_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through, in pieces: it takes ``path``'s place, synced, only
    once the block ends without an exception; until then ``path`` is as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave the half of a write behind
        raise
