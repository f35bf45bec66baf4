"""opencode: ``opencode run`` (AGENT-CLIS.md, "opencode"; checked on 1.18.33).

- Edits: ``OPENCODE_PERMISSION`` allows every tool but denies commits, pushes and branch
  moves in bash, and any path outside the working directory (``external_directory``). A
  critic's denies the editing tools (``edit``: edit, write, patch; opencode then offers
  the model none of them) and every command but a few that read (``git diff``, ``ls``,
  ``cat``, ...).
  Explicit deny rules hold even under ``--auto``; a denied call ends as a ``tool_use``
  event in state ``error`` ("The user has specified a rule which prevents you from using
  this specific tool call"). 1.18.33 prints no ``done`` event (older versions listed
  auto-rejected asks in ``done.rejected``; both are read).
- Non-interactive: ``run`` auto-rejects any "ask"; ``--auto`` (recent versions) and the
  allow rules (older ones) keep asks from happening. The prompt comes on stdin.
- Configuration: opencode deep-merges, in this order, its global config files, the file
  ``OPENCODE_CONFIG`` names, the project's ``opencode.json``, ``.opencode/`` and
  ``OPENCODE_CONFIG_DIR``, then ``OPENCODE_CONFIG_CONTENT``. The preset sets the last one,
  merged over the user's own, so a provider configured anywhere is kept.
- Bounds: the build agent's ``steps`` (default 60 for a coder or a synthesizer, 30 for a
  fixer or a critic). Reaching it is not an error and no event says so: opencode adds a
  "MAXIMUM STEPS REACHED" message to its last allowed request, telling the model to
  answer in text (tools stay offered, so a model that ignores it goes on). A run of that
  many steps or more hit the cap.
- Output: ``--format json`` events; a verdict or a critique (no schema feature) is a
  marked line (or a JSON block) in the last text; ``step_finish`` carries each step's
  tokens and cost. A flag opencode does not know makes it print its usage to stderr and
  exit 1, with no event; so does a configuration it cannot use, with an ``Error: ...``
  line instead. A model or provider it does not know is one ``error`` event,
  "Unexpected server error", and exit 1: which model is only in its log, printed to
  stderr (``--print-logs``, errors only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
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

FORBIDDEN_BASH = tuple(f"git {verb}*" for verb in (
    "commit", "push", "add", "reset", "stash", "checkout", "switch", "branch", "rebase",
    "merge", "tag"))
PERMISSION: dict[str, Any] = {
    "*": "allow",
    "external_directory": "deny",
    # "*" first: the last matching rule wins.
    "bash": {"*": "allow", **{pattern: "deny" for pattern in FORBIDDEN_BASH}},
}
# A critic's: no editing tool, and only commands that read.
READING_BASH = ("git diff*", "git status*", "git log*", "git show*", "ls*", "cat *",
                "head *", "tail *", "grep *", "rg *", "find *", "wc *")
CRITIC_PERMISSION: dict[str, Any] = {
    "*": "allow",
    "edit": "deny",
    "external_directory": "deny",
    "bash": {"*": "deny", **dict.fromkeys(READING_BASH, "allow")},
}
# A deny rule ("specified a rule which prevents"), an ask auto-rejected ("rejected
# permission"), and older wordings.
_REFUSED = re.compile(r"rule which prevents you from using|rejected permission"
                      r"|not allowed by permission|permission denied by", re.IGNORECASE)
# What opencode prints instead of events when its command line does not parse (yargs).
_USAGE = re.compile(r"^opencode run \[message\.\.\]|^Options:\s*$", re.MULTILINE)
_UNREACHABLE = "Cannot connect to API"
# Fatal errors opencode prints on stderr (no event) when its configuration is unusable.
_CONFIG_ERROR = re.compile(r"^Error: *(Config file at .* is not valid|Configuration is invalid"
                           r"|Directory .* is not valid|Failed to initialize provider).*",
                           re.MULTILINE)
# A model (or provider) opencode does not know. 1.18.33 says so only in its log (the one
# event is "Unexpected server error"), hence ``--print-logs --log-level ERROR``; suggestions
# follow when it has any: "Model not found: loop/loo. Did you mean: loop?".
_NO_MODEL = re.compile(r"Model not found: (?P<model>[^\s\")]*?)\.?(?=[\s\")]|$)"
                       r"(?: Did you mean: (?P<hint>[^\"\n]*?)\?)?")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The free hosted models (provider "opencode") opencode uses when nothing else is set up.
ZEN_URL = "https://opencode.ai/zen/v1"
# Variables naming a provider's key or token: with one set (or a login in auth.json),
# opencode may pick that provider rather than its free one when no model is given.
_CREDENTIAL = re.compile(r"_(API_KEY|API_TOKEN|TOKEN|ACCESS_KEY|PAT)$")


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


# -- configuration -----------------------------------------------------------------------

_JSONC_NOISE = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/|,(?=\s*[}\]])', re.DOTALL)


def jsonc(text: str) -> Any:
    """JSON with comments and trailing commas, as opencode reads its config (raises
    ValueError when it is not that)."""
    return json.loads(_JSONC_NOISE.sub(lambda m: m.group(1) or "", text))


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base``, as opencode merges its config sources."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merged(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


def config(lane: Lane, theirs_text: str | None = None) -> str:
    """``OPENCODE_CONFIG_CONTENT``: the user's own (the lane's environment), with sharing
    off and the build agent's steps cap on top. A user's content that does not parse is
    passed on as it is: opencode then says what is wrong with it, where replacing it
    would silently drop the provider the user chose."""
    steps = lane.max_turns or DEFAULT_MAX_TURNS[lane.role]
    ours: dict[str, Any] = {"share": "disabled", "agent": {"build": {"steps": steps}}}
    if theirs_text is None:
        theirs_text = os.environ.get("OPENCODE_CONFIG_CONTENT") or ""
    if not theirs_text.strip():
        return json.dumps(ours)
    try:
        theirs = jsonc(theirs_text)
    except ValueError:
        return theirs_text
    return json.dumps(merged(theirs, ours)) if isinstance(theirs, dict) else theirs_text


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return _dict(jsonc(path.read_text("utf-8")))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def config_files(lane: Lane, env: Mapping[str, str]) -> list[Path]:
    """The config files opencode reads for this lane, lowest precedence first."""
    home = env.get("HOME", "")
    config_home = Path(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"))
    files = [config_home / "opencode" / name
             for name in ("config.json", "opencode.json", "opencode.jsonc")]
    if env.get("OPENCODE_CONFIG"):
        files.append(Path(env["OPENCODE_CONFIG"]))
    if not env.get("OPENCODE_DISABLE_PROJECT_CONFIG"):
        files += [lane.worktree / "opencode.json", lane.worktree / "opencode.jsonc"]
    dirs = [lane.worktree / ".opencode",
            *([Path(env["OPENCODE_CONFIG_DIR"])] if env.get("OPENCODE_CONFIG_DIR") else [])]
    files += [d / name for d in dirs for name in ("opencode.json", "opencode.jsonc")]
    return files


def effective_config(lane: Lane, env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in config_files(lane, env):
        out = merged(out, _read_config(path))
    try:
        content = jsonc(env.get("OPENCODE_CONFIG_CONTENT") or "{}")
    except ValueError:
        content = {}
    return merged(out, _dict(content))


def _model_in_args(args: Iterable[str]) -> str | None:
    found, args = None, list(args)
    for i, arg in enumerate(args):
        if arg in ("-m", "--model") and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--model="):
            found = arg.split("=", 1)[1]
    return found


def _has_credentials(env: Mapping[str, str]) -> bool:
    data_home = Path(env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", ""),
                                                              ".local/share"))
    return (any(_CREDENTIAL.search(name) and value and name != "OPENCODE_API_KEY"
                for name, value in env.items())
            or bool(env.get("OPENCODE_AUTH_CONTENT"))
            or (data_home / "opencode" / "auth.json").exists())


def provider_id(lane: Lane, cfg: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The provider opencode will call, or None when wtmesh cannot tell. Without a model,
    opencode takes one from the providers the config names (so one named is the one), else
    from those it finds credentials for, else its free hosted ones."""
    model = _model_in_args(lane.args) or lane.model or cfg.get("model")
    if isinstance(model, str) and "/" in model:
        return model.split("/", 1)[0]
    providers = list(_dict(cfg.get("provider")))
    if len(providers) == 1:
        return providers[0]
    if not providers and not _has_credentials(env):
        return "opencode"
    return None


def _substituted(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\{env:([^}]+)\}", lambda m: env.get(m.group(1), ""), text)


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
        argv = ["opencode", "run", "--dir", str(lane.worktree), "--format", "json", "--auto",
                "--print-logs", "--log-level", "ERROR"]
        if lane.model:
            argv += ["-m", lane.model]
        argv += lane.args
        permission = PERMISSION if lane.edits else CRITIC_PERMISSION
        env = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_CONFIG_CONTENT": config(lane),
               "OPENCODE_PERMISSION": json.dumps(permission)}
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        """The chosen provider's ``options.baseURL`` in the config opencode will read;
        for its free hosted models, OpenCode Zen; None for any other provider without a
        configured base URL (its URL comes from opencode's model database)."""
        cfg = effective_config(lane, env)
        provider = provider_id(lane, cfg, env)
        if provider is None:
            return None
        base = _dict(_dict(_dict(cfg.get("provider")).get(provider)).get("options")).get(
            "baseURL")
        if isinstance(base, str) and base:
            return _substituted(base, env)
        return ZEN_URL if provider == "opencode" else None

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        events = json_lines(done.stdout)
        stderr = _ANSI.sub("", done.stderr_tail)  # its errors are coloured
        missing = _NO_MODEL.search(stderr) if done.returncode != 0 else None
        if missing:
            hint = f" (did you mean {missing['hint']}?)" if missing["hint"] else ""
            why = (f"opencode knows no model {missing['model']}{hint}: check it against "
                   "`opencode models`")
            return Transcript(unavailable=why, error=why)
        if done.returncode != 0 and not events:
            if _USAGE.search(stderr):
                return self._refused_command_line(lane, done)
            fatal = _CONFIG_ERROR.search(stderr)
            if fatal:
                why = fatal.group(0).removeprefix("Error:").strip().rstrip(":")
                return Transcript(unavailable=why, error=why)
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
            why = "; ".join(errors) or first_line(stderr, f"opencode exited {done.returncode}")
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
