"""Gemini CLI: ``gemini -p`` (AGENT-CLIS.md, "Gemini CLI"; checked on 0.61.0).

- Edits: ``--approval-mode yolo``. Headless runs deny every tool that needs approval and
  ``auto_edit`` still denies the shell, so without yolo the agent could not run the proof.
  A critic runs in ``default`` mode: headless, gemini then offers the model none of the
  tools that need approval (no ``write_file``, ``replace`` or shell), only reading ones.
- Trust: ``GEMINI_CLI_TRUST_WORKSPACE=true`` (what ``--skip-trust`` sets). Untrusted,
  gemini drops yolo ("Approval mode overridden to \"default\"") and exits 55.
- Configuration: a gemini home of the lane's own (``GEMINI_CLI_HOME``, in the lane's work
  directory beside its result) holding ``.gemini/settings.json`` and a policy file. Not
  ``GEMINI_CLI_SYSTEM_SETTINGS_PATH``: gemini skips that file unless it and every parent
  directory are root-owned and not group/other-writable ("Security Warning: Skipping
  system settings file"), so its settings never took effect. The user's own
  ``~/.gemini/settings.json`` is read and kept underneath ours; an administrator's system
  settings still apply over both. A project's ``.gemini/settings.json`` (a trusted
  workspace) would override user settings, the turn cap included: gemini offers no tier
  between the two that a user can write.
- Bounds: ``model.maxSessionTurns`` (a setting only, no flag); default 60 for a coder or
  a synthesizer, 30 for a fixer or a critic; reaching it: exit 53.
- Git: commits, pushes and branch moves are denied by a policy rule (``policies/*.toml``
  in the lane's gemini home, the user tier, over the built-in yolo "allow all"). The
  older ``tools.exclude`` setting is not enforced in yolo mode. A denied call comes back
  as a ``tool_result`` with ``error.type: policy_violation``.
- Auth: ``security.auth.selectedType: gemini-api-key`` unless the user's settings or the
  environment (Vertex AI, Code Assist) choose another: with ``GOOGLE_GEMINI_BASE_URL`` set
  and no type selected, gemini picks a "gateway" auth that headless runs reject (exit 41).
- Output: ``-o stream-json`` (JSONL: ``init``, ``message``, ``tool_use``, ``tool_result``,
  ``error``, ``result`` with ``stats``), all on stdout, API errors included; ``-o json``
  writes its error object to stderr instead. Errors before the session starts (no key,
  untrusted folder) are plain lines on stderr. No schema feature: a fixer's verdict and a
  critic's critique are a marked line (or a JSON block) in the final message.
- Exit codes: 0 ok, 1 error, 41 auth, 42 input error, 52 config, 53 turn limit, 55
  untrusted workspace; an HTTP error from the API exits with its status modulo 256
  (401 -> 145).
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
    Usage,
    first_line,
    json_lines,
    unavailable_reason,
)

FORBIDDEN_GIT = ("git commit", "git push", "git add", "git reset", "git stash", "git checkout",
                 "git switch", "git branch", "git rebase", "git merge", "git tag")
DENY_MESSAGE = "a wtmesh lane must not stage, commit, push or move branches"
UNUSABLE_EXITS = {41: "authentication failed", 42: "rejected its input or arguments",
                  52: "configuration error", 55: "the workspace is not trusted"}
TURN_LIMIT_EXIT = 53
# Auth types gemini takes from the environment before an API key (getAuthTypeFromEnv).
_ENV_AUTH = ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA")
# stderr lines gemini prints on every run: never the reason a run failed.
_NOISE = re.compile(r"^(Warning: |YOLO mode is enabled|Ripgrep is not available"
                    r"|Approval mode overridden|Loaded cached credentials)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def user_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The user's own gemini settings (their home, or the one they point gemini at)."""
    home = env.get("GEMINI_CLI_HOME") or env.get("HOME")
    if not home:
        return {}
    try:
        value = json.loads((Path(home) / ".gemini" / "settings.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def settings(lane: Lane, env: Mapping[str, str]) -> dict[str, Any]:
    base = user_settings(env)
    ours: dict[str, Any] = {
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "telemetry": {"enabled": False},
        "model": {"maxSessionTurns": max_turns(lane)},
    }
    chosen = _object(_object(base.get("security")).get("auth")).get("selectedType")
    if not chosen and not any(env.get(v) == "true" for v in _ENV_AUTH):
        ours["security"] = {"auth": {"selectedType": "gemini-api-key"}}
    return _merge(base, ours)


def policy() -> str:
    """Policy rules (TOML) denying git commands that change refs or the index."""
    prefixes = ", ".join(json.dumps(p) for p in FORBIDDEN_GIT)
    return ("# Written by wtmesh for one lane attempt.\n[[rule]]\n"
            f'toolName = "run_shell_command"\ncommandPrefix = [{prefixes}]\n'
            f'decision = "deny"\npriority = 999\ndenyMessage = "{DENY_MESSAGE}"\n')


def max_turns(lane: Lane) -> int:
    return lane.max_turns or DEFAULT_MAX_TURNS[lane.role]


def gemini_home(lane: Lane) -> Path:
    return lane.work_dir / "gemini-home"


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def final_message(events: list[dict[str, Any]]) -> str:
    """The agent's text after its last tool call (what ``-o json`` calls ``response``)."""
    parts: list[str] = []
    for event in events:
        kind = event.get("type")
        if kind in ("tool_use", "tool_result"):
            parts = []
        elif kind == "message" and event.get("role") == "assistant":
            parts.append(str(event.get("content") or ""))
    return "".join(parts)


def denials(events: list[dict[str, Any]]) -> list[str]:
    calls = {e.get("tool_id"): e for e in events if e.get("type") == "tool_use"}
    out = []
    for event in events:
        error = event.get("error")
        if event.get("type") != "tool_result" or not isinstance(error, dict):
            continue
        if error.get("type") != "policy_violation":
            continue
        call = _object(calls.get(event.get("tool_id")))
        params = _object(call.get("parameters"))
        what = str(call.get("tool_name") or "a tool")
        if params.get("command"):
            what += f" `{params['command']}`"
        elif params.get("file_path"):
            what += f" {params['file_path']}"
        out.append(what)
    return out


def usage(stats: Any) -> Usage | None:
    """Tokens from the ``result`` event's stats, summed over models by gemini. Output is
    everything past the prompt (candidates and thoughts: what is billed as output).
    gemini reports no cost."""
    if not isinstance(stats, dict):
        return None
    tokens_in, total = stats.get("input_tokens"), stats.get("total_tokens")
    if not isinstance(tokens_in, int):
        return None
    tokens_out = total - tokens_in if isinstance(total, int) and total >= tokens_in else \
        stats.get("output_tokens")
    return Usage(tokens_in=tokens_in,
                 tokens_out=tokens_out if isinstance(tokens_out, int) else None)


def api_error_text(message: str) -> str:
    """``[API Error: {"error": {"code": 401, "message": ..., "status": ...}}]`` as one line:
    ``401 UNAUTHENTICATED: API key not valid.``; other text as it is."""
    start = message.find("{")
    if start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(message[start:])
        except ValueError:
            value = None
        error = value.get("error") if isinstance(value, dict) else None
        if isinstance(error, dict) and error.get("message"):
            head = " ".join(str(error[k]) for k in ("code", "status") if error.get(k))
            return f"{head}: {error['message']}" if head else str(error["message"])
    return message


def stderr_reason(stderr: str) -> str:
    """The first line of gemini's stderr that says something about this run."""
    for line in _ANSI.sub("", stderr).splitlines():
        line = line.strip()
        if line and not _NOISE.match(line):
            return line[:300]
    return ""


class Gemini:
    name = "gemini"
    binary = "gemini"
    litter: tuple[str, ...] = ()
    native_schema = False

    def invocation(self, lane: Lane) -> Invocation:
        config = gemini_home(lane) / ".gemini"
        (config / "policies").mkdir(parents=True, exist_ok=True)
        (config / "settings.json").write_text(
            json.dumps(settings(lane, os.environ), indent=2) + "\n", "utf-8")
        (config / "policies" / "wtmesh.toml").write_text(policy(), "utf-8")
        argv = ["gemini", "-p", "Follow the task given on stdin.",
                "--approval-mode", "yolo" if lane.edits else "default", "-o", "stream-json"]
        if lane.model:
            argv += ["-m", lane.model]
        argv += lane.args
        env = {"GEMINI_CLI_HOME": str(gemini_home(lane)), "GEMINI_CLI_TRUST_WORKSPACE": "true"}
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return env.get("GOOGLE_GEMINI_BASE_URL") or "https://generativelanguage.googleapis.com"

    def read(self, lane: Lane, done: Completed) -> Transcript:
        events = json_lines(done.stdout)
        result = _object(next((e for e in reversed(events) if e.get("type") == "result"), None))
        t = Transcript(message=final_message(events), denials=denials(events),
                       usage=usage(result.get("stats")))
        error = _object(result.get("error"))
        why = api_error_text(str(error.get("message") or "")) or stderr_reason(done.stderr_tail)
        code = done.returncode
        if code == TURN_LIMIT_EXIT or error.get("type") == "FatalTurnLimitedError":
            t.cap = f"hit its turn cap (model.maxSessionTurns {max_turns(lane)})"
        elif code in UNUSABLE_EXITS:
            t.unavailable = f"exit {code}: {UNUSABLE_EXITS[code]}" + (f": {why}" if why else "")
        elif code != 0 or result.get("status") == "error":
            why = why or f"gemini exited {code}"
            t.unavailable = unavailable_reason(why)
            t.error = f"exit {code}: {first_line(why)}"
        return t


PRESET = Gemini()
