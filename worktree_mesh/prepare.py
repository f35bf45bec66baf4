"""Prepare a worktree before anything runs in it: the plan's ``setup``.

``copy_ignored`` copies ignored files of the user's working tree (``.env``, a virtualenv)
into the worktree; the setup command then runs there. Unit worktrees and the integration
worktree (where proofs run) are prepared the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from . import proc
from .git import Git
from .lanes import render
from .plan import SetupSpec
from .sandbox import Confinement

SETUP_TIMEOUT_S = 900.0


class SetupFailed(Exception):
    pass


def prepare(git: Git, setup: SetupSpec, *, repo: Path, worktree: Path,
            placeholders: Mapping[str, str], env: Mapping[str, str], log: Path,
            confinement: Confinement | None = None) -> None:
    """Raises SetupFailed with one line saying why. The command runs in ``confinement``
    (the sandbox of the lanes or proofs to come) when given; copying is wtmesh's own."""
    for rel in setup.copy_ignored:
        source = repo / rel
        if not source.exists() and not source.is_symlink():
            continue  # an optional file (.env) absent on this machine
        # Without --no-index a tracked file is never "ignored": copying one would put the
        # user's uncommitted version of it into the unit's change.
        ignored = git.run("check-ignore", "-q", "--", rel, cwd=repo, check=False)
        if ignored.returncode != 0:
            raise SetupFailed(f"setup: copy_ignored {rel!r} is not an ignored file; copying "
                              "it would make it part of the unit's change")
        dest = worktree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest, follow_symlinks=False)
    if setup.command is None:
        return
    done = proc.run_logged(render(setup.command, placeholders), cwd=worktree, env=env,
                           stdout_path=log, stderr_path=log, timeout_s=SETUP_TIMEOUT_S,
                           confinement=confinement)
    if not done.ok:
        why = done.start_error or ("timed out" if done.timed_out else f"exited {done.returncode}")
        raise SetupFailed(f"setup command {why} (log: {log})")
