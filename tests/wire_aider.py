"""The wire format aider speaks with ``--no-stream``: one OpenAI chat completion per model
request (``POST /v1/chat/completions``), answered with one JSON object.

Aider has no tools: with ``--edit-format whole`` an edit is the reply's text itself, the
file's path on a line of its own and then a fenced block holding the whole new file
(``whole_file``). Every reply says what it spent (``usage``), so that aider prints its
``Tokens:`` line (and ``Cost:``, for a model with a price) from the server's figures.
"""

from __future__ import annotations

import itertools
from typing import Any

from model_server import Fail, ModelServer, Reply, Request, Text, ToolCall

PROMPT_TOKENS = 2345
COMPLETION_TOKENS = 67
_ids = itertools.count(1)


def whole_file(path: str, content: str, *, before: str = "", after: str = "") -> str:
    """A reply editing ``path`` in aider's "whole" format, with text around it."""
    body = content if content.endswith("\n") else content + "\n"
    parts = [before, f"{path}\n```\n{body}```", after]
    return "\n\n".join(p for p in parts if p)


def chat_completions(server: ModelServer, request: Request) -> Reply:
    if request.method != "POST" or not request.path.endswith("/chat/completions"):
        return Reply(404, {"error": {"message": f"no such endpoint: {request.path}"}})
    turn = server.next_turn()
    if isinstance(turn, Fail):
        return Reply(turn.status, {"error": {"message": turn.message, "type": "scripted",
                                             "code": str(turn.status)}})
    if isinstance(turn, ToolCall):
        raise TypeError("aider calls no tools: script its edits as Text(whole_file(...))")
    assert isinstance(turn, Text)
    return Reply(body=completion(request.json or {}, turn.text))


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 1767225600,
        "model": body.get("model", "loop"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                  "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    }
