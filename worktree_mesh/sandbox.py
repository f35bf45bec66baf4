"""The sandbox of SPEC 10: a lane, setup or proof confined with bubblewrap.

A ``Confinement`` says what one process may see; ``Confinement.argv`` turns a command into
the bubblewrap command line that enforces it. The process gets a mount namespace in which
the whole file system is read-only, ``/tmp`` is private, the directories wtmesh keeps every
run's files and every worktree in are empty, and only its own paths are writable; and a PID
namespace whose init is the lane's first process's parent, so that when that process ends
the kernel kills everything it started (a ``setsid`` daemon included). Network is the
host's.

bubblewrap applies its mount options in the order given, each over what is mounted before
it, so the order is the policy (see ``bwrap_argv``).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import proc
from .errors import UsageError

SANDBOX_MODES = ("auto", "bwrap", "none")
DEFAULT_MODE = "auto"
PRIVATE_TMP = Path("/tmp")
INSTALL_HINT = "apt-get install bubblewrap"
# How long a killed sandbox may take to empty (processes stuck in the kernel, e.g. on a
# dead network mount, delay it) before wtmesh goes on without waiting.
INIT_EXIT_TIMEOUT_S = 30.0

# The directories each preset's CLI writes its configuration, sessions and caches to on
# every run (SPEC 10: "presets add their CLI's own"); made when missing. Directories only:
# a file bound alone cannot be replaced by a rename, which is how CLIs rewrite their
# config files; the claude preset moves claude's ~/.claude.json into ~/.claude for that
# (CLAUDE_CONFIG_DIR). The rest of what claude writes goes to the private /tmp.
PRESET_WRITABLE: Mapping[str, tuple[str, ...]] = {
    "claude": ("~/.claude",),
    "codex": ("~/.codex",),
    # gemini: nothing in HOME; the preset gives it a home of the lane's own (GEMINI_CLI_HOME
    # in the lane's work directory, writable already).
    "gemini": (),
    "opencode": ("~/.local/share/opencode", "~/.config/opencode", "~/.cache/opencode",
                 "~/.local/state/opencode"),
    # aider keeps everything under ~/.aider (analytics id, installs, caches: aider/*.py).
    "aider": ("~/.aider",),
}


@dataclass(frozen=True)
class Confinement:
    """What one sandboxed process may see: everything read-only but ``writable``; a
    private ``/tmp`` in which only ``readable`` paths are seen (read-only); ``hidden``
    paths replaced by empty directories; ``read_only`` paths read-only again inside a
    writable one."""

    cwd: Path
    writable: tuple[Path, ...]
    hidden: tuple[Path, ...]
    readable: tuple[Path, ...]
    read_only: tuple[Path, ...] = ()
    bwrap: str = "bwrap"

    def argv(self, command: Sequence[str], info_fd: int | None = None) -> list[str]:
        return bwrap_argv(command, self, info_fd)

    def attach(self, info_fd: int, bwrap_pid: int) -> NamespaceInit:
        """The init of the sandbox bubblewrap (``bwrap_pid``) just started, from what it
        wrote to ``info_fd`` (which this closes)."""
        return NamespaceInit.from_info(info_fd, bwrap_pid)


def bwrap_argv(command: Sequence[str], confinement: Confinement,
               info_fd: int | None = None) -> list[str]:
    """The bubblewrap command line running ``command`` (an argv) confined; with
    ``info_fd``, bubblewrap writes there the pid of the PID namespace's init.

    Order matters: bubblewrap mounts each option over the ones before it.
      1. ``/`` read-only, then a fresh ``/dev`` and ``/proc`` (of the new PID namespace);
      2. an empty ``/tmp``: the host's is not seen, and what the process writes there is
         gone with it;
      3. ``readable`` paths bound read-only again, since what the process needs may live
         under ``/tmp`` too (a test's repository, a CI clone's virtualenv, HOME), and so
         are the absolute paths its command names (a script given as ``/tmp/x/lane.py``);
      4. ``hidden``, ``read_only`` and ``writable`` together, parents before children,
         so the deeper path wins: a unit's worktree is writable inside the hidden
         worktrees root, inside a writable directory around the repository the
         repository stays read-only, and inside a writable ``{repo}`` its git dir stays
         read-only and the state directory hidden. At the same path, writable wins;
      5. each hidden path made read-only, so that what is written there fails rather
         than vanishing with the process (its writable binds stay writable).
    bubblewrap makes the directories a mount needs inside the tmpfs mounts (the parents of
    a readable path under ``/tmp``, a worktree inside a hidden directory); sources are
    always the host's paths, so a hidden directory still provides what is bound from it.
    """
    argv = [confinement.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", str(PRIVATE_TMP)]
    readable = [*confinement.readable, *named_paths(command)]
    for path in _outermost(_exposable(readable)):
        argv += ["--ro-bind", str(path), str(path)]
    layered = [(path, 0) for path in confinement.hidden] + [
        (path, 1) for path in confinement.read_only] + [
        (path, 2) for path in confinement.writable]
    for path, kind in sorted(dict.fromkeys(layered), key=lambda pk: (
            len(pk[0].parts), pk[1], str(pk[0]))):
        if kind == 0:
            argv += ["--tmpfs", str(path)]
        else:
            argv += ["--ro-bind" if kind == 1 else "--bind", str(path), str(path)]
    for path in confinement.hidden:
        # Last: the mount points of the binds inside were made in it. Not recursive,
        # so those binds stay writable.
        argv += ["--remount-ro", str(path)]
    argv += [
        "--unshare-pid",  # its processes end with its first one (init of the namespace)
        "--die-with-parent",  # and with wtmesh, should wtmesh be killed
        "--new-session",  # no TIOCSTI into a terminal wtmesh was started from
        # Started by root, bubblewrap leaves the process every capability: it could
        # unmount what hides the state directory or remount the file system writable.
        "--cap-drop", "ALL",
        "--setenv", "TMPDIR", str(PRIVATE_TMP),
        # A lane may ask whether it is confined (codex's preset relies on it when codex's
        # own sandbox cannot nest in this one).
        "--setenv", "WTMESH_SANDBOX", "bwrap",
        "--chdir", str(confinement.cwd),
        *(["--info-fd", str(info_fd)] if info_fd is not None else []),
        "--", *command,
    ]
    return argv


class NamespaceInit:
    """The init of a running sandbox's PID namespace: when it goes, the kernel kills
    every process left in the namespace and waits for them, so once it has gone nothing
    of the sandbox runs.

    bubblewrap puts the init in a session of its own (``--new-session``), out of reach
    of a signal to the lane's process group. When the lane's first process ends, the
    init goes by itself; when wtmesh kills a lane (a timeout, an interrupt), killing
    bubblewrap sends the init SIGKILL too (``--die-with-parent``) but does not wait for
    its namespace to empty: ``end`` does, so that a retry never starts beside what is
    left of the lane it replaces. A pidfd names the init, never a pid number that could
    have been reused."""

    def __init__(self, pidfd: int | None) -> None:
        self._pidfd = pidfd

    @classmethod
    def from_info(cls, info_fd: int, bwrap_pid: int) -> NamespaceInit:
        with os.fdopen(info_fd, "rb") as info:  # bubblewrap closes it once written
            data = info.read()
        try:
            pid = int(json.loads(data)["child-pid"])
            pidfd = os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError, AttributeError):
            # bubblewrap failed before starting it, it has gone, or no pidfds here
            # (Linux < 5.3): then its end is the kernel's alone.
            return cls(None)
        if _parent_of(pid) != bwrap_pid:  # gone, and the number taken by another
            os.close(pidfd)
            return cls(None)
        return cls(pidfd)

    def end(self, timeout_s: float = INIT_EXIT_TIMEOUT_S) -> None:
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it has gone already: its lane ended by itself
        try:
            select.select([self._pidfd], [], [], timeout_s)
        finally:
            os.close(self._pidfd)
            self._pidfd = None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def named_paths(command: Sequence[str]) -> list[Path]:
    """The absolute paths a command names: its argv words, and the words of a shell
    command given to ``sh -c``. The plan wrote them, not the lane."""
    words: list[str] = []
    for arg in command:
        try:
            words += shlex.split(arg) if any(c.isspace() for c in arg) else [arg]
        except ValueError:  # unbalanced quotes: not a command line
            words.append(arg)
    return [Path(os.path.normpath(word)) for word in words if word.startswith("/")]


def _parents_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(dict.fromkeys(paths), key=lambda p: (len(p.parts), str(p)))


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths no other of them contains, parents first: binding a directory shows what
    is in it, and binding again inside a read-only bind would need a mount point there
    (``Can't create file``, for a virtualenv's ``bin/python`` symlink)."""
    kept: list[Path] = []
    for path in _parents_first(paths):
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


def _exposable(paths: Iterable[Path]) -> list[Path]:
    """Readable paths worth binding again: those that exist and lie inside the private
    ``/tmp`` (the rest are seen through ``/`` already). ``/tmp`` itself never: binding it
    would show the host's ``/tmp`` whole (a plan file kept directly in ``/tmp``)."""
    return [p for p in paths if p.is_relative_to(PRIVATE_TMP) and p != PRIVATE_TMP
            and p.exists()]


# -- what a lane, setup or proof may see -------------------------------------------------


def confinement(*, worktree: Path, unit_dir: Path | None, hidden: Iterable[Path],
                repo: Path, common_dir: Path, plan_dir: Path,
                extra_writable: Iterable[Path] = (),
                env: Mapping[str, str] | None = None, bwrap: str = "bwrap") -> Confinement:
    """What a process working in ``worktree`` may see.

    Writable: the worktree (its lanes' own ``.git`` included), the unit's own run-file
    directory (None for a proof), and ``extra_writable``. Hidden: ``hidden`` (the
    state directory with every run's files, the directories of every worktree).
    Read-only even inside a writable path: the repository's working tree (a writable
    path at it or inside it opens it: the deeper path wins) and its git dir (``for_run``
    refuses a writable path inside that). Readable: the repository, its common dir, the
    plan's directory, this Python and wtmesh itself, every PATH entry and HOME of
    ``env`` (default: ours)."""
    env = os.environ if env is None else env
    writable = [worktree, *([unit_dir] if unit_dir else []), *extra_writable]
    home = env.get("HOME")
    readable = [repo, common_dir, plan_dir, Path(sys.prefix), Path(sys.base_prefix),
                Path(__file__).parent, *(Path(p) for p in env.get("PATH", "").split(os.pathsep)
                                         if os.path.isabs(p)),
                *([Path(home)] if home and os.path.isabs(home) else [])]
    opened = tuple(_resolved(p) for p in writable if _ensure_dir(p))
    guarded = dict.fromkeys(_resolved(p) for p in (repo, *_git_dirs(repo, common_dir)))
    return Confinement(
        cwd=worktree,
        writable=opened,
        hidden=tuple(_resolved(p) for p in hidden if p.is_dir()),
        readable=tuple(_resolved(p) for p in readable),
        read_only=tuple(p for p in guarded if any(w in p.parents for w in opened)),
        bwrap=bwrap,
    )


def _git_dirs(repo: Path, common_dir: Path) -> list[Path]:
    """The repository's git directory, and its ``.git`` (a file, in a linked worktree)."""
    dot_git = repo / ".git"
    return [common_dir, *([dot_git] if dot_git.exists() else [])]


def _resolved(path: Path) -> Path:
    return path.resolve()


def _ensure_dir(path: Path) -> bool:
    """A writable path that does not exist is made (as a directory) when wtmesh may write
    where it would go, so that a CLI finds its config directory; else it is left out.
    True when the path is there to bind."""
    if path.exists():
        return True
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


def expand_writable(entries: Iterable[str], *, repo: Path, plan_dir: Path,
                    home: str | None = None) -> tuple[Path, ...]:
    """The plan's ``sandbox_writable`` as paths: ``{repo}``, ``{plan_dir}`` and a leading
    ``~`` expanded (the plan checks that each is absolute once expanded)."""
    home = home if home is not None else os.environ.get("HOME", "")
    out = []
    for entry in entries:
        text = entry.replace("{repo}", str(repo)).replace("{plan_dir}", str(plan_dir))
        if text == "~" or text.startswith("~/"):
            text = home + text[1:]
        out.append(Path(text))
    return tuple(out)


def preset_writable(preset: str | None, home: str | None) -> tuple[Path, ...]:
    if preset is None or not home:
        return ()
    return tuple(Path(home + entry[1:]) for entry in PRESET_WRITABLE.get(preset, ()))


@dataclass(frozen=True)
class Sandbox:
    """The run's sandbox: bubblewrap, and the paths every confinement of the run shares."""

    bwrap: str
    hidden: tuple[Path, ...]  # the state directory, the directories of the worktrees
    repo: Path
    common_dir: Path
    plan_dir: Path
    extra_writable: tuple[Path, ...] = ()

    def confine(self, worktree: Path, *, env: Mapping[str, str], unit_dir: Path | None = None,
                preset: str | None = None) -> Confinement:
        extra = (*self.extra_writable, *preset_writable(preset, env.get("HOME")))
        return confinement(worktree=worktree, unit_dir=unit_dir, hidden=self.hidden,
                           repo=self.repo,
                           common_dir=self.common_dir, plan_dir=self.plan_dir,
                           extra_writable=extra, env=env,
                           bwrap=self.bwrap)


# -- does it work here -------------------------------------------------------------------


def probe() -> str | None:
    """None when bubblewrap can confine a process here; else why not, in a few words.
    Asked once per process (per bwrap found on PATH)."""
    return _probe(shutil.which("bwrap"))


@cache
def _probe(bwrap: str | None) -> str | None:
    if bwrap is None:
        return f"bwrap not found ({INSTALL_HINT})"
    trial = Confinement(cwd=Path("/"), writable=(), hidden=(), readable=(), bwrap=bwrap)
    try:
        done = proc.run(trial.argv(["true"]), check=False)
    except OSError as exc:
        return f"bwrap cannot be started: {exc.strerror or exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    why = said[-1] if said else f"exit {done.returncode}"
    if "namespace" in why.lower():
        return f"bwrap cannot make namespaces here (user namespaces refused?): {why}"
    return f"bwrap does not work here: {why}"


@dataclass(frozen=True)
class SandboxChoice:
    """What a run asked for (``mode``) and got: bubblewrap (``bwrap`` set) or nothing,
    and then why not."""

    mode: str
    bwrap: str | None
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        return describe(self.as_record())

    def as_record(self) -> dict[str, str | bool | None]:
        return {"mode": self.mode, "active": self.active, "reason": self.reason}


def describe(record: Mapping[str, object]) -> str:
    """What a run's first line says of its sandbox (``SandboxChoice.as_record``)."""
    if record.get("active"):
        return "lanes sandboxed (bwrap)"
    return f"lanes NOT sandboxed: {record.get('reason')}"


class SandboxUnavailable(Exception):
    """``--sandbox bwrap`` where bubblewrap cannot run."""


def choose(mode: str) -> SandboxChoice:
    """``none``: no sandbox; ``bwrap``: bubblewrap or SandboxUnavailable; ``auto``:
    bubblewrap where it works, else none, saying why."""
    if mode == "none":
        return SandboxChoice(mode, None, "sandbox set to none")
    reason = probe()
    if reason is None:
        return SandboxChoice(mode, shutil.which("bwrap"))
    if mode == "bwrap":
        raise SandboxUnavailable(f"--sandbox bwrap: {reason}")
    return SandboxChoice(mode, None, reason)


def for_run(choice: SandboxChoice, *, state_dir: Path, worktrees_root: Path,
            worktrees_home: Path, repo: Path, common_dir: Path, plan_dir: Path,
            writable: Sequence[str]) -> Sandbox | None:
    """The run's sandbox, or None when its lanes run unconfined. Hidden: the state
    directory, the directory of this run's worktrees (``worktrees_root``, wherever the
    run recorded it), and the home of every repository's worktrees (other repositories'
    runs), unless that home holds what lanes must read (``WTMESH_WORKTREES`` set to a
    directory around the repository). A ``sandbox_writable`` path inside a hidden one
    or the git dir is a usage error: no lane may write there."""
    if choice.bwrap is None:
        return None
    needed = (repo, common_dir, plan_dir)
    shared = not any(p.resolve().is_relative_to(worktrees_home.resolve()) for p in needed)
    hidden = (state_dir, worktrees_root, *([worktrees_home] if shared else []))
    extra = expand_writable(writable, repo=repo, plan_dir=plan_dir)
    closed = [(state_dir, "wtmesh's state directory"),
              *((where, "the worktrees' directory") for where in hidden[1:]),
              *((git_dir, "the repository's git directory")
                for git_dir in _git_dirs(repo, common_dir))]
    for entry, path in zip(writable, extra, strict=True):
        inside = next((what for where, what in closed
                       if path.resolve().is_relative_to(where.resolve())), None)
        if inside is not None:
            raise UsageError(f"sandbox_writable: {entry!r} is inside {inside}, which no "
                             "lane may write")
    return Sandbox(choice.bwrap, hidden=hidden,
                   repo=repo, common_dir=common_dir, plan_dir=plan_dir, extra_writable=extra)
