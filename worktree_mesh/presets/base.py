"""Records shared by the preset runner and the per-CLI modules.

Each CLI module is a ``Preset``: it turns a ``Lane`` into an ``Invocation`` (argv, extra
environment, where the prompt goes) and reads what the CLI printed back into a
``Transcript``. ``outcome.decide`` maps every transcript to the result contract the same
way, so the failure taxonomy is applied once, not five times.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# What a lane spent: one record for the core and the presets.
from ..usage import Usage as Usage

# The turn cap a preset gives an agent when the plan sets none (claude, gemini and
# opencode have one): a fixer or a critic reviews, so it needs fewer turns than a coder
# (or a synthesizer, which makes the final change).
DEFAULT_MAX_TURNS = {"coder": 60, "fixer": 30, "critic": 30, "synthesizer": 60}

@dataclass(frozen=True)
class Lane:
    """One preset lane attempt, read from the lane environment wtmesh sets (SPEC 3.3)."""

    preset: str
    role: str  # coder | fixer | critic | synthesizer
    unit: Mapping[str, Any]  # WTMESH_UNIT_JSON
    worktree: Path
    result_path: Path
    work_dir: Path  # prompt, schema and transcript files: beside the result, never in the worktree
    diff: str | None  # the coder's diff (fixer only)
    model: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    args: tuple[str, ...] = ()
    # Consensus lanes (SPEC 12): the candidates file (WTMESH_CANDIDATES_JSON), and the
    # critic's name (WTMESH_CRITIC).
    candidates: Mapping[str, Any] | None = None
    critic: str | None = None
    # A rerun after a conflict (SPEC 14): what the earlier change met, in a sentence.
    conflict: str | None = None

    @property
    def unit_id(self) -> str:
        return str(self.unit.get("id", ""))

    @property
    def edits(self) -> bool:
        """The agent may change files: every role but a critic's, which reads only."""
        return self.role != "critic"

    @property
    def candidate_names(self) -> list[str]:
        listed = (self.candidates or {}).get("candidates") or []
        return [str(c["name"]) for c in listed if isinstance(c, dict) and "name" in c]

    @property
    def prompt_path(self) -> Path:
        return self.work_dir / "prompt.md"

    @property
    def schema_path(self) -> Path:
        return self.work_dir / "verdict.schema.json"

    @property
    def proof(self) -> str | None:
        """The unit's proof command as one shell line (None when there is none)."""
        proof = self.unit.get("proof_command")
        if isinstance(proof, list):
            return shlex.join(str(p) for p in proof)
        return proof if isinstance(proof, str) and proof else None


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: Path | None = None  # a file fed to the CLI's stdin; None: stdin closed
    # Found before the CLI starts: why it cannot work here (the lane ends
    # tooling_unavailable with it, the CLI never started), and lines for the lane log.
    refused: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completed:
    """How the CLI ended: its exit code and where its stdout was kept."""

    returncode: int
    stdout_path: Path
    stderr_tail: str
    stopped: str | None = None  # why the runner stopped the CLI (the preset's stop_reason)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_bytes().decode("utf-8", "replace")


@dataclass
class Transcript:
    """What a CLI's output says, normalised. Empty fields mean "nothing of that kind"."""

    message: str = ""  # the agent's final message
    unavailable: str | None = None  # auth, configuration, a flag this version rejects
    denials: list[str] = field(default_factory=list)  # tools or commands refused
    cap: str | None = None  # a turn or budget cap was hit
    schema_failed: str | None = None  # the CLI could not produce the verdict's shape
    error: str | None = None  # any other failure the CLI reported
    verdict: Any = None  # a structured verdict (schema feature), when the CLI has one
    usage: Usage | None = None  # tokens and cost, as the CLI reported them (SPEC 17)


class Preset(Protocol):
    """A CLI's preset. It may also define ``stop_reason(line) -> str | None``: called on
    each line the CLI prints, a reason stops the CLI at once and fails the lane
    ``tooling_unavailable`` (a CLI that has begun waiting for a person, as aider's browser
    login does, would otherwise wait until the lane's timeout)."""

    name: str
    binary: str
    # Paths at the worktree root that the CLI leaves behind and that must never enter a
    # diff (fnmatch patterns); the runner removes the untracked ones after the run.
    litter: tuple[str, ...]

    def invocation(self, lane: Lane) -> Invocation: ...

    def read(self, lane: Lane, done: Completed) -> Transcript: ...

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        """The model API the CLI will call with this lane and environment (a base URL),
        so that the runner can say at once when it cannot be reached instead of letting
        the CLI retry until the lane's timeout; None when it cannot be told."""
        ...


# Failure text that means the CLI cannot be used as configured (no key, not logged in, a
# model or flag it does not know) rather than that this attempt went wrong.
_UNAVAILABLE = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|authentication|invalid[ _-]?api[ _-]?key|api[ _-]?key"
    r"|not logged in|please log ?in|login required|credentials|permission to access the model"
    r"|model[^\n]{0,80}not (found|exist|supported)|unknown (option|argument|flag)"
    r"|unexpected argument",
    re.IGNORECASE)


def unavailable_reason(text: str) -> str | None:
    """The first line of ``text`` that says the tool is unusable as configured."""
    for line in text.splitlines():
        if _UNAVAILABLE.search(line):
            return line.strip()[:300]
    return None


def first_line(text: str, default: str = "") -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return default


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL stream; other lines (banners, warnings) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out
