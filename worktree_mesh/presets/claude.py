"""Claude Code: ``claude -p`` (AGENT-CLIS.md, "Claude Code").

- Edits: ``--permission-mode acceptEdits`` with an allow-list of file tools, read-only git
  and the unit's proof command; every other command needs approval, which print mode
  denies (and reports in ``permission_denials``). Commits, pushes and branch moves are also
  on ``--disallowedTools``.
- Non-interactive: ``-p`` (skips the trust dialog), the prompt on stdin.
- Config: claude rewrites its global config ``~/.claude.json`` (a file in HOME) by
  rename. Where HOME is read-only (the sandbox, which lets it write ``~/.claude`` only)
  every save fails, so the preset points ``CLAUDE_CONFIG_DIR`` at ``~/.claude``, where
  claude then keeps that file, and carries the user's ``~/.claude.json`` there (a key
  saved by ``claude /login`` lives in it). A ``CLAUDE_CONFIG_DIR`` the user set is theirs.
- Bounds: ``--max-turns`` (default 60 for a coder or a synthesizer, 30 for a fixer or a
  critic) and, when the plan sets it, ``--max-budget-usd``; issues report the turn cap
  being overshot, so the lane's timeout stays the hard bound.
- A critic reads only: ``--permission-mode dontAsk`` (what is not allowed is denied, never
  asked), the file-reading tools and read-only git allowed, the editing tools disallowed
  (claude then offers the model none: "Write is disabled for this session").
- Output: ``--output-format json``, one result object with a ``subtype``; a fixer's
  verdict and a critic's critique use ``--json-schema`` and come back in
  ``structured_output``. What the lane
  spent: ``total_cost_usd`` and the tokens of ``modelUsage`` (every model call: subagents
  and internal calls too, as the cost; ``usage`` covers the main loop only).
"""

from __future__ import annotations

import json
import os
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
    unavailable_reason,
)
from .critique import verdict_schema

READ_GIT = ("Bash(git diff:*)", "Bash(git status:*)", "Bash(git log:*)", "Bash(git show:*)")
ALLOWED = ("Read", "Edit", "Write", "Glob", "Grep", *READ_GIT)
DISALLOWED = tuple(f"Bash(git {verb}:*)" for verb in (
    "commit", "push", "add", "reset", "stash", "checkout", "switch", "branch", "rebase",
    "merge", "tag"))
# A critic's: reading and read-only git; no editing tool at all.
READ_ONLY = ("Read", "Glob", "Grep", *READ_GIT)
EDITING = ("Edit", "Write", "NotebookEdit")
CAPS = {"error_max_turns": "hit its turn cap (--max-turns {turns})",
        "error_max_budget_usd": "hit its budget cap (--max-budget-usd {budget})"}


def result_object(text: str) -> dict[str, Any] | None:
    """The ``type: result`` object: the whole of stdout, else its last JSON line."""
    candidates = [text.strip()] + [line.strip() for line in reversed(text.splitlines())]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("type") == "result":
            return value
    return None


# Cache writes and reads are input the model was given, billed as such.
_INPUT = ("inputTokens", "cacheCreationInputTokens", "cacheReadInputTokens")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(result: dict[str, Any]) -> Usage | None:
    """Tokens and cost from the result object: ``modelUsage`` summed over models (in
    camelCase), else the main loop's ``usage`` (snake_case); None when it says neither."""
    per_model = result.get("modelUsage")
    models = [m for m in per_model.values() if isinstance(m, dict)] \
        if isinstance(per_model, dict) else []
    main = result.get("usage")
    if not models and isinstance(main, dict):
        models = [{"inputTokens": main.get("input_tokens"),
                   "cacheCreationInputTokens": main.get("cache_creation_input_tokens"),
                   "cacheReadInputTokens": main.get("cache_read_input_tokens"),
                   "outputTokens": main.get("output_tokens")}]
    cost = result.get("total_cost_usd")
    cost_usd = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) \
        else None
    if not models and cost_usd is None:
        return None
    return Usage(tokens_in=sum(_count(m.get(k)) for m in models for k in _INPUT),
                 tokens_out=sum(_count(m.get("outputTokens")) for m in models),
                 cost_usd=cost_usd)


def config_env(env: Mapping[str, str]) -> dict[str, str]:
    """``CLAUDE_CONFIG_DIR`` when claude could not save its global config in HOME but can
    in ``~/.claude``; nothing when HOME is writable (claude as the user runs it) or the
    user chose a config directory."""
    home = env.get("HOME")
    if not home or env.get("CLAUDE_CONFIG_DIR") or os.access(home, os.W_OK):
        return {}
    config_dir = Path(home) / ".claude"
    if not os.access(config_dir, os.W_OK):
        return {}
    carry(Path(home) / ".claude.json", config_dir / ".claude.json")
    return {"CLAUDE_CONFIG_DIR": str(config_dir)}


def carry(user_config: Path, moved: Path) -> None:
    """Copy the user's global config to where claude will look for it, unless the copy
    is as new (claude saves into the copy; the user's changes are newer). Replaced by
    rename, so that a claude reading it at the same time sees one whole file."""
    try:
        source = user_config.stat()
        if moved.exists() and moved.stat().st_mtime_ns >= source.st_mtime_ns:
            return
        data = user_config.read_bytes()
        partial = moved.with_name(f"{moved.name}.wtmesh.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds keys
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.utime(partial, ns=(source.st_atime_ns, source.st_mtime_ns))
        os.replace(partial, moved)
    except OSError:
        return  # none to carry, or it cannot be: claude starts afresh and says what it lacks


def _denial(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    tool = str(entry.get("tool_name", "a tool"))
    tool_input = entry.get("tool_input")
    if isinstance(tool_input, dict) and tool_input.get("command"):
        return f"{tool} `{tool_input['command']}`"
    if isinstance(tool_input, dict) and tool_input.get("file_path"):
        return f"{tool} {tool_input['file_path']}"
    return tool


class Claude:
    name = "claude"
    binary = "claude"
    litter: tuple[str, ...] = ()
    native_schema = True

    def allowed_tools(self, lane: Lane) -> list[str]:
        if not lane.edits:
            return list(READ_ONLY)  # the proof would run on none of the candidates
        tools = list(ALLOWED)
        proof = lane.proof
        # A proof holding the list's own syntax would break the list; it is left out then
        # and the agent is told the command in the prompt only.
        if proof and not any(c in proof for c in ",()"):
            tools.append(f"Bash({proof}:*)")
        return tools

    def max_turns(self, lane: Lane) -> int:
        return lane.max_turns or DEFAULT_MAX_TURNS[lane.role]

    def invocation(self, lane: Lane) -> Invocation:
        disallowed = DISALLOWED if lane.edits else (*EDITING, *DISALLOWED)
        argv = ["claude", "-p", "--output-format", "json",
                "--permission-mode", "acceptEdits" if lane.edits else "dontAsk",
                "--allowedTools", ",".join(self.allowed_tools(lane)),
                "--disallowedTools", ",".join(disallowed),
                "--max-turns", str(self.max_turns(lane)),
                "--no-session-persistence"]
        if lane.max_budget_usd is not None:
            argv += ["--max-budget-usd", f"{lane.max_budget_usd:g}"]
        if lane.model:
            argv += ["--model", lane.model]
        schema = verdict_schema(lane)
        if schema is not None:
            argv += ["--json-schema", json.dumps(schema)]
        argv += lane.args
        env = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               **config_env(os.environ)}
        return Invocation(tuple(argv), env=env, stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        result = result_object(done.stdout)
        if result is None:
            why = first_line(done.stderr_tail, f"claude exited {done.returncode}")
            t.unavailable = unavailable_reason(done.stderr_tail)
            t.error = f"no JSON result ({why})"
            return t
        t.message = str(result.get("result") or "")
        t.usage = usage_of(result)
        subtype = str(result.get("subtype", ""))
        t.denials = [_denial(d) for d in result.get("permission_denials") or []]
        errors = "; ".join(str(e) for e in result.get("errors") or []) or t.message
        if subtype in CAPS:
            t.cap = CAPS[subtype].format(turns=self.max_turns(lane),
                                         budget=f"{lane.max_budget_usd:g}"
                                         if lane.max_budget_usd is not None else "?")
        elif subtype == "error_max_structured_output_retries":
            t.schema_failed = "could not produce a verdict matching the schema"
        elif subtype != "success" or result.get("is_error") or done.returncode != 0:
            t.unavailable = unavailable_reason(errors)
            t.error = f"{subtype or 'error'}: {first_line(errors, 'no detail')}"
        if lane.role in ("fixer", "critic") and result.get("structured_output") is not None:
            t.verdict = result["structured_output"]
        return t


PRESET = Claude()
