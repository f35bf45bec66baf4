"""The Gemini dialect for ``tests/model_server.py``: what gemini-cli (0.61) speaks to
``GOOGLE_GEMINI_BASE_URL`` (AGENT-CLIS.md, "Pointing each CLI at a model server").

- ``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` is the agent's turn: the
  next scripted turn, as SSE chunks of ``GenerateContentResponse`` — a ``functionCall``
  part (``write_file``, ``replace``, ``run_shell_command``, ...) or text parts — with
  ``usageMetadata`` on the last chunk.
- ``POST /v1beta/models/<model>:generateContent`` with a ``responseJsonSchema`` is a side
  request (the model router's ``{complexity_reasoning, complexity_score}`` before the first
  turn, the next-speaker check, loop detection): answered from the schema, no turn taken.
  Without a schema it is a turn, answered in one piece.
- ``:countTokens`` and anything else: answered without a turn.

Every turn reports ``TURN_USAGE`` and every side request ``SIDE_USAGE``, so a test can
tell what gemini's ``stats`` added up.
"""

from __future__ import annotations

import json
from typing import Any

from model_server import Fail, ModelServer, Reply, Request, Text, ToolCall, sse, stream

MODEL_VERSION = "scripted-1"
TURN_USAGE = {"promptTokenCount": 1000, "candidatesTokenCount": 50, "thoughtsTokenCount": 5,
              "totalTokenCount": 1055}
TURN_OUTPUT = 55  # what a turn is billed as output: candidates and thoughts
SIDE_USAGE = {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10}
SIDE_OUTPUT = 3
# Google's error statuses by HTTP code (google.rpc.Code), as the real API names them.
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
           503: "UNAVAILABLE"}


def dialect(server: ModelServer, request: Request) -> Reply:
    method = request.path.rsplit(":", 1)[-1] if ":" in request.path else ""
    body = request.json if request.raw else None
    if method == "countTokens":
        return Reply(body={"totalTokens": 100})
    if method == "generateContent":
        schema = _response_schema(body)
        if schema is not None:
            return _side_answer(schema)
        return _turn_reply(server.next_turn(), streamed=False)
    if method == "streamGenerateContent":
        return _turn_reply(server.next_turn(), streamed=True)
    return Reply(404, {"error": {"code": 404, "message": f"no such method: {request.path}",
                                 "status": "NOT_FOUND"}})


def _response_schema(body: Any) -> dict[str, Any] | None:
    config = body.get("generationConfig") if isinstance(body, dict) else None
    if not isinstance(config, dict):
        return None
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return schema if isinstance(schema, dict) else None


def _side_answer(schema: dict[str, Any]) -> Reply:
    """A JSON answer of the schema's shape: the router hears "simple task", the
    next-speaker check "the user" (so the agent's turn ends when its text does)."""
    value = _value_for(schema)
    return Reply(body=_response([{"text": json.dumps(value)}], SIDE_USAGE))


def _value_for(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    kind = kind.lower() if isinstance(kind, str) else kind
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "user" if "user" in enum else enum[0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _value_for(sub) for name, sub in props.items() if isinstance(sub, dict)}
    if kind in ("number", "integer"):
        low = schema.get("minimum", 1)
        return max(10, low) if isinstance(low, int | float) else 10
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return "scripted"


def _response(parts: list[dict[str, Any]], usage: dict[str, int] | None,
              finish: str | None = "STOP") -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": MODEL_VERSION}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


def _error(turn: Fail) -> Reply:
    status = _STATUS.get(turn.status, "UNKNOWN")
    return Reply(turn.status, {"error": {"code": turn.status, "message": turn.message,
                                         "status": status}})


def _turn_reply(turn: ToolCall | Text | Fail, *, streamed: bool) -> Reply:
    if isinstance(turn, Fail):
        return _error(turn)
    if isinstance(turn, ToolCall):
        chunks = [[{"functionCall": {"name": turn.name, "args": turn.arguments}}]]
    else:
        # Text in two chunks, as a real stream sends it: the CLI must join them.
        half = len(turn.text) // 2
        chunks = [[{"text": turn.text[:half]}], [{"text": turn.text[half:]}]]
    if not streamed:
        parts = [part for chunk in chunks for part in chunk]
        return Reply(body=_response(parts, TURN_USAGE))
    last = len(chunks) - 1
    events = [sse(_response(parts, TURN_USAGE if i == last else None,
                            "STOP" if i == last else None))
              for i, parts in enumerate(chunks)]
    return stream(events)
