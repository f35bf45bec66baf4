"""The OpenAI Responses dialect for ``tests/model_server.py``: what ``codex exec`` speaks
when a model provider with ``wire_api="responses"`` points it at the scripted server.

Codex posts ``/v1/responses`` with ``stream: true`` and reads server-sent events:
``response.created``, one ``response.output_item.added``/``.done`` pair per output item (a
``function_call`` to one of its tools, ``exec_command`` or ``shell`` for a command, or an
assistant ``message`` with ``output_text``), then ``response.completed`` with the usage.
A fixer's ``--output-schema`` arrives as ``text.format = {type: "json_schema", ...}``: the
answer is a message whose text is the verdict JSON (a ``Text`` turn carrying it).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

from model_server import Fail, ModelServer, Reply, Request, Text, ToolCall, sse, stream

from worktree_mesh.presets.versions import TESTED

VERSION = TESTED["codex"].version

# What every scripted response says it spent (read back from codex's turn.completed).
TOKENS_IN = 1200
TOKENS_CACHED = 200
TOKENS_OUT = 34

_ids = itertools.count(1)


def usage() -> dict[str, Any]:
    return {"input_tokens": TOKENS_IN, "input_tokens_details": {"cached_tokens": TOKENS_CACHED},
            "output_tokens": TOKENS_OUT, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": TOKENS_IN + TOKENS_OUT}


def _item(turn: Text | ToolCall) -> dict[str, Any]:
    n = next(_ids)
    if isinstance(turn, ToolCall):
        return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}",
                "name": turn.name, "arguments": json.dumps(turn.arguments),
                "status": "completed"}
    return {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": turn.text, "annotations": []}]}


def _events(item: dict[str, Any]) -> Iterator[bytes]:
    response_id = f"resp_{next(_ids)}"
    yield sse({"type": "response.created",
               "response": {"id": response_id, "object": "response", "status": "in_progress"}},
              "response.created")
    yield sse({"type": "response.output_item.added", "output_index": 0, "item": item},
              "response.output_item.added")
    yield sse({"type": "response.output_item.done", "output_index": 0, "item": item},
              "response.output_item.done")
    yield sse({"type": "response.completed",
               "response": {"id": response_id, "object": "response", "status": "completed",
                            "output": [item], "usage": usage()}},
              "response.completed")


def responses(server: ModelServer, request: Request) -> Reply:
    """One model request of codex: the script's next turn, as Responses events."""
    if request.method != "POST" or not request.path.endswith("/responses"):
        # Nothing else is asked of a provider with wire_api="responses"; a WebSocket
        # upgrade (codex's own OpenAI provider tries one first) is refused.
        return Reply(404, {"error": {"message": f"no {request.method} {request.path} here"}})
    turn = server.next_turn()
    if isinstance(turn, Fail):
        return Reply(turn.status, {"error": {"message": turn.message, "type": "scripted",
                                             "code": str(turn.status)}})
    return stream(_events(_item(turn)))


def schema_of(request: Request) -> dict[str, Any] | None:
    """The ``text.format`` a request asked for (a fixer's verdict schema), if any."""
    body = request.json or {}
    text = body.get("text") if isinstance(body, dict) else None
    fmt = text.get("format") if isinstance(text, dict) else None
    return fmt if isinstance(fmt, dict) else None


def tool_names(request: Request) -> list[str]:
    body = request.json or {}
    return [str(t.get("name") or t.get("type")) for t in body.get("tools") or []]


def prompt_text(request: Request) -> str:
    """Every text the request carries (instructions and input), for asserting on it."""
    return json.dumps(request.json or {})


def provider_args(url: str) -> list[str]:
    """The preset ``args`` that point codex at ``url`` (the server's root) as model
    provider ``loop``, its key in ``$LOOP_KEY`` (the lane's model: any name)."""
    provider = (f'model_providers.loop={{name="loop",base_url="{url}/v1",'
                'env_key="LOOP_KEY",wire_api="responses"}')
    return ["-c", 'model_provider="loop"', "-c", provider]
