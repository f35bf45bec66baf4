"""The gemini preset with the real Gemini CLI (the pinned version), through the real
``wtmesh run``, sandboxed (the default), against the scripted model server speaking
gemini's wire format (``wire_gemini``): what the CLI does, not what a fake says it does."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import preset_run
import pytest
import real_cli
import wire_gemini
from conftest import git
from model_server import Fail, ModelServer, Request, Text, ToolCall, Turn, closed_port

from worktree_mesh import sandbox

pytestmark = pytest.mark.skipif(sandbox.probe() is not None,
                                reason=f"no sandbox here: {sandbox.probe()}")

EDIT = ToolCall("write_file", {"file_path": "calc/extra.py", "content": "VALUE = 1\n"})
ACCEPT = 'WTMESH_VERDICT {"decision": "accept", "failure_code": null, "notes": "fine"}'
REJECT = ('WTMESH_VERDICT {"decision": "reject", "failure_code": "proof_missing", '
          '"notes": "no test for VALUE"}')
# Generous: node starts slowly on a busy machine; no test here waits for a timeout.
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def gemini_bin() -> Path:
    return real_cli.bin_dir("gemini")


@dataclass
class Run(preset_run.Ran):
    """One ``wtmesh run`` of a one-unit plan with gemini lanes, and what it left."""

    server: Timed
    started: float

    def turns(self) -> list[Request]:
        return self.server.requests_to(":streamGenerateContent")

    def side_requests(self) -> list[Request]:
        return self.server.requests_to(":generateContent")


class Timed(ModelServer):
    """The scripted server, keeping when each request arrived."""

    def __init__(self, turns: Iterable[Turn]) -> None:
        self.arrived: list[float] = []

        def dialect(server: ModelServer, request: Request) -> Any:
            self.arrived.append(time.monotonic())
            return wire_gemini.dialect(server, request)

        super().__init__(dialect, turns)


LANE = {"preset": "gemini", "timeout_s": TIMEOUT_S}


@pytest.fixture
def run_gemini(repo: Path, tmp_path: Path, gemini_bin: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    # wtmesh's worktrees out of HOME, so that HOME holds only what a CLI writes there.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    servers: list[ModelServer] = []

    def run(turns: Iterable[Turn], *, coder: dict[str, Any] | None = None,
            fixer: dict[str, Any] | None = None, key: str | None = "fake-key",
            base_url: str | None = None, sandbox_mode: str = "auto") -> Run:
        server = Timed(turns)
        servers.append(server.__enter__())
        env = {"GOOGLE_GEMINI_BASE_URL": base_url or server.url,
               **({"GEMINI_API_KEY": key} if key else {})}
        started = time.monotonic()
        ran = preset_run.run(repo, preset_run.plan(coder or {}, fixer, lane=LANE),
                             "--sandbox", sandbox_mode, bin_dir=gemini_bin, env=env,
                             timeout=3 * TIMEOUT_S)
        sandboxed = "lanes sandboxed (bwrap)" in ran.stderr.splitlines()[0]
        assert sandboxed == (sandbox_mode != "none"), ran.stderr
        return Run(**vars(ran), server=server, started=started)

    yield run
    for server in servers:
        server.__exit__(None, None, None)


def home_files() -> dict[str, float]:
    home = Path(os.environ["HOME"])
    return {str(p.relative_to(home)): p.stat().st_mtime for p in home.rglob("*")}


def test_coder_edits_and_the_edit_lands(run_gemini: Any, repo: Path) -> None:
    """The workspace is trusted (GEMINI_CLI_TRUST_WORKSPACE), so yolo holds and the edit
    is made; gemini writes nothing in HOME (its home is the lane's own), and what it spent
    is in the lane's result file, read from its stats."""
    home = Path(os.environ["HOME"])
    (home / ".gemini").mkdir()
    (home / ".gemini" / "settings.json").write_text('{"ui": {"hideTips": true}}')
    before = home_files()
    ran = run_gemini([EDIT, Text("Added VALUE to calc/extra.py.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("integrated", None), ran.unit
    assert git(repo, "show", "main:calc/extra.py") == "VALUE = 1"
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/extra.py"
    assert 'Approval mode overridden to "default"' not in ran.log("coder-1", "stderr")
    assert "Skipping system settings" not in ran.log("coder-1", "stderr")
    # The unit reached the model: the prompt is in the first turn.
    first = json.dumps(ran.turns()[0].json)
    assert "Add a constant VALUE = 1 in calc/extra.py" in first
    # Nothing written in HOME (PRESET_WRITABLE["gemini"] is empty); the session went to
    # the lane's own gemini home, whose settings kept the user's underneath ours.
    assert home_files() == before
    lane_home = ran.file("coder-1.preset") / "gemini-home" / ".gemini"
    assert list(lane_home.glob("tmp/*/chats/session-*.jsonl"))
    lane_settings = json.loads((lane_home / "settings.json").read_text())
    assert lane_settings["ui"] == {"hideTips": True}
    assert lane_settings["model"]["maxSessionTurns"] == 60
    # Usage: every request's usageMetadata, summed by gemini; no cost (it reports none).
    turns, sides = len(ran.turns()), len(ran.side_requests())
    assert (turns, sides) == (2, 1)  # the router's question, the edit, the final text
    assert ran.result("coder-1")["usage"] == {
        "tokens_in": turns * wire_gemini.TURN_USAGE["promptTokenCount"]
        + sides * wire_gemini.SIDE_USAGE["promptTokenCount"],
        "tokens_out": turns * wire_gemini.TURN_OUTPUT + sides * wire_gemini.SIDE_OUTPUT,
        "cost_usd": None}
    # The second turn is the first that follows the edit: time to the first edit.
    edit_done = ran.server.arrived[2] - ran.started
    print(f"\ngemini: time to first edit {edit_done:.1f} s (wtmesh run start to the "
          "request answering write_file)")


@pytest.mark.parametrize(("verdict", "status", "code"), [
    (ACCEPT, "integrated", None), (REJECT, "rejected", "proof_missing")])
def test_fixer_verdict_decides(run_gemini: Any, repo: Path, verdict: str, status: str,
                               code: str | None) -> None:
    """The fixer has no schema feature: its verdict is the marked line of its final
    message, split across stream chunks as a real model sends it."""
    head = git(repo, "rev-parse", "main")
    ran = run_gemini([EDIT, Text("Done."), Text(f"Reviewed the diff.\n{verdict}")],
                     fixer={})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (status, code), ran.unit
    fixer = ran.result("fixer-1")
    assert fixer["decision"] == ("accept" if code is None else "reject")
    assert "+VALUE = 1" in json.dumps(ran.turns()[-1].json)  # the diff reached the fixer
    if code is not None:
        assert fixer["notes"] == "no test for VALUE"
        assert git(repo, "rev-parse", "main") == head


def test_a_git_commit_is_denied_and_requires_clarification(run_gemini: Any) -> None:
    """gemini's yolo mode still applies policy rules: the preset's deny rule stops
    `git commit` (the deprecated tools.exclude setting did not), and a denial is a
    question for the plan's author, not a failure to retry."""
    ran = run_gemini([EDIT, ToolCall("run_shell_command", {"command": "git commit -qam wip"}),
                      Text("I could not commit.")], coder={"retries": 1})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "requires_clarification"), ran.unit
    assert ran.unit["attempts"] == 1
    notes = ran.result("coder-1")["notes"]
    assert "run_shell_command `git commit -qam wip`" in notes
    answer = json.dumps(ran.turns()[2].json)
    assert "denied by policy" in answer and "must not stage, commit" in answer


@pytest.mark.parametrize("sandbox_mode", ["auto", "none"])
def test_the_turn_cap_ends_a_run_that_keeps_calling_tools(run_gemini: Any,
                                                          sandbox_mode: str) -> None:
    """model.maxSessionTurns takes effect (the settings are read): gemini stops after 3
    turns with exit 53, the unit fails timeout_retry_exhausted and is not retried.
    Unsandboxed too: there the lane's files lie under the host's /tmp (group- and
    other-writable), where gemini skips a system settings file even for root; in the
    sandbox's private /tmp, root alone would get away with one."""
    endless = [ToolCall("run_shell_command", {"command": f"echo step {i}"}) for i in range(12)]
    ran = run_gemini(endless, coder={"max_turns": 3, "retries": 1}, sandbox_mode=sandbox_mode)
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "timeout_retry_exhausted"), ran.unit
    assert ran.unit["attempts"] == 1
    assert len(ran.turns()) == 3
    assert "model.maxSessionTurns 3" in ran.result("coder-1")["notes"]


@pytest.mark.parametrize(("status", "says"), [(401, "401 UNAUTHENTICATED"),
                                              (403, "403 PERMISSION_DENIED")])
def test_an_auth_error_from_the_api_is_tooling_unavailable(run_gemini: Any, status: int,
                                                           says: str) -> None:
    """The API refuses the key: gemini exits with the HTTP status (mod 256) and says why
    on stdout in its result event; the unit fails tooling_unavailable in that one line,
    once. The error report gemini writes to /tmp stays in the sandbox's private /tmp."""
    reports = set(Path("/tmp").glob("gemini-client-error-*.json"))
    ran = run_gemini([Fail(status, "API key not valid. Please pass a valid API key.")],
                     coder={"retries": 1})
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result("coder-1")["notes"] == (
        f"gemini: {says}: API key not valid. Please pass a valid API key.")
    assert set(Path("/tmp").glob("gemini-client-error-*.json")) == reports


def test_no_key_is_tooling_unavailable(run_gemini: Any) -> None:
    ran = run_gemini([EDIT], key=None)
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.result("coder-1")["notes"] == (
        "gemini: exit 41: authentication failed: When using Gemini API, you must specify "
        "the GEMINI_API_KEY environment variable.")
    assert ran.turns() == []


def test_an_unreachable_api_fails_at_once(run_gemini: Any) -> None:
    """Nothing listens at the base URL: the lane ends tooling_unavailable before its
    60 s timeout (gemini itself would retry with backoff until killed), not retried."""
    ran = run_gemini([EDIT], coder={"timeout_s": 60, "retries": 1},
                     base_url=f"http://127.0.0.1:{closed_port()}")
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result("coder-1")["notes"].startswith("cannot reach the model API: 127.0.0.1:")
