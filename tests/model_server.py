"""A scripted model server on 127.0.0.1, for running the real agent CLIs offline.

A test gives the server a *dialect* (the wire format one CLI speaks: OpenAI chat
completions or responses, Anthropic messages, Gemini generateContent; see
AGENT-CLIS.md) and a script of *turns* — what the model says next: call a tool, answer
with text, fail with an HTTP error. Each of the CLI's model requests takes the next turn;
requests a CLI makes on the side (a title, a routing question, a token count) are
answered by the dialect without using one. Every request is recorded, so a test can
assert what the CLI sent (the prompt, the tools, the schema). The script running out is
itself an answer: the model says it is done.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Fail:
    status: int
    message: str = "scripted failure"


Turn = ToolCall | Text | Fail
DONE = Text("Done.")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes
    events: Iterable[bytes] | None = None  # a stream, each piece written and flushed
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (or as is, if bytes or str)."""
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = json.dumps(data).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


def stream(events: Iterable[bytes]) -> Reply:
    return Reply(events=events, content_type="text/event-stream")


Dialect = Callable[["ModelServer", Request], Reply]


class ModelServer:
    """``with ModelServer(dialect, turns) as server:`` — listening on ``server.url``."""

    def __init__(self, dialect: Dialect, turns: Iterable[Turn] = ()) -> None:
        self.dialect = dialect
        self._turns: list[Turn] = list(turns)
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.turns_taken = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the requests are recorded, not printed

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                request = Request(self.command, split.path, parse_qs(split.query),
                                  {k.lower(): v for k, v in self.headers.items()}, raw)
                with server._lock:
                    server.requests.append(request)
                try:
                    reply = server.dialect(server, request)
                except Exception as exc:  # noqa: BLE001 - a dialect bug shows as a 500
                    reply = Reply(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.events is not None:
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in reply.events:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    self.close_connection = True
                    return
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(
                    reply.body if reply.body is not None else {}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_turn(self) -> Turn:
        """The script's next turn (``DONE`` once it has run out)."""
        with self._lock:
            self.turns_taken += 1
            return self._turns.pop(0) if self._turns else DONE

    def requests_to(self, path_part: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path_part in r.path]

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: an unreachable model API."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def iter_lines(text: str) -> Iterator[str]:
    yield from text.splitlines()
