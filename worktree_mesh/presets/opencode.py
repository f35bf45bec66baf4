"""opencode: ``opencode run`` (AGENT-CLIS.md, "opencode").

- Edits: ``OPENCODE_PERMISSION`` allows every tool but denies commits, pushes and branch
  moves in bash, and any path outside the working directory (``external_directory``).
  Explicit deny rules hold even under ``--auto``. The object syntax for bash patterns
  (last matching rule wins) and ``external_directory`` are from opencode's permissions
  documentation; AGENT-CLIS.md only shows ``{"*":"allow"}``.
- Non-interactive: ``run`` auto-rejects any "ask"; ``--auto`` (recent versions) and the
  allow rules (older ones) keep asks from happening. The prompt comes on stdin.
- Bounds: the build agent's ``steps`` (default 60 for a coder, 30 for a fixer) through
  ``OPENCODE_CONFIG_CONTENT``. Reaching it is not an error for opencode (the agent is made
  to reply in text); how to detect it is [unverified]: a run that used all its steps is
  read as having hit the cap.
- Output: ``--format json`` events; the verdict (no schema feature) is a marked line in
  the last text. ``done.rejected`` lists auto-rejected permissions. A flag opencode does
  not know makes it print its usage to stderr and exit 1, with no event.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .base import (
    DEFAULT_MAX_TURNS,
    Completed,
    Invocation,
    Lane,
    Transcript,
    first_line,
    json_lines,
    unavailable_reason,
)

FORBIDDEN_BASH = tuple(f"git {verb}*" for verb in (
    "commit", "push", "add", "reset", "stash", "checkout", "switch", "branch", "rebase",
    "merge", "tag"))
PERMISSION: dict[str, Any] = {
    "*": "allow",
    "external_directory": "deny",
    # "*" first: the last matching rule wins.
    "bash": {"*": "allow", **{pattern: "deny" for pattern in FORBIDDEN_BASH}},
}
_REFUSED = re.compile(r"rejected permission|not allowed by permission|permission denied by",
                      re.IGNORECASE)
# What opencode prints instead of events when its command line does not parse (yargs).
_USAGE = re.compile(r"^opencode run \[message\.\.\]|^Options:\s*$", re.MULTILINE)


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return str(error.get("message") or error.get("name") or error)
    return str(error or event.get("message") or "error")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def config(lane: Lane) -> str:
    steps = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
    ours: dict[str, Any] = {"share": "disabled", "agent": {"build": {"steps": steps}}}
    try:
        theirs = json.loads(os.environ.get("OPENCODE_CONFIG_CONTENT") or "{}")
    except ValueError:
        theirs = {}
    if isinstance(theirs, dict):
        agents = _dict(theirs.get("agent"))
        build = _dict(agents.get("build"))
        ours = {**theirs, **ours,
                "agent": {**agents, "build": {**build, "steps": steps}}}
    return json.dumps(ours)


def unknown_flags(argv: Iterable[str], usage_text: str) -> list[str]:
    """The options of ``argv`` that opencode's usage text does not list."""
    names = [arg.split("=", 1)[0] for arg in argv if arg.startswith("-") and arg != "-"]
    return [name for name in dict.fromkeys(names)
            if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", usage_text)]


class Opencode:
    name = "opencode"
    binary = "opencode"
    litter: tuple[str, ...] = ()
    native_schema = False

    def invocation(self, lane: Lane) -> Invocation:
        argv = ["opencode", "run", "--dir", str(lane.worktree), "--format", "json", "--auto"]
        if lane.model:
            argv += ["-m", lane.model]
        argv += lane.args
        env = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_CONFIG_CONTENT": config(lane),
               "OPENCODE_PERMISSION": json.dumps(PERMISSION)}
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return None  # the provider is chosen by configuration wtmesh does not read yet

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        events = json_lines(done.stdout)
        if done.returncode != 0 and not events and _USAGE.search(done.stderr_tail):
            return self._refused_command_line(lane, done)
        errors: list[str] = []
        steps = 0
        texts: list[str] = []
        last_texts: list[str] = []
        for event in events:
            kind = event.get("type")
            part = _dict(event.get("part"))
            if kind == "step_start":
                steps += 1
                texts = []
            elif kind == "text" and part.get("text"):
                texts.append(str(part["text"]))
                last_texts = texts
            elif kind == "tool_use":
                state = _dict(part.get("state"))
                error = str(state.get("error") or "")
                if state.get("status") == "error" and _REFUSED.search(error):
                    t.denials.append(f"{part.get('tool', 'tool')}: {first_line(error)}")
            elif kind == "error":
                errors.append(_error_text(event))
            elif kind == "done":
                rejected = event.get("rejected", part.get("rejected")) or []
                t.denials.extend(str(r.get("permission", r) if isinstance(r, dict) else r)
                                 for r in rejected)
        t.message = "\n".join(last_texts)
        cap = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
        if steps >= cap:
            t.cap = f"used all {cap} of its steps (agent steps cap)"
        if done.returncode != 0 or errors:
            why = "; ".join(errors) or first_line(done.stderr_tail,
                                                  f"opencode exited {done.returncode}")
            t.unavailable = unavailable_reason(why)
            t.error = first_line(why)
        return t

    def _refused_command_line(self, lane: Lane, done: Completed) -> Transcript:
        unknown = unknown_flags(self.invocation(lane).argv[1:], done.stderr_tail)
        which = f" (unknown to it: {', '.join(unknown)})" if unknown else ""
        return Transcript(unavailable=(
            f"opencode refused its command line{which}: it printed its usage and exited "
            f"{done.returncode}; check the lane's args against `opencode run --help`"))


PRESET = Opencode()
