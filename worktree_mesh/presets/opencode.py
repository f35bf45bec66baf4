"""opencode: ``opencode run`` (AGENT-CLIS.md, "opencode"; checked on 1.18.33).

- Edits: ``OPENCODE_PERMISSION`` allows every tool but denies commits, pushes and branch
  moves in bash, and any path outside the working directory (``external_directory``).
  Explicit deny rules hold even under ``--auto``; a denied call ends as a ``tool_use``
  event in state ``error`` ("The user has specified a rule which prevents you from using
  this specific tool call"). 1.18.33 prints no ``done`` event (older versions listed
  auto-rejected asks in ``done.rejected``; both are read).
- Non-interactive: ``run`` auto-rejects any "ask"; ``--auto`` (recent versions) and the
  allow rules (older ones) keep asks from happening. The prompt comes on stdin.
- Bounds: the build agent's ``steps`` (default 60 for a coder, 30 for a fixer). Reaching
  it is not an error and no event says so: opencode adds a "MAXIMUM STEPS REACHED" message
  to its last allowed request, telling the model to answer in text (tools stay offered,
  so a model that ignores it goes on). A run of that many steps or more hit the cap.
- Output: ``--format json`` events; the verdict (no schema feature) is a marked line in
  the last text; ``step_finish`` carries each step's tokens and cost. A flag opencode does
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
    Usage,
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
# A deny rule ("specified a rule which prevents"), an ask auto-rejected ("rejected
# permission"), and older wordings.
_REFUSED = re.compile(r"rule which prevents you from using|rejected permission"
                      r"|not allowed by permission|permission denied by", re.IGNORECASE)
# What opencode prints instead of events when its command line does not parse (yargs).
_USAGE = re.compile(r"^opencode run \[message\.\.\]|^Options:\s*$", re.MULTILINE)
_UNREACHABLE = "Cannot connect to API"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return str(error.get("message") or error.get("name") or error)
    return str(error or event.get("message") or "error")


def _unusable(event: dict[str, Any]) -> str | None:
    """Why an ``error`` event means the model API cannot be used as configured: refused
    credentials (opencode gives the HTTP status) or no connection (after ~70 s of its own
    retries, when wtmesh could not tell the URL beforehand)."""
    data = _dict(_dict(event.get("error")).get("data"))
    text = _error_text(event)
    if data.get("statusCode") in (401, 403):
        return f"the model API refused the request (HTTP {data['statusCode']}): {text}"
    if text.startswith(_UNREACHABLE):
        url = _dict(data.get("metadata")).get("url")
        return f"cannot reach the model API{f' at {url}' if url else ''}: {text}"
    return unavailable_reason(text)


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


# -- the preset --------------------------------------------------------------------------


def usage(events: Iterable[dict[str, Any]]) -> Usage | None:
    """The run's tokens and cost, summed over its ``step_finish`` events (opencode counts
    cached input and reasoning apart; they are input and output all the same). The
    session-title request is not in any step, so not counted."""
    tokens_in = tokens_out = 0
    cost = 0.0
    seen = False
    for event in events:
        part = _dict(event.get("part"))
        if event.get("type") != "step_finish":
            continue
        seen = True
        tokens = _dict(part.get("tokens"))
        cache = _dict(tokens.get("cache"))
        tokens_in += sum(int(v or 0) for v in (tokens.get("input"), cache.get("read"),
                                                cache.get("write")))
        tokens_out += int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0)
        cost += float(part.get("cost") or 0)
    return Usage(tokens_in, tokens_out, round(cost, 6)) if seen else None


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
                    t.denials.append(f"{part.get('tool', 'tool')} {_call(state)}".strip())
            elif kind == "error":
                errors.append(_error_text(event))
                t.unavailable = t.unavailable or _unusable(event)
            elif kind == "done":
                rejected = event.get("rejected", part.get("rejected")) or []
                t.denials.extend(str(r.get("permission", r) if isinstance(r, dict) else r)
                                 for r in rejected)
        t.message = "\n".join(last_texts)
        t.usage = usage(events)
        cap = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
        if steps >= cap:
            t.cap = f"used all {cap} of its steps (agent steps cap)"
        if done.returncode != 0 or errors:
            why = "; ".join(errors) or first_line(done.stderr_tail,
                                                  f"opencode exited {done.returncode}")
            t.unavailable = t.unavailable or unavailable_reason(why)
            t.error = first_line(why)
        return t

    def _refused_command_line(self, lane: Lane, done: Completed) -> Transcript:
        unknown = unknown_flags(self.invocation(lane).argv[1:], done.stderr_tail)
        which = f" (unknown to it: {', '.join(unknown)})" if unknown else ""
        return Transcript(unavailable=(
            f"opencode refused its command line{which}: it printed its usage and exited "
            f"{done.returncode}; check the lane's args against `opencode run --help`"))


def _call(state: dict[str, Any]) -> str:
    """What a refused call was for: its command or path."""
    given = _dict(state.get("input"))
    detail = given.get("command") or given.get("filePath") or given.get("path")
    return f"`{first_line(str(detail))}`" if detail else ""


PRESET = Opencode()
