"""The claude preset with the real Claude Code CLI (the version pinned in
``presets/versions.py``), through the real ``wtmesh run``, sandboxed, against the scripted
model server speaking the Anthropic messages dialect (``wire_claude.py``).

One run per case; the CLI is installed once into the cache outside the repository
(``real_cli.py``) and skipped, with the reason, where it cannot be.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import preset_run
import pytest
import real_cli
from conftest import PROOF, git, make_repo
from model_server import Fail, ModelServer, Text, ToolCall, Turn, closed_port
from wire_claude import Anthropic, tool_names, tool_result

from worktree_mesh.presets.versions import TESTED

FAKE_KEY = "sk-ant-test-not-a-real-key"
# Generous: two cores shared by several test runs; no test waits for it unless it fails.
TIMEOUT_S = 240
EXTRA = "VALUE = 1\n"


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return real_cli.bin_dir("claude")


def plan_for(coder: dict[str, Any] | None = None,
             fixer: dict[str, Any] | None = None) -> dict[str, Any]:
    return preset_run.plan(coder or {}, fixer, lane={"preset": "claude", "timeout_s": TIMEOUT_S})


@dataclass
class Ran(preset_run.Ran):
    server: ModelServer
    model: Anthropic


Run = Callable[..., Ran]


def run_wtmesh(monkeypatch: pytest.MonkeyPatch, repo: Path, plan: dict[str, Any],
               claude_bin: Path, turns: Iterable[Turn], env: dict[str, str | None]) -> Ran:
    """``wtmesh run`` with the real claude first on PATH and the scripted server as its
    API, a fake key; ``env`` overrides (None removes)."""
    model = Anthropic()
    with ModelServer(model, turns) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        ran = preset_run.run(repo, plan, bin_dir=claude_bin, timeout=TIMEOUT_S * 3)
    return Ran(**vars(ran), server=server, model=model)


@pytest.fixture
def run(repo: Path, claude_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(plan, turns, **env)``: one ``run_wtmesh`` in the test's repository."""
    def run_plan(plan: dict[str, Any], turns: Iterable[Turn], **env: str | None) -> Ran:
        return run_wtmesh(monkeypatch, repo, plan, claude_bin, turns, env)
    return run_plan


@dataclass
class Landed:
    ran: Ran
    repo: Path
    home: Path
    debug_log: Path


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory, claude_bin: Path,
           hermetic_module: None) -> Landed:
    """One coder that edits and lands, sandboxed, read by several tests (one claude run
    fewer each): its worktrees outside HOME, so that HOME shows only what claude wrote;
    claude's debug log on, in ~/.claude, to show each write it could not make."""
    base = tmp_path_factory.mktemp("landed")
    repo = make_repo(base / "repo")
    home = Path(os.environ["HOME"])
    debug_log = home / ".claude" / "debug.log"
    plan = plan_for({"args": [f"--debug-file={debug_log}"]})
    with pytest.MonkeyPatch.context() as monkeypatch:
        ran = run_wtmesh(monkeypatch, repo, plan, claude_bin,
                         [write_extra(), Text("Added VALUE.")],
                         {"WTMESH_WORKTREES": str(base / "worktrees")})
    return Landed(ran, repo, home, debug_log)


def write_extra(path: str = "calc/extra.py") -> ToolCall:
    return ToolCall("Write", {"file_path": "{cwd}/" + path, "content": EXTRA})


def verdict(decision: str, code: str | None, notes: str) -> ToolCall:
    return ToolCall("StructuredOutput", {"decision": decision, "failure_code": code,
                                         "notes": notes})


def test_coder_edit_lands_on_main(landed: Landed) -> None:
    """AGENT-CLIS bug 1: with worktrees outside .git, claude's Write is no "sensitive
    file" denial; the edit lands, sandboxed."""
    ran, repo = landed.ran, landed.repo
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("integrated", None), ran.unit
    assert ran.events()[0]["sandbox"]["active"]
    assert git(repo, "show", "main:calc/extra.py") == EXTRA.strip()
    assert git(repo, "show", "--name-only", "--format=", "main") == "calc/extra.py"
    assert "sensitive" not in ran.log()
    print(f"\ntime to first edit: {time_to_first_edit(ran):.1f} s")


def time_to_first_edit(ran: Ran) -> float:
    """From the lane's start to claude's request that the server answered with the Write
    call (a measure, printed, never asserted)."""
    started = next(e for e in ran.events() if e["event"] == "lane_started")
    start = dt.datetime.fromisoformat(started["ts"].replace("Z", "+00:00")).timestamp()
    edit = ran.model.first_call_of("Write", "Edit")
    assert edit is not None
    return edit.at - start


def test_fixer_accepts_through_the_schema_tool(run: Run) -> None:
    """The fixer's --json-schema becomes claude's StructuredOutput tool; the verdict the
    model gives through it is the lane's."""
    ran = run(plan_for(fixer={}), [write_extra(), Text("Added VALUE."),
                                   verdict("accept", None, "the constant is there"),
                                   Text("Reviewed.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("integrated", None), ran.unit
    review = ran.model.first_call_of("StructuredOutput")
    assert review is not None and "StructuredOutput" in tool_names(review.request)
    assert "+VALUE = 1" in review.request.raw.decode()  # the coder's diff, inline
    assert ran.result("fixer-1")["notes"] == "the constant is there"


def test_fixer_rejects_through_the_schema_tool(repo: Path, run: Run) -> None:
    head = git(repo, "rev-parse", "main")
    ran = run(plan_for(fixer={}), [write_extra(), Text("Added VALUE."),
                                   verdict("reject", "proof_missing", "nothing tests VALUE"),
                                   Text("Reviewed.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("rejected", "proof_missing")
    assert ran.result("fixer-1")["notes"] == "nothing tests VALUE"
    assert git(repo, "rev-parse", "main") == head


def test_a_denied_command_asks_for_clarification(run: Run) -> None:
    """A command off the allow-list (a commit) is denied in print mode and reported in
    permission_denials: the unit needs a person, not a retry."""
    commit = ToolCall("Bash", {"command": "git commit -am wip", "description": "Commit"})
    ran = run(plan_for({"retries": 2}), [commit, Text("I could not commit.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "requires_clarification"), ran.unit
    assert ran.unit["attempts"] == 1
    assert "Bash `git commit -am wip`" in ran.result()["notes"]


def test_the_turn_cap_ends_the_lane(run: Run) -> None:
    read = ToolCall("Read", {"file_path": "{cwd}/README.md"})
    ran = run(plan_for({"max_turns": 2, "retries": 0}), [read] * 6)
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "timeout_retry_exhausted"), ran.unit
    assert "--max-turns 2" in ran.result()["notes"]
    assert len(ran.model.answered) < 6  # claude stopped itself, before the script ran out


def test_no_key_is_tooling_unavailable(run: Run) -> None:
    ran = run(plan_for({"retries": 2}), [write_extra()], ANTHROPIC_API_KEY=None)
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert "Not logged in" in ran.result()["notes"]
    assert ran.model.answered == []


def test_an_auth_error_is_tooling_unavailable_not_retried(run: Run) -> None:
    ran = run(plan_for({"retries": 2}), [Fail(401, "invalid x-api-key")] * 12)
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    (refused,) = ran.model.answered
    assert refused.request.headers.get("x-api-key") == FAKE_KEY


def test_an_unreachable_api_fails_before_claude_runs(run: Run) -> None:
    """Pointed at a closed port claude retries for minutes (AGENT-CLIS bug 5); the
    runner's check ends the lane at once, with the real CLI on PATH, not retried."""
    ran = run(plan_for({"retries": 2}), [write_extra()],
              ANTHROPIC_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    assert (ran.unit["status"], ran.unit["failure_code"]) == (
        "rejected", "tooling_unavailable"), ran.unit
    assert ran.unit["attempts"] == 1
    assert ran.result()["notes"].startswith("cannot reach the model API: 127.0.0.1:")
    log = ran.log()
    assert "claude --version: 2." in log and "running: claude" not in log


def test_usage_and_cost_come_from_claudes_result(landed: Landed) -> None:
    """The lane's result carries what claude said it spent: every message's tokens, cache
    writes and reads counted as input, and claude's own cost figure."""
    ran = landed.ran
    assert ran.unit["status"] == "integrated", ran.unit
    usage = ran.result()["usage"]
    assert usage == {**ran.model.expected_usage(),
                     "cost_usd": claude_result(ran)["total_cost_usd"]}
    assert usage["tokens_in"] > 0 and usage["cost_usd"] > 0


def claude_result(ran: Ran, lane: str = "coder-1") -> dict[str, Any]:
    """The result object claude printed (kept by the preset beside the lane's result)."""
    kept = ran.file(f"{lane}.preset") / "cli.stdout"
    said: dict[str, Any] = json.loads(kept.read_text())
    return said


def test_sandboxed_claude_writes_its_config_dir_and_nothing_else(landed: Landed) -> None:
    """In the sandbox HOME is read-only but ~/.claude: claude's global config (a file in
    HOME, ~/.claude.json, replaced by rename, so it cannot be bound alone) goes into
    ~/.claude instead, and claude saves it there; HOME gets nothing else."""
    assert landed.ran.unit["status"] == "integrated", landed.ran.unit
    failed_writes = [line for line in landed.debug_log.read_text().splitlines()
                     if "read-only file system" in line]
    assert failed_writes == []
    saved = json.loads((landed.home / ".claude" / ".claude.json").read_text())
    assert saved["firstStartVersion"] == TESTED["claude"].version
    # Besides what every test's home holds (conftest: codex's stand-in config).
    assert sorted(p.name for p in landed.home.iterdir()) == [".claude", ".codex"]
    assert [p.name for p in (landed.home / ".codex").iterdir()] == ["config.toml"]


def test_sandboxed_claude_keeps_a_key_saved_by_login(run: Run) -> None:
    """A key that ``claude /login`` saved in ~/.claude.json still signs the requests when
    the config is moved into ~/.claude (it is carried along)."""
    saved_key = "sk-ant-saved-by-login"
    (Path(os.environ["HOME"]) / ".claude.json").write_text(
        json.dumps({"primaryApiKey": saved_key}))
    ran = run(plan_for(), [write_extra(), Text("Added VALUE.")], ANTHROPIC_API_KEY=None)
    assert ran.unit["status"] == "integrated", ran.unit
    assert {a.request.headers.get("x-api-key") for a in ran.model.answered} == {saved_key}


def test_unsandboxed_claude_keeps_its_config_where_the_user_has_it(run: Run) -> None:
    """Not sandboxed, HOME is writable: claude runs as the user runs it, with its global
    config in ~/.claude.json (no CLAUDE_CONFIG_DIR, which would hide the user's)."""
    home = Path(os.environ["HOME"])
    ran = run({**plan_for(), "sandbox": "none"}, [write_extra(), Text("Added VALUE.")])
    assert ran.unit["status"] == "integrated", ran.unit
    assert not ran.events()[0]["sandbox"]["active"]
    assert json.loads((home / ".claude.json").read_text())["firstStartVersion"]
    assert not (home / ".claude" / ".claude.json").exists()


def test_the_coder_may_run_the_proof_git_and_what_the_plan_allows(run: Run) -> None:
    """The unit's proof command and read-only git are on claude's allow-list, a lane's
    ``--allowedTools`` in ``args`` adds to it (it does not replace wtmesh's list), and
    all of it works in the sandbox: what the agent runs to check its change is not
    denied (a denial would fail the unit)."""
    def bash(command: str) -> ToolCall:
        return ToolCall("Bash", {"command": command, "description": "Check the change"})
    plan = plan_for({"args": ["--allowedTools", "Bash(python3 -c:*)"]})
    ran = run(plan, [write_extra(), bash(shlex.join(PROOF)), bash("git status --short"),
                     bash("python3 -c 'print(6 * 7)'"), Text("Added VALUE; the tests pass.")])
    assert (ran.unit["status"], ran.unit["failure_code"]) == ("integrated", None), ran.unit
    proof, status, snippet = (tool_result(a.request) for a in ran.model.answered[2:5])
    assert "OK" in proof and "Ran " in proof, proof
    assert "?? calc/extra.py" in status, status
    assert snippet.strip() == "42", snippet
