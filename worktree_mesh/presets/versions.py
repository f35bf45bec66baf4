"""The agent CLI versions the presets were tested with, in one place.

The real-CLI tests install exactly these (``tests/real_cli.py``); ``wtmesh init`` and a
run's first line say when the CLI on PATH is another version (a warning: flags and output
formats drift between releases, so an untested version may still work, or may not).
"""

from __future__ import annotations

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


TESTED: dict[str, Pinned] = {
    "codex": Pinned("@openai/codex", "0.171.0", "npm", "codex"),
    "claude": Pinned("@anthropic-ai/claude-code", "2.1.332", "npm", "claude"),
    "aider": Pinned("aider-chat", "0.86.2", "pip", "aider"),
    "gemini": Pinned("@google/gemini-cli", "0.61.0", "npm", "gemini"),
    "opencode": Pinned("opencode-ai", "1.18.33", "npm", "opencode"),
}
