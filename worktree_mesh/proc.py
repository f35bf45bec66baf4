"""The one subprocess helper.

``run`` is for short commands whose output we read (git). ``run_logged`` is for the
long ones whose output goes to log files (lanes, setup, proofs): each runs in its own
process group with stdin closed, and a timeout kills the whole group. Their output
reaches the logs through pipes, so that a log keeps only its first and last part
(``LOG_HEAD_BYTES``, ``LOG_TAIL_BYTES``) however much a command prints.
"""

from __future__ import annotations

import os
import select
import selectors
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
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # sandbox uses this module to probe bubblewrap
    from .sandbox import Confinement, NamespaceInit

Command = str | Sequence[str]

# Seconds a timed-out process group gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 2.0

# How much nicer than wtmesh itself the commands of a LowPriorityRunner run.
LOW_PRIORITY_NICE = 10

# What a log keeps of one command's output: its start (what it was asked, how it began)
# and its end (where the error usually is). An agent in a loop printed a 200 MB log;
# what lies between these is dropped, and a line in the log says how much.
LOG_HEAD_BYTES = 4 * 1024 * 1024
LOG_TAIL_BYTES = 4 * 1024 * 1024
_PIPE_READ_BYTES = 64 * 1024


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
    stdout: BinaryIO | None = None,
) -> Completed:
    """Run ``argv`` to the end. Its output is captured, or with ``stdout`` written to that
    open file, for output that may be larger than is worth holding in memory (a diff)."""
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        check=False,
    )
    result = Completed(tuple(argv), proc.returncode, proc.stdout or b"", proc.stderr)
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
                 check: bool = True, stdout: BinaryIO | None = None) -> Completed:
        return self._pool.submit(run, argv, cwd=cwd, env=env, input=input,
                                 check=check, stdout=stdout).result()

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


class CappedLog:
    """A log file that keeps the first ``head`` and the last ``tail`` bytes written to it
    (after what it already held), and between them one line saying how many bytes were
    dropped. The file is always readable as it is: past the head, output is appended,
    and once more than twice ``tail`` has gathered there the file is cut back to the head,
    the line and the last ``tail`` bytes, so it never holds more than about
    ``head + 2 * tail``; closing it cuts the rest down to ``tail``."""

    def __init__(self, path: Path, head: int = LOG_HEAD_BYTES,
                 tail: int = LOG_TAIL_BYTES) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._head_left = head
        self._head, self._tail = head, tail
        self._cut = os.fstat(self._fd).st_size + head  # where the head ends
        self._kept_from = self._cut  # where the kept tail starts (after the line)
        self._tail_bytes = 0  # bytes from there to the end
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if self._head_left:
            part = data[:self._head_left]
            os.write(self._fd, part)
            self._head_left -= len(part)
            data = data[len(part):]
        if not data:
            return
        os.write(self._fd, data)
        self._tail_bytes += len(data)
        if self._tail_bytes > 2 * self._tail:
            self._drop_middle()

    def _drop_middle(self) -> None:
        keep = os.pread(self._fd, self._tail, self._kept_from + self._tail_bytes - self._tail)
        self.dropped += self._tail_bytes - len(keep)
        line = (f"\n[wtmesh: {self.dropped} bytes of output dropped here; a log keeps the "
                f"first {self._head} and the last {self._tail} bytes]\n").encode()
        os.ftruncate(self._fd, self._cut)
        os.write(self._fd, line + keep)  # O_APPEND: at the cut
        self._kept_from, self._tail_bytes = self._cut + len(line), len(keep)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._tail_bytes > self._tail:
                self._drop_middle()
        finally:
            os.close(self._fd)
            self._fd = -1


class _LogPump:
    """Copies a command's output from its pipes into capped logs, on a thread of its own,
    so a command never blocks on a full pipe, whatever is dropped of what it prints."""

    def __init__(self, sources: dict[int, CappedLog]) -> None:
        self._sources = sources
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, name="log-pump", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        selector = selectors.DefaultSelector()
        for fd in (*self._sources, self._wake_r):
            selector.register(fd, selectors.EVENT_READ)
        open_fds = set(self._sources)
        try:
            while open_fds:
                ready = [key.fd for key, _ in selector.select()]
                for fd in ready:
                    if fd == self._wake_r:
                        continue
                    data = os.read(fd, _PIPE_READ_BYTES)
                    if data:
                        self._sources[fd].write(data)
                    else:  # every writer has closed it
                        selector.unregister(fd)
                        open_fds.discard(fd)
                if self._wake_r in ready:
                    self._drain(open_fds)
                    break
        finally:
            selector.close()
            for fd in self._sources:
                os.close(fd)
            for log in set(self._sources.values()):
                log.close()

    def _drain(self, open_fds: set[int]) -> None:
        """The command's group is gone: take what its processes wrote, and no more. A
        process that left the group (``setsid``) may still hold a pipe open; what it
        writes after this finds the pipe closed (EPIPE), and is not waited for."""
        for fd in open_fds:
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, _PIPE_READ_BYTES):
                    self._sources[fd].write(data)
            except BlockingIOError:
                pass

    def finish(self) -> None:
        os.write(self._wake_w, b"\0")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _log_pipes(stdout_path: Path, stderr_path: Path) -> tuple[int, int, dict[int, CappedLog]]:
    """Write ends for a command's stdout and stderr, and the read ends with the capped
    log each feeds. One log named for both streams gets one pipe, so their lines stay in
    the order they were written."""
    out_log = CappedLog(stdout_path)
    out_r, out_w = os.pipe()
    if stderr_path == stdout_path:
        return out_w, out_w, {out_r: out_log}
    err_r, err_w = os.pipe()
    return out_w, err_w, {out_r: out_log, err_r: CappedLog(stderr_path)}


def _close_pipes(logs: dict[int, CappedLog]) -> None:
    for fd, log in logs.items():
        os.close(fd)
        log.close()
def _spawn(argv: list[str], *, cwd: str | Path, env: Mapping[str, str], out: int, err: int,
           confinement: Confinement | None
           ) -> tuple[subprocess.Popen[bytes], NamespaceInit | None]:
    """Start ``argv`` in a new session, confined when asked: then also the init of its
    sandbox's PID namespace, known from what bubblewrap writes to a pipe."""
    if confinement is None:
        # Unconfined, the reaper ends what the command leaves behind; in the sandbox its
        # PID namespace does.
        return subprocess.Popen(reaped(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True), None
    info_read, info_write = os.pipe()
    try:
        proc = subprocess.Popen(confinement.argv(argv, info_fd=info_write), cwd=cwd,
                                env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True, pass_fds=(info_write,))
    except OSError:
        os.close(info_read)
        raise
    finally:
        os.close(info_write)
    return proc, confinement.attach(info_read, proc.pid)


def run_logged(
    command: Command,
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float | None,
    on_spawn: Callable[[int], None] | None = None,
    confinement: Confinement | None = None,
) -> LoggedResult:
    """Run ``command`` in its own process group, stdin closed, output to log files;
    with ``confinement``, inside the bubblewrap sandbox it describes.

    On timeout the whole group gets SIGTERM, then SIGKILL after a grace period. When the
    command ends by itself, anything it left running in its group is killed too, and it
    runs under the reaper (``reaper.py``), which kills what it left running in other
    groups and sessions (a ``setsid`` daemon): no stray process keeps writing to a
    worktree after its lane is over. Its output goes through pipes into ``CappedLog``
    files; once the group is gone the pipes are closed, so no process that escaped it
    keeps writing to the logs either.
    """
    argv = to_argv(command)
    started = time.monotonic()
    if RUNNING_GROUPS.stopping.is_set():
        return LoggedResult(None, False, "interrupted", 0.0, None)
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    missing = _unstartable(argv[0], cwd, env)
    if missing is not None:
        start_error: str | None = f"cannot start {argv[0]!r}: {missing}"
        with open(stderr_path, "ab") as err:
            err.write(f"wtmesh: {start_error}\n".encode())
        return LoggedResult(None, False, start_error, time.monotonic() - started, None)
    out_w, err_w, logs = _log_pipes(stdout_path, stderr_path)
    start_error = None
    try:
        proc, namespace = _spawn(argv, cwd=cwd, env=env, out=out_w, err=err_w,
                                 confinement=confinement)
    except OSError as exc:
        start_error = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
        os.write(err_w, f"wtmesh: {start_error}\n".encode())
    except BaseException:
        _close_pipes(logs)
        raise
    finally:
        # With ours closed, a pipe ends once the command's processes have closed theirs.
        for fd in {out_w, err_w}:
            os.close(fd)
    pump = _LogPump(logs)
    if start_error is not None:
        pump.finish()
        return LoggedResult(None, False, start_error, time.monotonic() - started, None)
    RUNNING_GROUPS.add(proc.pid)
    if RUNNING_GROUPS.stopping.is_set():  # stopped between our check and the spawn
        kill_group(proc.pid, signal.SIGKILL)
    timed_out = False
    try:
        if on_spawn is not None:
            on_spawn(proc.pid)
        if not _wait_exit_unreaped(proc, timeout_s):
            timed_out = True
            kill_group(proc.pid, signal.SIGTERM)
            if not _wait_exit_unreaped(proc, KILL_GRACE_S):
                kill_group(proc.pid, signal.SIGKILL)
        # The leader has exited but is not reaped yet: its pid still names our group.
        kill_group(proc.pid, signal.SIGKILL)
        if namespace is not None:
            namespace.end()
        returncode = proc.wait()
    finally:
        RUNNING_GROUPS.discard(proc.pid)
        pump.finish()
    duration = time.monotonic() - started
    if timed_out:
        return LoggedResult(None, True, None, duration, proc.pid)
    # /bin/sh reports "command not found" as 127 and "not executable" as 126.
    if isinstance(command, str) and returncode in (126, 127):
        return LoggedResult(returncode, False, f"command could not be run (exit {returncode})",
                            duration, proc.pid)
    return LoggedResult(returncode, False, None, duration, proc.pid)
