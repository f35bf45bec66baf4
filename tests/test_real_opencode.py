"""The opencode preset with the real ``opencode`` CLI at its pinned version, through the real
``wtmesh run``, sandboxed (the default), against the scripted model server speaking OpenAI
chat completions (``wire_chat.py``): the server is a custom provider ``loop`` with model
``loop/loop``, configured the three ways a user can (``OPENCODE_CONFIG_CONTENT``, the file
``OPENCODE_CONFIG`` names, the global config file), each kept under the preset's own.

``OPENCODE_DISABLE_MODELS_FETCH`` keeps opencode from fetching its model list from the
internet; everything else is as a user runs it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import real_cli
from conftest import PROOF, state_dir, wtmesh
from model_server import ModelServer, Text, ToolCall, Turn
from wire_chat import ChatCompletions

# What the scripted model charges (per million tokens) and reports per request.
PRICE_IN, PRICE_OUT = 3.0, 15.0
TOKENS_IN, TOKENS_OUT = 1000, 100
NEGATE = ToolCall("edit", {"filePath": "calc/ops.py", "oldString": "def add(",
                           "newString": "def negate(a: float) -> float:\n    return -a\n\n\n"
                                        "def add("})
VERDICT = "WTMESH_VERDICT "


def verdict(decision: str, code: str | None, notes: str) -> Text:
    return Text(f"Reviewed the diff.\n{VERDICT}"
                + json.dumps({"decision": decision, "failure_code": code, "notes": notes}))


def provider(url: str) -> dict[str, Any]:
    return {"provider": {"loop": {
        "npm": "@ai-sdk/openai-compatible", "options": {"baseURL": f"{url}/v1", "apiKey": "x"},
        "models": {"loop": {"cost": {"input": PRICE_IN, "output": PRICE_OUT}}}}}}


@dataclass
class Ran:
    summary: dict[str, Any]
    server: ModelServer
    repo: Path
    seconds: float
    first_edit_s: float | None

    @property
    def unit(self) -> dict[str, Any]:
        (unit,) = self.summary["units"]
        return dict(unit)

    def unit_dir(self) -> Path:
        return state_dir(self.repo) / "runs" / self.summary["run_id"] / "units" / "u1"

    def log(self, lane: str) -> str:
        return (self.unit_dir() / f"{lane}.stdout.log").read_text()

    def result(self, lane: str) -> dict[str, Any]:
        return dict(json.loads((self.unit_dir() / f"{lane}.result.json").read_text()))

    def model_requests(self) -> list[dict[str, Any]]:
        """The build agent's requests (those offering tools), not the title requests."""
        return [r.json for r in self.server.requests if r.json and r.json.get("tools")]


@pytest.fixture(scope="module")
def opencode_bin() -> Path:
    return real_cli.bin_dir("opencode")


@pytest.fixture
def home() -> Path:
    return Path(os.environ["HOME"])


@pytest.fixture
def run(repo: Path, write_plan: Any, opencode_bin: Path, tmp_path: Path
        ) -> Iterator[Any]:
    servers: list[ModelServer] = []

    def go(turns: list[Turn], *, coder: dict[str, Any] | None = None,
           fixer: dict[str, Any] | None = None, configure: str = "content",
           url: str | None = None) -> Ran:
        dialect = ChatCompletions(tokens_in=TOKENS_IN, tokens_out=TOKENS_OUT)
        server = ModelServer(dialect, turns).__enter__()
        servers.append(server)
        cfg = json.dumps(provider(url or server.url))
        env = {"PATH": f"{opencode_bin}{os.pathsep}{os.environ['PATH']}",
               "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_CONFIG_CONTENT": ""}
        if configure == "content":
            env["OPENCODE_CONFIG_CONTENT"] = cfg
        elif configure == "file":  # beside the plan: a directory the sandbox shows
            (tmp_path / "opencode.json").write_text(cfg)
            env["OPENCODE_CONFIG"] = str(tmp_path / "opencode.json")
        else:
            global_file = Path(os.environ["HOME"]) / ".config/opencode/opencode.json"
            global_file.parent.mkdir(parents=True, exist_ok=True)
            global_file.write_text(cfg)
        lanes: dict[str, Any] = {"coder": {"timeout_s": 600, "retries": 1, **(coder or {
            "preset": "opencode", "model": "loop/loop"})}}
        if fixer is not None:
            lanes["fixer"] = {"timeout_s": 600, "retries": 1, "preset": "opencode",
                              "model": "loop/loop", **fixer}
        plan = write_plan({"proof_command": PROOF, "lanes": lanes, "units": [
            {"id": "u1", "objective": "Add negate(a) to calc/ops.py",
             "unit_scope": ["calc/"]}]})
        start = time.monotonic()
        res = wtmesh("run", plan, "--json", cwd=repo, env=env, timeout=900)
        seconds = time.monotonic() - start
        assert "Traceback" not in res.stderr + res.stdout, res.stderr
        assert res.returncode in (0, 1), res.stderr
        edits = [at for at, turn in dialect.served
                 if isinstance(turn, ToolCall) and turn.name in ("edit", "write")]
        first = edits[0] - start if edits else None
        return Ran(res.json(), server, repo, seconds, first)

    yield go
    for server in servers:
        server.__exit__(None, None, None)


def say(ran: Ran, what: str) -> None:
    """The figures the issue asks to measure, shown with ``pytest -s``."""
    first = f", first edit after {ran.first_edit_s:.1f} s" if ran.first_edit_s else ""
    sys.stdout.write(f"\n[opencode] {what}: wtmesh run {ran.seconds:.1f} s{first}\n")


# -- what ends a lane ---------------------------------------------------------------------


def test_an_unknown_flag_is_tooling_unavailable_in_one_line(run: Any) -> None:
    """opencode prints its usage and exits 1 on a flag it does not know (no event, no
    "unknown option" text): the lane says which flag, once, not retried."""
    ran = run([], coder={"preset": "opencode", "model": "loop/loop",
                         "args": ["--agent", "build", "--no-such-flag"]})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    notes = ran.result("coder-1")["notes"]
    assert notes == ("opencode: opencode refused its command line (unknown to it: "
                     "--no-such-flag): it printed its usage and exited 1; check the lane's "
                     "args against `opencode run --help`")
    assert not ran.server.requests
