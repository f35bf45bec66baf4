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

import preset_run
import pytest
import real_cli
from conftest import PY, git
from model_server import Fail, ModelServer, Text, ToolCall, Turn, closed_port
from wire_chat import ChatCompletions

from worktree_mesh.presets import opencode
from worktree_mesh.presets.base import Completed, Lane
from worktree_mesh.sandbox import PRESET_WRITABLE

# What the scripted model charges (per million tokens) and reports per request.
PRICE_IN, PRICE_OUT = 3.0, 15.0
TOKENS_IN, TOKENS_OUT = 1000, 100
NEGATE = ToolCall("edit", {"filePath": "calc/ops.py", "oldString": "def add(",
                           "newString": "def negate(a: float) -> float:\n    return -a\n\n\n"
                                        "def add("})
VERDICT = "WTMESH_VERDICT "
UNIT = {"id": "u1", "objective": "Add negate(a) to calc/ops.py", "unit_scope": ["calc/"]}
LOOP = {"preset": "opencode", "model": "loop/loop"}  # the scripted server, as configured


def verdict(decision: str, code: str | None, notes: str) -> Text:
    return Text(f"Reviewed the diff.\n{VERDICT}"
                + json.dumps({"decision": decision, "failure_code": code, "notes": notes}))


def provider(url: str) -> dict[str, Any]:
    return {"provider": {"loop": {
        "npm": "@ai-sdk/openai-compatible", "options": {"baseURL": f"{url}/v1", "apiKey": "x"},
        "models": {"loop": {"cost": {"input": PRICE_IN, "output": PRICE_OUT}}}}}}


@dataclass
class Ran(preset_run.Ran):
    server: ModelServer
    seconds: float
    first_edit_s: float | None

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
def run(repo: Path, opencode_bin: Path, tmp_path: Path) -> Iterator[Any]:
    servers: list[ModelServer] = []

    def go(turns: list[Turn], *, coder: dict[str, Any] | None = None,
           fixer: dict[str, Any] | None = None, configure: str = "content",
           url: str | None = None) -> Ran:
        dialect = ChatCompletions(tokens_in=TOKENS_IN, tokens_out=TOKENS_OUT)
        server = ModelServer(dialect, turns).__enter__()
        servers.append(server)
        cfg = json.dumps(provider(url or server.url))
        env = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_CONFIG_CONTENT": ""}
        if configure == "content":
            env["OPENCODE_CONFIG_CONTENT"] = cfg
        elif configure == "broken":
            env["OPENCODE_CONFIG_CONTENT"] = cfg[:-1] + ",,}"
        elif configure == "file":  # beside the plan: a directory the sandbox shows
            (tmp_path / "opencode.json").write_text(cfg)
            env["OPENCODE_CONFIG"] = str(tmp_path / "opencode.json")
        else:
            global_file = Path(os.environ["HOME"]) / ".config/opencode/opencode.json"
            global_file.parent.mkdir(parents=True, exist_ok=True)
            global_file.write_text(cfg)
        plan = preset_run.plan(coder or LOOP, None if fixer is None else {**LOOP, **fixer},
                               unit=UNIT, lane={"timeout_s": 600, "retries": 1})
        start = time.monotonic()
        ran = preset_run.run(repo, plan, bin_dir=opencode_bin, env=env)
        seconds = time.monotonic() - start
        edits = [at for at, turn in dialect.served
                 if isinstance(turn, ToolCall) and turn.name in ("edit", "write")]
        first = edits[0] - start if edits else None
        return Ran(**vars(ran), server=server, seconds=seconds, first_edit_s=first)

    yield go
    for server in servers:
        server.__exit__(None, None, None)


def say(ran: Ran, what: str) -> None:
    """The figures the issue asks to measure, shown with ``pytest -s``."""
    first = f", first edit after {ran.first_edit_s:.1f} s" if ran.first_edit_s else ""
    sys.stdout.write(f"\n[opencode] {what}: wtmesh run {ran.seconds:.1f} s{first}\n")


# -- a coder that edits and lands ---------------------------------------------------------


def told_to_stop(ran: Ran) -> list[bool]:
    """Per request of the build agent: did opencode say its steps cap was reached?"""
    return ["MAXIMUM STEPS REACHED" in json.dumps(r["messages"]) for r in ran.model_requests()]


def test_coder_edit_lands_and_its_usage_is_recorded(run: Any, repo: Path, home: Path) -> None:
    # Two steps, one under the cap: not read as the cap.
    ran = run([NEGATE, Text("Added negate to calc/ops.py.")],
              coder={**LOOP, "max_turns": 3})
    say(ran, "coder edit")
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("integrated", None), ran.unit
    assert "def negate(a: float) -> float:" in git(repo, "show", "main:calc/ops.py")
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/ops.py"
    # The provider came from the user's OPENCODE_CONFIG_CONTENT, merged under the preset's.
    first = ran.model_requests()[0]
    assert first["model"] == "loop"
    assert {"edit", "write", "bash"} <= {t["function"]["name"] for t in first["tools"]}
    assert "Add negate(a) to calc/ops.py" in json.dumps(first["messages"])
    assert told_to_stop(ran) == [False, False]
    # Two steps of 1000 in and 100 out each, at the configured price.
    cost = 2 * (TOKENS_IN * PRICE_IN + TOKENS_OUT * PRICE_OUT) / 1e6
    assert ran.result("coder-1")["usage"] == {
        "tokens_in": 2 * TOKENS_IN, "tokens_out": 2 * TOKENS_OUT, "cost_usd": cost}
    # Sandboxed, opencode wrote only where the preset lets it, and it used each of them.
    for entry in PRESET_WRITABLE["opencode"]:
        assert any((home / entry[2:]).iterdir()), f"{entry} stayed empty: not needed?"


# -- a fixer that accepts, one that rejects ------------------------------------------------

WRITE_VALUE = [PY, "-c", "open('calc/extra.py', 'w').write('VALUE = 1\\n')"]


@pytest.mark.parametrize(("decision", "code", "status"), [
    ("accept", None, ("integrated", None)),
    ("reject", "proof_missing", ("rejected", "proof_missing"))])
def test_fixer_verdict_decides(run: Any, repo: Path, decision: str, code: str | None,
                               status: tuple[str, str | None]) -> None:
    head = git(repo, "rev-parse", "main")
    ran = run([verdict(decision, code, "nothing tests VALUE")],
              coder={"command": WRITE_VALUE}, fixer={}, configure="file")
    say(ran, f"fixer {decision}")
    assert (ran.unit["status"], ran.unit["failure_code"]) == status, ran.unit
    assert "+VALUE = 1" in json.dumps(ran.model_requests()[0]["messages"])  # the diff, inline
    if decision == "accept":
        assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    else:
        assert git(repo, "rev-parse", "main") == head
        assert ran.result("fixer-1")["notes"] == "nothing tests VALUE"


# -- what ends a lane ---------------------------------------------------------------------


def test_a_denied_command_requires_clarification(run: Any) -> None:
    commit = ToolCall("bash", {"command": "git commit -qam wip", "description": "Commit"})
    ran = run([NEGATE, commit, Text("Edited; committing was not allowed.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "requires_clarification"), ran.unit
    assert ran.unit["attempts"] == 1
    assert "opencode was denied: bash `git commit -qam wip`" in ran.result("coder-1")["notes"]


def test_the_steps_cap_is_timeout_retry_exhausted(run: Any) -> None:
    """On its last allowed step opencode tells the model to stop and answer in text; no
    event says so. (A run that ends before the cap lands: the coder test above.)"""
    ran = run([NEGATE, Text("Maximum steps reached: negate is added, tests are not.")],
              coder={**LOOP, "max_turns": 2})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "timeout_retry_exhausted"), ran.unit
    assert ran.unit["attempts"] == 1  # a cap is not worth a retry
    assert told_to_stop(ran) == [False, True]
    assert "used all 2 of its steps" in ran.result("coder-1")["notes"]


def test_refused_credentials_are_tooling_unavailable(run: Any) -> None:
    ran = run([Fail(401, "scripted failure")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result("coder-1")["notes"] == (
        "opencode: the model API refused the request (HTTP 401): scripted failure")


def test_an_unreachable_api_is_tooling_unavailable_and_opencode_never_starts(
        run: Any) -> None:
    """The provider in the user's global config file points where nothing listens: the
    lane ends before opencode starts (it would retry for about 70 s), once."""
    port = closed_port()
    ran = run([], configure="global", url=f"http://127.0.0.1:{port}")
    say(ran, "unreachable API")
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    log = ran.log("coder-1")
    assert f"result: reject (tooling_unavailable): cannot reach the model API: 127.0.0.1:{port}" \
        in log
    assert "wtmesh-preset: running:" not in log


def test_a_users_config_that_does_not_parse_is_refused_not_replaced(run: Any) -> None:
    """Replacing it with the preset's own would run opencode on its default provider."""
    ran = run([], configure="broken")
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result("coder-1")["notes"] == (
        "opencode: Config file at OPENCODE_CONFIG_CONTENT is not valid JSON(C)")
    assert not ran.server.requests


def test_an_unknown_flag_is_tooling_unavailable_in_one_line(run: Any) -> None:
    """opencode prints its usage and exits 1 on a flag it does not know (no event, no
    "unknown option" text): the lane says which flag, once, not retried."""
    ran = run([], coder={**LOOP, "args": ["--agent", "build", "--no-such-flag"]})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    notes = ran.result("coder-1")["notes"]
    assert notes == ("opencode: opencode refused its command line (unknown to it: "
                     "--no-such-flag): it printed its usage and exited 1; check the lane's "
                     "args against `opencode run --help`")
    assert not ran.server.requests


@pytest.mark.parametrize(("model", "hint"), [
    ("loop/nosuch", ""), ("nosuch/loop", ""), ("loop/loo", " (did you mean loop?)")],
    ids=["unknown-model", "unknown-provider", "a-near-miss"])
def test_a_model_opencode_does_not_know_is_tooling_unavailable(
        run: Any, model: str, hint: str) -> None:
    """opencode's only event says "Unexpected server error" (for an unknown model and an
    unknown provider alike); the model it could not find is in its error log. A
    configuration error: said in one line naming the model, not retried."""
    ran = run([], coder={"preset": "opencode", "model": model})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result("coder-1")["notes"] == (
        f"opencode: opencode knows no model {model}{hint}: check it against "
        "`opencode models`")
    assert not ran.server.requests


# -- which API the CLI will call (no CLI run) ---------------------------------------------


def lane_in(tmp_path: Path, **fields: Any) -> Lane:
    return Lane(preset="opencode", role="coder", unit={"id": "u1"}, worktree=tmp_path,
                result_path=tmp_path / "r.json", work_dir=tmp_path / "w", diff=None,
                **fields)


@pytest.mark.parametrize(("model", "content", "env", "url"), [
    # A model names its provider; that provider's baseURL.
    ("loop/loop", provider("http://h:1"), {}, "http://h:1/v1"),
    # No model: the only configured provider.
    (None, provider("http://h:1"), {}, "http://h:1/v1"),
    # Nothing configured, no credentials: opencode's free hosted models.
    (None, {}, {}, "https://opencode.ai/zen/v1"),
    # ... but with a key in the environment opencode may pick that provider instead.
    (None, {}, {"ANTHROPIC_API_KEY": "k"}, None),
    # A built-in provider without a baseURL: its URL is in opencode's model database.
    ("anthropic/claude-sonnet-4-5", {}, {}, None),
    # {env:...} substitution, as opencode does.
    ("loop/loop", provider("{env:LOOP_URL}"), {"LOOP_URL": "http://e:2"}, "http://e:2/v1"),
])
def test_api_url_follows_the_config_opencode_reads(
        tmp_path: Path, model: str | None, content: dict[str, Any], env: dict[str, str],
        url: str | None) -> None:
    lane = lane_in(tmp_path, model=model)
    environment = {"HOME": str(tmp_path / "home"),
                   "OPENCODE_CONFIG_CONTENT": opencode.config(lane, json.dumps(content)),
                   **env}
    assert opencode.PRESET.api_url(lane, environment) == url


def test_the_preset_config_keeps_the_users_own(tmp_path: Path) -> None:
    lane = lane_in(tmp_path, max_turns=7)
    theirs = ('{\n  // mine\n  "provider": {"loop": {"options": {"baseURL": "http://h/v1"}}},\n'
              '  "agent": {"build": {"temperature": 0.1, "steps": 99}, "plan": {}},\n}')
    mine = json.loads(opencode.config(lane, theirs))
    assert mine["provider"]["loop"]["options"]["baseURL"] == "http://h/v1"
    assert mine["agent"] == {"build": {"temperature": 0.1, "steps": 7}, "plan": {}}
    assert mine["share"] == "disabled"
    # Not JSON at all: passed on for opencode to refuse, never replaced by ours.
    assert opencode.config(lane, "{oops") == "{oops"


def test_no_connection_after_opencodes_own_retries_is_tooling_unavailable(
        tmp_path: Path) -> None:
    """Where wtmesh cannot tell the URL beforehand, opencode 1.18.33 retries for about 70 s
    and then prints this event (recorded offline, with its free hosted model) and exits 1."""
    stdout = tmp_path / "cli.stdout"
    stdout.write_text(json.dumps({"type": "error", "sessionID": "ses_1", "error": {
        "name": "APIError", "data": {
            "message": "Cannot connect to API: Unable to connect. Is the computer able to "
                       "access the url?", "isRetryable": True,
            "metadata": {"url": "https://opencode.ai/zen/v1/chat/completions"}}}}) + "\n")
    t = opencode.PRESET.read(lane_in(tmp_path), Completed(1, stdout, ""))
    assert t.unavailable == ("cannot reach the model API at https://opencode.ai/zen/v1/chat/"
                             "completions: Cannot connect to API: Unable to connect. Is the "
                             "computer able to access the url?")
