"""The one subprocess helper.

``run`` is for short commands whose output we read (git). ``run_logged`` is for the
long ones whose output goes to log files (lanes, setup, proofs): each runs in its own
process group with stdin closed, and a timeout kills the whole group.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

Command = str | Sequence[str]

# Seconds a timed-out process group gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 2.0

# How much nicer than wtmesh itself the commands of a LowPriorityRunner run.
LOW_PRIORITY_NICE = 10


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")


class CommandError(Exception):
    """A command we ran exited non-zero: shows the command, its code and its output."""

    def __init__(self, result: Completed) -> None:
        self.result = result
        err = result.stderr.decode("utf-8", "replace").strip()
        out = result.stdout.decode("utf-8", "replace").strip()
        detail = err or out
        first = detail.splitlines()[-1] if detail else "(no output)"
        super().__init__(f"`{' '.join(result.argv)}` exited {result.returncode}: {first}")


def run(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> Completed:
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    result = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(result)
    return result


Runner = Callable[..., Completed]  # ``run``'s signature


class LowPriorityRunner:
    """``run``, on threads of a lower CPU priority, so that the commands started there
    (which inherit it) give way to everyone else's when the CPU is short, and run as
    fast as ever when it is not. Linux keeps a nice value per thread; elsewhere the
    commands run at the caller's priority. ``workers`` bounds how many run at once."""

    def __init__(self, workers: int, nice: int = LOW_PRIORITY_NICE) -> None:
        self._nice = nice
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="low-priority",
                                        initializer=self._lower_priority)

    def _lower_priority(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + self._nice)
        except OSError:
            pass  # a sandbox that forbids it: the commands run at normal priority

    def __call__(self, argv: Sequence[str], *, cwd: str | Path | None = None,
                 env: Mapping[str, str] | None = None, input: bytes | None = None,
                 check: bool = True) -> Completed:
        return self._pool.submit(run, argv, cwd=cwd, env=env, input=input,
                                 check=check).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class LoggedResult:
    """How a logged command ended. ``returncode`` is None when it timed out or never started."""

    returncode: int | None
    timed_out: bool
    start_error: str | None
    duration_s: float
    pid: int | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class _GroupRegistry:
    """Process groups of running lanes and proofs, so an interrupt can stop them all.
    Once stopped, no new command starts: a lane killed by the interrupt must not be
    retried, nor a fixer started after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self.stopping = threading.Event()

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            kill_group(pgid, signal.SIGKILL)


RUNNING_GROUPS = _GroupRegistry()


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a whole process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def to_argv(command: Command) -> list[str]:
    """A string runs through ``/bin/sh -c``; a list runs as argv."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return list(command)


REAPER = Path(__file__).with_name("reaper.py")


def reaped(argv: Sequence[str]) -> list[str]:
    """``argv`` run by the reaper, which ends everything it starts with it. ``-I -S``:
    the reaper needs nothing of the environment or of site-packages."""
    return [sys.executable, "-I", "-S", str(REAPER), *argv]


def _unstartable(program: str, cwd: str | Path, env: Mapping[str, str]) -> str | None:
    """Why ``program`` could not be started, as ``execvp`` would say; None if it can.
    Asked before the reaper runs it, so a missing program is still told apart from a
    command that fails."""
    if os.sep in program:
        path: str | None = os.path.join(cwd, program)
    else:
        path = shutil.which(program, path=env.get("PATH", os.defpath))
        if path is None:
            return "No such file or directory"
    assert path is not None
    if not os.path.exists(path):
        return "No such file or directory"
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return "Permission denied"
    return None


def _wait_exit_unreaped(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait until ``proc`` exits without reaping it, so its pid (the group id) stays ours
    while we kill what it left behind. Returns False on timeout."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(pidfd)


def run_logged(
    command: Command,
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float | None,
    on_spawn: Callable[[int], None] | None = None,
) -> LoggedResult:
    """Run ``command`` in its own process group, stdin closed, output to log files.

    On timeout the whole group gets SIGTERM, then SIGKILL after a grace period. When the
    command ends by itself, anything it left running in its group is killed too, and it
    runs under the reaper (``reaper.py``), which kills what it left running in other
    groups and sessions (a ``setsid`` daemon): no stray process keeps writing to a
    worktree after its lane is over.
    """
    argv = to_argv(command)
    started = time.monotonic()
    if RUNNING_GROUPS.stopping.is_set():
        return LoggedResult(None, False, "interrupted", 0.0, None)
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        missing = _unstartable(argv[0], cwd, env)
        if missing is not None:
            err.write(f"wtmesh: cannot start {argv[0]!r}: {missing}\n".encode())
            return LoggedResult(None, False, f"cannot start {argv[0]!r}: {missing}",
                                time.monotonic() - started, None)
        try:
            proc = subprocess.Popen(
                reaped(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            err.write(f"wtmesh: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            return LoggedResult(None, False, f"cannot start {argv[0]!r}: {exc.strerror or exc}",
                                time.monotonic() - started, None)
    RUNNING_GROUPS.add(proc.pid)
    if RUNNING_GROUPS.stopping.is_set():  # stopped between our check and the spawn
        kill_group(proc.pid, signal.SIGKILL)
    if on_spawn is not None:
        on_spawn(proc.pid)
    timed_out = False
    try:
        if not _wait_exit_unreaped(proc, timeout_s):
            timed_out = True
            kill_group(proc.pid, signal.SIGTERM)
            if not _wait_exit_unreaped(proc, KILL_GRACE_S):
                kill_group(proc.pid, signal.SIGKILL)
        # The leader has exited but is not reaped yet: its pid still names our group.
        kill_group(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    finally:
        RUNNING_GROUPS.discard(proc.pid)
    duration = time.monotonic() - started
    if timed_out:
        return LoggedResult(None, True, None, duration, proc.pid)
    # /bin/sh reports "command not found" as 127 and "not executable" as 126.
    if isinstance(command, str) and returncode in (126, 127):
        return LoggedResult(returncode, False, f"command could not be run (exit {returncode})",
                            duration, proc.pid)
    return LoggedResult(returncode, False, None, duration, proc.pid)
