"""Run a command so that every process it starts ends with it, without a sandbox.

``python -I -S reaper.py COMMAND [ARG...]``: this process becomes a child subreaper
(Linux ``PR_SET_CHILD_SUBREAPER``), so a descendant whose parent dies — a ``setsid``
daemon, a ``nohup ... &`` — is re-parented to it instead of to init. It runs COMMAND,
and when COMMAND ends (or this process is told to stop), it kills every process left
beneath it, again and again until none is left, and exits with COMMAND's status (128 +
the signal for a command killed by one, as a shell reports it).

An unsandboxed lane uses it so that no daemon of the lane's outlives it and writes into
later units' work; under bubblewrap the PID namespace does the same. It imports nothing
of wtmesh (``-S``: not even site-packages), so it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def _children() -> list[int]:
    """Our direct children, from /proc (every thread's ``children`` list, or a scan of
    every process's parent where the kernel has no such list)."""
    me = os.getpid()
    found: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as fh:
                found.update(int(pid) for pid in fh.read().split())
        return sorted(found)
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return sorted(found)


def _reap_all() -> None:
    """Kill and reap everything beneath us until nothing is left: killing a child
    re-parents its own children to us, so this repeats until a pass finds none."""
    while True:
        children = _children()
        if not children:
            break
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _pid in children:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    while True:  # zombies of processes that ended on their own
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: reaper.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    _become_subreaper()
    try:
        command = os.fork()
    except OSError as exc:
        print(f"reaper: cannot fork: {exc}", file=sys.stderr)
        return 127
    if command == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"{argv[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(127)

    def stop(signum: int, _frame: object) -> None:
        try:
            os.kill(command, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    while True:
        try:
            _pid, status = os.waitpid(command, 0)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    _reap_all()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
