"""The worktree pool of one run: acquire a worktree at a commit, release it, remove all.

``git worktree add`` writes every file (seconds on a large repository) while moving an
existing worktree to another commit costs milliseconds, so released worktrees are reused.
A reused worktree is cleaned to be indistinguishable from a fresh checkout: nothing
staged, no tracked change, no untracked or ignored file left by the previous unit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .git import Git
from .proc import CommandError


class WorktreePool:
    def __init__(self, git: Git, root: Path) -> None:
        self.git = git
        self.root = root
        self._lock = threading.Lock()
        self._free: list[Path] = []
        self._made: list[Path] = []
        self._counter = 0

    def acquire(self, commit: str) -> Path:
        with self._lock:
            path = self._free.pop() if self._free else None
            if path is None:
                self._counter += 1
                path = self.root / f"w{self._counter:03d}"
                fresh = True
            else:
                fresh = False
        if fresh:
            self.root.mkdir(parents=True, exist_ok=True)
            if path.exists():  # left by a killed run of the same id: start over
                self._remove_path(path)
            self.git.worktree_add(path, commit)
            with self._lock:
                self._made.append(path)
        else:
            try:
                self.git.checkout_clean(path, commit)
            except CommandError:
                # A lane broke this worktree beyond repair (e.g. deleted its .git file).
                self.discard(path)
                return self.acquire(commit)
        return path

    def release(self, path: Path) -> None:
        with self._lock:
            if path in self._made and path not in self._free:
                self._free.append(path)

    def discard(self, path: Path) -> None:
        with self._lock:
            if path in self._free:
                self._free.remove(path)
            if path in self._made:
                self._made.remove(path)
        self._remove_path(path)

    def _remove_path(self, path: Path) -> None:
        self.git.worktree_remove(path)

    def remove_all(self, also: Iterable[Path] = ()) -> None:
        """Remove every worktree of the pool, and ``also`` these, in parallel: deleting
        files is most of the cost, and the disk is faster with more than one at it."""
        with self._lock:
            made, self._made, self._free = list(self._made), [], []
        paths = [*made, *(p for p in also if p.exists())]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="remove") as removing:
            list(removing.map(self._remove_path, paths))
        # Our own directory only; the worktrees' admin entries go with them.
        if self.root.exists() and not any(self.root.iterdir()):
            self.root.rmdir()
