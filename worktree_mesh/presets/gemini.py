"""Gemini CLI: ``gemini -p`` (AGENT-CLIS.md, "Gemini CLI").

- Edits: ``--approval-mode yolo``. Headless runs deny every tool that needs approval and
  ``auto_edit`` still denies the shell, so without yolo the agent could not run the proof.
  Commits and pushes are taken away through the settings file: ``tools.exclude`` with
  ``run_shell_command(git commit)`` and the like. That key comes from gemini-cli's own
  documentation (docs/tools/shell.md), not AGENT-CLIS.md; it is a guard against habit,
  not a sandbox.
- Non-interactive: ``-p`` with the prompt on stdin; ``GEMINI_TRUST_WORKSPACE=true`` so
  folder trust cannot stop the run (the env var rather than ``--skip-trust``, which older
  versions lack).
- Bounds: ``model.maxSessionTurns`` (a setting only, no flag) in a settings file passed by
  ``GEMINI_CLI_SYSTEM_SETTINGS_PATH``; default 60 for a coder, 30 for a fixer. An
  administrator's system settings file is read and kept underneath ours.
- Output: ``-o json`` gives ``{response, stats, error}``; no schema feature, so the fixer's
  verdict is a marked line in ``response``.
- Exit codes: 0 ok, 1 error, 42 input error, 53 turn limit (documented); 41 auth, 52
  config, 55 untrusted workspace are [unverified] and read as "tool unusable".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import (
    DEFAULT_MAX_TURNS,
    Completed,
    Invocation,
    Lane,
    Transcript,
    first_line,
    unavailable_reason,
)

SYSTEM_SETTINGS = Path("/etc/gemini-cli/settings.json")
FORBIDDEN_SHELL = tuple(f"run_shell_command(git {verb})" for verb in (
    "commit", "push", "add", "reset", "stash", "checkout", "switch", "branch", "rebase",
    "merge", "tag"))
UNUSABLE_EXITS = {41: "authentication failed", 42: "rejected its input or arguments",
                  52: "configuration error", 55: "the workspace is not trusted"}
TURN_LIMIT_EXIT = 53
_DENIED = re.compile(r"(denied|rejected|not allowed).{0,80}(non-interactive|approval|polic)"
                     r"|(non-interactive|polic).{0,80}(denied|rejected|not allowed)",
                     re.IGNORECASE)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = old + [v for v in value if v not in old]
        else:
            out[key] = value
    return out


def settings(lane: Lane) -> dict[str, Any]:
    turns = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
    ours = {
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "telemetry": {"enabled": False},
        "model": {"maxSessionTurns": turns},
        "tools": {"exclude": list(FORBIDDEN_SHELL)},
    }
    existing = Path(os.environ.get("GEMINI_CLI_SYSTEM_SETTINGS_PATH") or SYSTEM_SETTINGS)
    try:
        base = json.loads(existing.read_text("utf-8"))
    except (OSError, ValueError):
        base = {}
    return _merge(base if isinstance(base, dict) else {}, ours)


def output_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    while start != -1:
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("\n{", start + 1)
            start = start + 1 if start != -1 else -1
            continue
        return value if isinstance(value, dict) else None
    return None


def _denied_tools(stats: Any) -> int:
    # [unverified] whether a headless auto-deny counts as a "reject" decision in the stats.
    try:
        return int(stats["tools"]["totalDecisions"]["reject"])
    except (KeyError, TypeError, ValueError):
        return 0


class Gemini:
    name = "gemini"
    binary = "gemini"
    litter: tuple[str, ...] = ()
    native_schema = False

    def invocation(self, lane: Lane) -> Invocation:
        path = lane.work_dir / "gemini-settings.json"
        path.write_text(json.dumps(settings(lane), indent=2) + "\n", "utf-8")
        argv = ["gemini", "-p", "Follow the task given on stdin.", "--approval-mode", "yolo",
                "-o", "json"]
        if lane.model:
            argv += ["-m", lane.model]
        argv += lane.args
        env = {"GEMINI_CLI_SYSTEM_SETTINGS_PATH": str(path), "GEMINI_TRUST_WORKSPACE": "true"}
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return env.get("GOOGLE_GEMINI_BASE_URL") or "https://generativelanguage.googleapis.com"

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        out = output_object(done.stdout) or {}
        t.message = str(out.get("response") or "")
        error = out.get("error")
        error_text = (str(error.get("message") or error) if isinstance(error, dict)
                      else str(error or ""))
        rejected = _denied_tools(out.get("stats"))
        if rejected:
            t.denials.append(f"{rejected} tool call(s) needing approval")
        for text in (error_text, done.stderr_tail):
            match = _DENIED.search(text)
            if match:
                t.denials.append(first_line(text[max(0, match.start() - 80):]))
                break
        code = done.returncode
        if code == TURN_LIMIT_EXIT:
            turns = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
            t.cap = f"hit its turn cap (model.maxSessionTurns {turns})"
        elif code in UNUSABLE_EXITS:
            detail = first_line(error_text or done.stderr_tail)
            t.unavailable = f"exit {code}: {UNUSABLE_EXITS[code]}" + (
                f": {detail}" if detail else "")
        elif code != 0 or error_text:
            why = error_text or first_line(done.stderr_tail, f"gemini exited {code}")
            t.unavailable = unavailable_reason(why)
            t.error = f"exit {code}: {first_line(why)}"
        return t


PRESET = Gemini()
