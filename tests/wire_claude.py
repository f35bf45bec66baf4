"""The Anthropic messages dialect of the scripted model server, as Claude Code speaks it
(AGENT-CLIS.md, "Pointing each CLI at a model server"): ``POST /v1/messages?beta=true``
with ``stream: true``, answered in server-sent events — ``message_start``, one content
block (``tool_use`` with ``input_json_delta``, or ``text`` with ``text_delta``),
``message_delta`` with the stop reason and usage, ``message_stop``.

Only the agent's own requests take a turn: those carrying the agent's tools. What claude
asks on the side — a token count, a non-streamed call, a small-model request without
tools (a title, a quota check) — is answered with a short text and no turn.

A tool call's string arguments may hold ``{cwd}``: it becomes the working directory
claude states in the request (the unit's worktree, which no test knows in advance).
Every message reports ``USAGE`` (the same for each), so a test knows exactly what the
CLI should say it spent: ``Anthropic.expected_usage``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from model_server import Fail, ModelServer, Reply, Request, Text, ToolCall, Turn, sse, stream

# What every message says it used: cache writes and reads are input tokens too.
USAGE = {"input_tokens": 100, "cache_creation_input_tokens": 20,
         "cache_read_input_tokens": 30, "output_tokens": 7}
SIDE_TEXT = "ok"
# Failures the server marks final with the header Anthropic's clients obey: without it
# claude 2.1.332 retries a 401 ten times with backoff (measured: 183 s) before it says
# "Invalid API key", a wait no test should spend.
FINAL = {401, 403}


def is_turn(request: Request) -> bool:
    """A request of the agent's own loop: a streamed message call offering tools."""
    body = request.json if request.method == "POST" else None
    return (request.path.endswith("/v1/messages") and isinstance(body, dict)
            and bool(body.get("stream")) and bool(body.get("tools")))


_CWD = re.compile(r"Primary working directory: (.+)")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def working_directory(request: Request) -> str | None:
    """The directory claude says it works in: its environment section, wherever in the
    request this version puts it (a system block, a system-role message)."""
    for text in _strings(request.json):
        found = _CWD.search(text)
        if found:
            return found.group(1).strip()
    return None


def system_text(request: Request) -> str:
    """The system prompt of a message request, whichever shape it came in."""
    system = request.json.get("system") or ""
    if isinstance(system, str):
        return system
    return "\n".join(str(part.get("text", "")) for part in system if isinstance(part, dict))


def tool_result(request: Request) -> str:
    """The text of the last tool result the request carries back to the model."""
    for message in reversed(request.json.get("messages") or []):
        content = message.get("content")
        for block in reversed(content if isinstance(content, list) else []):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                return "\n".join(_strings(block.get("content")))
    return ""


def tool_names(request: Request) -> list[str]:
    return [str(tool.get("name")) for tool in request.json.get("tools") or []]


NO_USAGE = dict.fromkeys(USAGE, 0)


def _message(model: str, count: int, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": f"msg_{count:04d}", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": min(1, usage["output_tokens"])}}


def _events(turn: ToolCall | Text, model: str, count: int,
            usage: dict[str, int] = USAGE) -> Iterator[bytes]:
    start = _message(model, count, usage)
    yield sse({"type": "message_start", "message": start}, "message_start")
    if isinstance(turn, ToolCall):
        block = {"type": "tool_use", "id": f"toolu_{count:04d}", "name": turn.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(turn.arguments)}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": turn.text}
        stop = "end_turn"
    yield sse({"type": "content_block_start", "index": 0, "content_block": block},
              "content_block_start")
    yield sse({"type": "content_block_delta", "index": 0, "delta": delta},
              "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    yield sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
               "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def _error(fail: Fail) -> Reply:
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
            529: "overloaded_error"}.get(fail.status, "api_error")
    return Reply(fail.status, {"type": "error", "error": {"type": kind, "message": fail.message}},
                 headers={"x-should-retry": "false"} if fail.status in FINAL else {})


def _side(request: Request) -> Reply:
    """An answer that takes no turn: a token count, or a short text in the shape asked."""
    body = request.json if request.raw else {}
    if request.path.endswith("/count_tokens"):
        return Reply(body={"input_tokens": 1})
    if not request.path.endswith("/v1/messages") or not isinstance(body, dict):
        return Reply(404, {"type": "error", "error": {"type": "not_found_error",
                                                      "message": request.path}})
    model = str(body.get("model", "claude"))
    if body.get("stream"):
        return stream(_events(Text(SIDE_TEXT), model, 0, NO_USAGE))
    return Reply(body={**_message(model, 0, NO_USAGE), "stop_reason": "end_turn",
                       "content": [{"type": "text", "text": SIDE_TEXT}]})


def _in_cwd(value: Any, cwd: str) -> Any:
    if isinstance(value, str):
        return value.replace("{cwd}", cwd)
    if isinstance(value, dict):
        return {k: _in_cwd(v, cwd) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_cwd(v, cwd) for v in value]
    return value


@dataclass(frozen=True)
class Answered:
    at: float  # time.time() when the request arrived
    request: Request
    turn: Turn


class Anthropic:
    """The dialect (``ModelServer(Anthropic(), turns)``): the next turn for the agent's
    requests, a side answer for the rest; ``answered`` keeps each turn given, and when."""

    def __init__(self) -> None:
        self.answered: list[Answered] = []
        self._lock = threading.Lock()

    def __call__(self, server: ModelServer, request: Request) -> Reply:
        if not is_turn(request):
            return _side(request)
        arrived = time.time()
        turn: Turn = server.next_turn()
        if isinstance(turn, ToolCall):
            turn = ToolCall(turn.name, _in_cwd(turn.arguments, working_directory(request) or ""))
        with self._lock:
            self.answered.append(Answered(arrived, request, turn))
        if isinstance(turn, Fail):
            return _error(turn)
        model = str(request.json.get("model", "claude"))
        return stream(_events(turn, model, server.turns_taken))

    def expected_usage(self) -> dict[str, int]:
        """The tokens claude should report: ``USAGE`` for each message the server sent
        (a scripted failure sends none); cache writes and reads count as input."""
        with self._lock:
            messages = sum(not isinstance(a.turn, Fail) for a in self.answered)
        return {"tokens_in": messages * (USAGE["input_tokens"]
                                         + USAGE["cache_creation_input_tokens"]
                                         + USAGE["cache_read_input_tokens"]),
                "tokens_out": messages * USAGE["output_tokens"]}

    def first_call_of(self, *tools: str) -> Answered | None:
        with self._lock:
            return next((a for a in self.answered
                         if isinstance(a.turn, ToolCall) and a.turn.name in tools), None)
