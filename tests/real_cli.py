"""The real agent CLIs, installed at the versions the presets were tested with
(``worktree_mesh/presets/versions.py``) into a cache outside the repository, once, and
reused by every later run: ``$WTMESH_CLI_CACHE``, else ``~/.cache/wtmesh-tests/clis``.

npm installs go to ``<cache>/<name>-<version>`` with ``npm install --prefix`` (an exact
version: npm can resolve an old one from a stale cache otherwise); aider goes into a
virtualenv there. A finished install is marked by a file written last, so an install cut
off half way is redone; a file lock keeps two test processes from installing at once.
Where npm (or node) is missing, or the registry cannot be reached, the tests that need
the CLI skip, saying which and why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

from worktree_mesh.presets.versions import TESTED, Pinned

INSTALL_TIMEOUT_S = 600
_DONE = ".installed"


def _real_home() -> Path:
    """The user's home, not a test's (the hermetic fixtures point HOME at a temporary
    directory, which would make the cache one per test)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def cache_root() -> Path:
    configured = os.environ.get("WTMESH_CLI_CACHE")
    return Path(configured) if configured else _real_home() / ".cache/wtmesh-tests/clis"


def _install(pinned: Pinned, dest: Path) -> None:
    if pinned.installer == "npm":
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip(f"{pinned.binary} needs node and npm, which are not installed")
        argv = [npm, "install", "--prefix", str(dest), "--no-audit", "--no-fund",
                "--loglevel=error", pinned.spec]
        env = {**os.environ, "HOME": str(_real_home())}  # npm's own cache
        steps = [argv]
    else:
        env = {**os.environ}
        steps = [[sys.executable, "-m", "venv", str(dest)],
                 [str(dest / "bin" / "python"), "-m", "pip", "install", "-q",
                  "--disable-pip-version-check", pinned.spec]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, env=env,
                                  timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing {pinned.spec} took over {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            pytest.skip(f"cannot install {pinned.spec} ({' '.join(step[:2])} exited "
                        f"{done.returncode}: {why[-1] if why else 'no output'})")


def bin_dir(name: str) -> Path:
    """The directory holding the pinned ``name`` CLI's executable, installed if need be."""
    pinned = TESTED[name]
    root = cache_root()
    dest = root / f"{name}-{pinned.version}"
    where = dest / ("node_modules/.bin" if pinned.installer == "npm" else "bin")
    root.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(root / f".{name}-{pinned.version}.lock")):
        if not (dest / _DONE).exists():
            shutil.rmtree(dest, ignore_errors=True)
            _install(pinned, dest)
            if not (where / pinned.binary).exists():
                pytest.skip(f"{pinned.spec} installed no {pinned.binary} executable")
            (dest / _DONE).write_text(pinned.spec + "\n")
    return where
