"""The OpenAI chat-completions dialect of the scripted model server (``model_server.py``).

opencode (through ``@ai-sdk/openai-compatible``) and aider (through litellm) both speak
``POST /v1/chat/completions``: opencode streams (``stream: true``), aider with
``--no-stream`` does not. Both forms render the same turn:

- streamed: SSE chunks ``data: {"choices": [{"delta": ...}]}`` (the role, then the text or
  the tool call's name and its arguments in two pieces, as real servers split them), a
  chunk with the ``finish_reason``, a last chunk with ``usage`` and no choices (what
  ``stream_options.include_usage`` asks for), then ``data: [DONE]``;
- not streamed: one ``chat.completion`` object with the message and ``usage``.

A request the CLI makes on the side takes no turn: by default a title request (opencode
names each session with a request that has no tools and a system prompt about titles);
``side`` replaces that test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from model_server import Fail, ModelServer, Reply, Request, Text, ToolCall, Turn, sse, stream

SIDE_TITLE = "Scripted title"


def message_text(message: Any) -> str:
    """The text of one chat message (a string, or a list of content parts)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def is_title_request(body: dict[str, Any]) -> bool:
    """A request for a session title: no tools offered, and a system prompt about titles."""
    if body.get("tools"):
        return False
    system = " ".join(message_text(m) for m in body.get("messages") or []
                      if isinstance(m, dict) and m.get("role") == "system")
    return "title" in system.lower()


@dataclass
class ChatCompletions:
    """A dialect (``ModelServer(ChatCompletions(), turns)``): each model request takes the
    next turn; every reply reports ``tokens_in`` prompt and ``tokens_out`` completion
    tokens, so that a test knows what the CLI should say it spent. ``served`` notes when
    each turn was handed out (``time.monotonic()``), for measuring a CLI's latency."""

    tokens_in: int = 1000
    tokens_out: int = 100
    side: Callable[[dict[str, Any]], bool] = is_title_request
    model: str = "loop"
    served: list[tuple[float, Turn]] = field(default_factory=list)

    def __call__(self, server: ModelServer, request: Request) -> Reply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return Reply(404, {"error": {"message": f"no route {request.method} "
                                                    f"{request.path}"}})
        body = request.json or {}
        if self.side(body):
            turn: Turn = Text(SIDE_TITLE)
        else:
            turn = server.next_turn()
            self.served.append((time.monotonic(), turn))
        if isinstance(turn, Fail):
            return Reply(turn.status, {"error": {"message": turn.message,
                                                 "type": "scripted_error",
                                                 "code": str(turn.status)}})
        n = server.turns_taken
        if body.get("stream"):
            return stream(self._chunks(turn, n))
        return Reply(200, self._completion(turn, n))

    # -- the two renderings ---------------------------------------------------------------

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.tokens_in, "completion_tokens": self.tokens_out,
                "total_tokens": self.tokens_in + self.tokens_out}

    def _envelope(self, n: int, kind: str, **fields: Any) -> dict[str, Any]:
        return {"id": f"chatcmpl-{n}", "object": kind, "created": 1767225600,
                "model": self.model, **fields}

    def _completion(self, turn: ToolCall | Text, n: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(turn, ToolCall):
            message["tool_calls"] = [{"id": f"call_{n}", "type": "function", "function": {
                "name": turn.name, "arguments": json.dumps(turn.arguments)}}]
        else:
            message["content"] = turn.text
        finish = "tool_calls" if isinstance(turn, ToolCall) else "stop"
        return self._envelope(n, "chat.completion", usage=self._usage(), choices=[
            {"index": 0, "message": message, "finish_reason": finish}])

    def _chunk(self, n: int, delta: dict[str, Any] | None = None,
               finish: str | None = None) -> bytes:
        return sse(self._envelope(n, "chat.completion.chunk", choices=[
            {"index": 0, "delta": delta or {}, "finish_reason": finish}]))

    def _chunks(self, turn: ToolCall | Text, n: int) -> Iterator[bytes]:
        yield self._chunk(n, {"role": "assistant", "content": ""})
        if isinstance(turn, ToolCall):
            arguments = json.dumps(turn.arguments)
            half = len(arguments) // 2
            yield self._chunk(n, {"tool_calls": [{
                "index": 0, "id": f"call_{n}", "type": "function",
                "function": {"name": turn.name, "arguments": arguments[:half]}}]})
            yield self._chunk(n, {"tool_calls": [{
                "index": 0, "function": {"arguments": arguments[half:]}}]})
            finish = "tool_calls"
        else:
            yield self._chunk(n, {"content": turn.text})
            finish = "stop"
        yield self._chunk(n, finish=finish)
        yield sse(self._envelope(n, "chat.completion.chunk", choices=[], usage=self._usage()))
        yield sse("[DONE]")
