"""The run's integration worktree, and what is known to be in it.

Proofs run here, on exactly the candidate commit. Every command that moves a worktree of
a large repository pays for its whole index (``checkout --force`` stats every file, reads
and writes every entry), and the integrator does that once a unit. So each diff is
applied in place (``git apply --index``) onto the clean tree the last landing left here,
and the worktree is moved by a checkout only when what is in it is not known: a new
process, a diff that needed a three-way merge, a proof that failed or changed files, a
bisection step, a target someone else moved.

What is known: the tree that the index and the files match exactly, with no untracked
file (ignored ones, such as a setup's virtualenv, may stay), and the commit HEAD names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .git import Git, Sha
from .proc import CommandError

# A diff touching one of these changes which files count as untracked.
_IGNORE_RULES = ".gitignore"


class IntegrationWorktree:
    def __init__(self, git: Git, path: Path) -> None:
        self.git = git
        self.path = path
        self._tree: Sha | None = None  # what the index and files hold; None: not known
        self._head: Sha | None = None
        self._untracked_possible = False  # ignore rules changed since the last clean
        self.prepared = False  # the plan's setup has run here (a new worktree needs it again)

    def exists(self) -> bool:
        return os.path.lexists(self.path)  # a symlink in its place too, dangling or not

    def create(self, commit: Sha, tree: Sha) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.git.worktree_add(self.path, commit)
        self._tree, self._head, self._untracked_possible = tree, commit, False
        self.prepared = False

    def forget(self) -> None:
        """What is in the worktree is no longer known: the next use checks it out."""
        self._tree = self._head = None

    def _discard(self) -> None:
        """A proof broke the worktree itself (its .git file, its index): the next use
        makes a new one."""
        self.forget()
        self.git.worktree_remove(self.path)

    def place(self, commit: Sha, tree: Sha) -> None:
        """HEAD at ``commit``, and the index and files exactly its tree ``tree``, with no
        untracked file. Usually the files are there already and only HEAD moves. The
        proof's own ``.git`` is seeded afresh each time at ``commit``: what an earlier
        proof's git did there (or planted for the next one) is gone."""
        if self._tree != tree or self.git.private.replaced(self.path):
            self._checkout(commit, tree)  # a replaced worktree is discarded and made anew
        else:
            if self._untracked_possible:
                self.git.run("clean", "-q", "-ffd", cwd=self.path)
                self._untracked_possible = False
            if self._head != commit:
                # HEAD of wtmesh's admin dir; --no-deref keeps it detached.
                self.git.run("update-ref", "--no-deref", "HEAD", commit, cwd=self.path)
                self._head = commit
        self.git.private.seed_lane_repo(self.path, commit)

    def _checkout(self, commit: Sha, tree: Sha) -> None:
        self.forget()
        if not self.exists():
            self.create(commit, tree)
            return
        try:
            self.git.remove_stale_index_lock(self.path)
            self.git.run("checkout", "-q", "--detach", "--force", commit, cwd=self.path)
            # Untracked files of an earlier proof go; ignored ones (caches, the setup's
            # virtualenv) stay, as they would in a developer's checkout.
            self.git.run("clean", "-q", "-ffd", cwd=self.path)
        except CommandError:  # broken by a failed proof beyond a checkout's repair
            self._discard()
            self.create(commit, tree)
            return
        self._tree, self._head, self._untracked_possible = tree, commit, False

    def apply(self, onto: Sha, onto_tree: Sha, patch: Path,
              paths: Iterable[str] | None) -> Sha | None:
        """Apply ``patch`` onto commit ``onto`` (tree ``onto_tree``) in place; the tree it
        makes, or None when it does not apply plainly (then the caller merges three-way).
        ``paths`` are the files the patch touches (None: not known). HEAD is left where
        it was: only a proof needs it, and ``place`` moves it."""
        if self._tree != onto_tree:
            self._checkout(onto, onto_tree)
        self._tree = None  # until the new tree is written
        applied = self.git.apply(patch, "--index", cwd=self.path)
        if applied.returncode != 0:
            return None
        tree = Sha(self.git.run("write-tree", cwd=self.path).text.strip())
        self._tree = tree
        if paths is None or any(p.rsplit("/", 1)[-1] == _IGNORE_RULES for p in paths):
            self._untracked_possible = True
        return tree

    def after_proof(self, candidate: Sha) -> str | None:
        """Check what a proof left: why it fails (HEAD moved, a tracked file changed), or
        None. Untracked files it made go now; ignored ones stay."""
        try:
            head, changed, untracked = self.git.worktree_status(self.path)
        except CommandError as exc:
            self._discard()
            why = exc.result.stderr.decode("utf-8", "replace").strip().splitlines()
            return ("proof broke the integration worktree"
                    + (f" ({why[-1]})" if why else ""))
        if head != candidate:
            self.forget()
            return "proof moved HEAD of the integration worktree"
        if changed:
            self.forget()
            return f"proof left tracked files modified ({changed[0]})"
        if untracked:
            self.git.run("clean", "-q", "-ffd", cwd=self.path)
        return None
