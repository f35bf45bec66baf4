"""OpenAI Codex: ``codex exec`` (AGENT-CLIS.md, "OpenAI Codex").

- Edits: ``-s workspace-write`` makes the worktree (``-C``) the only writable root. The
  linked worktree's git directory lies outside it, so ``git commit`` fails inside the
  sandbox: commits are forbidden by construction (the prompt says so too).
- Non-interactive: ``exec`` never asks for approval; the prompt comes on stdin (``-``).
- Bounds: codex has no turn or cost flag; the lane's timeout bounds it.
- Output: ``--json`` JSONL events; ``-o`` keeps the final message; the fixer's verdict uses
  ``--output-schema``.
- Failures: ``turn.failed`` and ``error`` events (codex may exit 0 after a capacity error,
  so the events decide, not only the exit code); a ``command_execution`` item with status
  ``declined`` is a denial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import (
    Completed,
    Invocation,
    Lane,
    Transcript,
    first_line,
    json_lines,
    unavailable_reason,
)
from .prompt import parse_verdict_text


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(event.get("message") or error or "")


class Codex:
    name = "codex"
    binary = "codex"
    litter: tuple[str, ...] = ()
    native_schema = True

    def invocation(self, lane: Lane) -> Invocation:
        argv = ["codex", "exec", "-C", str(lane.worktree), "-s", "workspace-write",
                "--ephemeral", "--json", "-o", str(lane.work_dir / "last-message.txt")]
        if lane.role == "fixer":
            argv += ["--output-schema", str(lane.schema_path)]
        if lane.model:
            argv += ["-m", lane.model]
        argv += [*lane.args, "-"]
        return Invocation(tuple(argv), stdin=lane.prompt_path)

    def api_url(self, lane: Lane, env: Mapping[str, str]) -> str | None:
        return None  # the provider is chosen by configuration wtmesh does not read yet

    def read(self, lane: Lane, done: Completed) -> Transcript:
        t = Transcript()
        errors: list[str] = []
        completed = False
        for event in json_lines(done.stdout):
            kind = event.get("type")
            item = event.get("item")
            item = item if isinstance(item, dict) else {}
            if kind == "item.completed" and item.get("type") == "agent_message":
                t.message = str(item.get("text", ""))
            elif kind == "item.completed" and item.get("type") == "command_execution" \
                    and item.get("status") == "declined":
                t.denials.append(f"command `{item.get('command', '?')}`")
            elif kind == "turn.completed":
                completed = True
            elif kind in ("turn.failed", "error"):
                errors.append(_error_text(event) or kind)
        last = lane.work_dir / "last-message.txt"
        if last.is_file() and last.read_text("utf-8", "replace").strip():
            t.message = last.read_text("utf-8", "replace")
        failed = done.returncode != 0 or (bool(errors) and not completed)
        if failed:
            why = "; ".join(errors) or first_line(done.stderr_tail,
                                                  f"codex exited {done.returncode}")
            t.unavailable = unavailable_reason(why) or unavailable_reason(done.stderr_tail)
            t.error = why
        if lane.role == "fixer":
            t.verdict = parse_verdict_text(t.message)
        return t


PRESET = Codex()
