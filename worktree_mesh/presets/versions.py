"""The agent CLI versions the presets were tested with, in one place.

The real-CLI tests install exactly these (``tests/real_cli.py``); ``wtmesh init`` and a
run's first line say when the CLI on PATH is another version (a warning: flags and output
formats drift between releases, so an untested version may still work, or may not).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Pinned:
    package: str  # on npm, or on PyPI for pip
    version: str
    installer: Literal["npm", "pip"]
    binary: str

    @property
    def spec(self) -> str:
        return f"{self.package}{'@' if self.installer == 'npm' else '=='}{self.version}"

    @property
    def install_command(self) -> str:
        """How a user installs exactly this version (an exact pin: npm can resolve an old
        version from a stale cache otherwise)."""
        if self.installer == "npm":
            return f"npm install -g {self.spec}"
        return f"pipx install {self.spec}"


TESTED: dict[str, Pinned] = {
    "codex": Pinned("@openai/codex", "0.171.0", "npm", "codex"),
    "claude": Pinned("@anthropic-ai/claude-code", "2.1.332", "npm", "claude"),
    "aider": Pinned("aider-chat", "0.86.2", "pip", "aider"),
    "gemini": Pinned("@google/gemini-cli", "0.61.0", "npm", "gemini"),
    "opencode": Pinned("opencode-ai", "1.18.33", "npm", "opencode"),
}


VERSION_PROBE_TIMEOUT_S = 30.0
_VERSION = re.compile(r"\b(\d+\.\d+\.\d+)\b")


@dataclass(frozen=True)
class Installed:
    """What ``<binary> --version`` said of a preset's CLI on PATH."""

    preset: str
    version: str | None  # None: not on PATH, or it did not say
    problem: str | None = None  # why there is no version

    @property
    def tested(self) -> bool:
        return self.version == TESTED[self.preset].version

    def describe(self) -> str:
        """``claude 2.1.332 (tested)``, or what differs, in a few words."""
        pinned = TESTED[self.preset]
        if self.version is None:
            return f"{pinned.binary} {self.problem or 'not found'}"
        if self.tested:
            return f"{pinned.binary} {self.version} (tested)"
        return (f"{pinned.binary} {self.version} (untested: the presets were tested with "
                f"{pinned.version})")

    def record(self) -> dict[str, object]:
        return {"version": self.version, "tested": self.tested, "problem": self.problem}


def installed(preset: str, path: str | None = None) -> Installed:
    """Ask the CLI of ``preset`` found on ``path`` (default: PATH) for its version."""
    binary = shutil.which(TESTED[preset].binary, path=path)
    if binary is None:
        return Installed(preset, None, "not on PATH")
    try:
        done = _ask_version(binary)
    except subprocess.TimeoutExpired:
        return Installed(preset, None, f"did not say its version in "
                                       f"{VERSION_PROBE_TIMEOUT_S:g} s")
    except OSError as exc:
        return Installed(preset, None, f"cannot run: {exc.strerror or exc}")
    said = _VERSION.search((done.stdout or done.stderr).decode("utf-8", "replace"))
    if done.returncode != 0 or said is None:
        return Installed(preset, None, f"--version exited {done.returncode} with no version")
    return Installed(preset, said.group(1))


def _ask_version(binary: str) -> subprocess.CompletedProcess[bytes]:
    """``BINARY --version`` in a home of its own: asked only its version, gemini still
    writes ~/.gemini, and asking must change nothing of the user's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("XDG_")}
    with tempfile.TemporaryDirectory(prefix="wtmesh-version-") as home:
        return subprocess.run([binary, "--version"], capture_output=True,
                              env={**env, "HOME": home}, stdin=subprocess.DEVNULL,
                              timeout=VERSION_PROBE_TIMEOUT_S, check=False)


def installed_all(presets: Iterable[str], path: str | None = None) -> list[Installed]:
    """``installed`` for each preset, asked at once (a node CLI takes a second to start)."""
    names = list(dict.fromkeys(presets))
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(lambda name: installed(name, path), names))
