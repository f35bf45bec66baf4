"""The worktree pool of one run: acquire a worktree at a commit, release it, remove all.

``git worktree add`` writes every file (seconds on a large repository) while moving an
existing worktree to another commit costs milliseconds, so released worktrees are reused.
A reused worktree is cleaned to be indistinguishable from a fresh checkout: nothing
staged, no tracked change, no untracked or ignored file left by the previous unit.

A unit that finds no free worktree has a new one filled, up to ``size`` worktrees, and
takes whichever comes first: that one, or one another unit releases meanwhile. Units
integrate in plan order, so a unit stuck behind a slow fill would hold up every unit
after it; this way the first worktree serves everyone until the others are ready.
Fills are CPU-bound (the kernel creating every file) and run at most one fewer than the
CPUs at a time, which leaves a CPU for the integration worktree's own fill.

Rent before buying: once a fill has told what a fill costs, a unit that finds every
worktree taken waits that long for one to come free before it has a new one filled
(and before then, it only starts a fill while a fill slot is idle). Quick lanes (a
codemod, a script) then share the worktrees there are instead of paying for more,
whose filling would take the CPU from them and from the integrator; lanes slower than
a fill wait for it once, and get their own worktree as before.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .git import Git
from .proc import CommandError


class WorktreePool:
    def __init__(self, git: Git, root: Path, size: int) -> None:
        self.git = git
        self.root = root
        self.size = max(1, size)
        self._cond = threading.Condition()
        self._free: list[Path] = []
        self._made: list[Path] = []
        self._fresh: dict[Path, str] = {}  # filled and unused: the commit it holds
        self._filling = 0
        self._fill_errors: list[BaseException] = []
        self._counter = 0
        self._closed = False
        self._slots = fill_slots()
        self._fills = ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="fill")
        self._fill_s: float | None = None  # how long the last fill took
        self._filled_at = 0.0  # when it ended (time.monotonic())

    def acquire(self, commit: str) -> Path:
        """A clean worktree detached at ``commit``."""
        with self._cond:
            since = time.monotonic()
            while not self._free:
                if self._fill_errors:
                    raise self._fill_errors.pop(0)
                if self._closed and not self._filling:
                    raise RuntimeError("the run's worktrees are being removed")
                rent_s = math.inf  # until a worktree comes free, or a fill ends
                if len(self._made) + self._filling < self.size and not self._closed:
                    rent_s = self._rent_left_s(since)
                    if rent_s <= 0:
                        self._start_fill(commit)
                        rent_s = math.inf
                self._cond.wait(None if rent_s == math.inf else rent_s)
            path = self._free.pop()
            filled_at = self._fresh.pop(path, None)
        if filled_at == commit:
            return path  # just filled at this very commit: nothing to undo
        try:
            self.git.checkout_clean(path, commit)
        except CommandError:
            # A lane broke this worktree beyond repair (e.g. deleted its .git file).
            self.discard(path)
            return self.acquire(commit)
        return path

    def _rent_left_s(self, since: float) -> float:
        """Under the condition's lock: how much longer a unit waiting since ``since`` waits
        for a worktree to come free before it has one filled; 0 or less: fill now."""
        if self._fill_s is None:  # no fill has ended: what one costs is not known yet
            return 0.0 if self._filling < self._slots else math.inf
        return max(since, self._filled_at) + self._fill_s - time.monotonic()

    def _start_fill(self, commit: str) -> None:
        """Under the condition's lock: a new worktree, filled on a thread of the pool's."""
        self._counter += 1
        path = self.root / f"w{self._counter:03d}"
        self._filling += 1
        self._fills.submit(self._fill, path, commit)

    def _fill(self, path: Path, commit: str) -> None:
        started = time.monotonic()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if path.exists():  # left by a killed run of the same id: start over
                self._remove_path(path)
            self.git.worktree_add(path, commit)
        except BaseException as exc:  # noqa: BLE001 - handed to the unit that waits
            self._remove_path(path)  # registered but not filled: nothing of it stays
            with self._cond:
                self._filling -= 1
                self._fill_errors.append(exc)
                self._cond.notify_all()
            return
        with self._cond:
            self._filled_at = time.monotonic()
            self._fill_s = self._filled_at - started
            self._filling -= 1
            self._made.append(path)
            self._free.append(path)
            self._fresh[path] = commit
            self._cond.notify_all()

    def release(self, path: Path) -> None:
        with self._cond:
            if path in self._made and path not in self._free:
                self._free.append(path)
                self._cond.notify_all()

    def discard(self, path: Path) -> None:
        with self._cond:
            if path in self._free:
                self._free.remove(path)
            if path in self._made:
                self._made.remove(path)
            self._fresh.pop(path, None)
        self._remove_path(path)

    def _remove_path(self, path: Path) -> None:
        self.git.worktree_remove(path)

    def remove_all(self, also: Iterable[Path] = ()) -> None:
        """Remove every worktree of the pool, and ``also`` these, in parallel: deleting
        files is most of the cost, and the disk is faster with more than one at it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._fills.shutdown(wait=True)  # a fill under way finishes first, then goes too
        with self._cond:
            made, self._made, self._free = list(self._made), [], []
            self._fresh.clear()
        paths = [*made, *(p for p in also if p.exists())]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="remove") as removing:
            list(removing.map(self._remove_path, paths))
        # Our own directory only; the worktrees' admin entries go with them.
        if self.root.exists() and not any(self.root.iterdir()):
            self.root.rmdir()


def fill_slots() -> int:
    """How many worktrees are filled at once: one fewer than the CPUs this process may
    run on, and at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)
