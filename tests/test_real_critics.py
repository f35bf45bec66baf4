"""Presets as consensus critics with the real CLIs (the pinned versions, from the test
cache) against the scripted model server: claude and codex answer through their schema
features, gemini and opencode through a WTMESH_VERDICT line. The core does not run critic
lanes yet, so the preset runner is run directly with the lane's environment, as a lane
would be (``fake_clis.harness.PresetLane``, a real candidates file and real diff files).

Each test also tries to write from the critic and shows the CLI did not let it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import real_cli
import wire_codex
import wire_gemini
from conftest import git, make_repo
from fake_clis.harness import PresetLane, Ran
from model_server import ModelServer, Text, ToolCall
from wire_aider import chat_completions, whole_file
from wire_chat import ChatCompletions
from wire_claude import Anthropic, tool_names, tool_result

from worktree_mesh.presets.critique import RUBRIC, critique_schema

TIMEOUT_S = 300
CRITIQUE = {"decision": "accept", "votes": {"a": "agree", "b": "disagree"},
            "ranking": ["a", "b"],
            "scores": {"a": dict.fromkeys(RUBRIC, 5),
                       "b": {**dict.fromkeys(RUBRIC, 4), "minimal_incision": 2}},
            "flip": "b without its docstring", "notes": "a is smaller and does what is asked"}
PROBE = "calc/critic_was_here.py"


def critic(tmp_path: Path, bin_dir: Path) -> PresetLane:
    return PresetLane(tmp_path, make_repo(tmp_path / "repo"), bin_dir=bin_dir)


def written(ran: Ran) -> dict[str, Any]:
    """The critique in the result file (what the CLI spent left aside)."""
    assert ran.result is not None, (ran.stdout, ran.stderr)
    return {k: v for k, v in ran.result.items() if k != "usage"}


def test_claude_critic_answers_through_its_json_schema(tmp_path: Path) -> None:
    bin_dir = real_cli.bin_dir("claude")
    lane = critic(tmp_path, bin_dir)
    model = Anthropic()
    write = ToolCall("Write", {"file_path": "{cwd}/" + PROBE, "content": "X = 1\n"})
    with ModelServer(model, [write, ToolCall("StructuredOutput", CRITIQUE),
                             Text("Critique given.")]) as server:
        ran = lane.run("claude", role="critic", timeout=TIMEOUT_S, extra_env={
            "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-ant-test"})
    assert written(ran) == {"id": "u-001", **CRITIQUE}, (ran.stdout, ran.stderr)
    assert ran.returncode == 0
    first = model.answered[0].request
    tools = tool_names(first)
    assert "StructuredOutput" in tools and not {"Edit", "Write", "NotebookEdit"} & set(tools)
    (structured,) = [t for t in first.json["tools"] if t["name"] == "StructuredOutput"]
    schema = structured["input_schema"]
    expected = critique_schema(["a", "b"])
    assert schema["properties"] == expected["properties"]
    assert sorted(schema["required"]) == sorted(expected["required"])
    prompt = json.dumps(first.json)
    assert "+def negate(a):" in prompt and "Candidate `b`" in prompt
    # Asked to write anyway, claude refused (no Write tool offered, or denied).
    assert not (lane.worktree / PROBE).exists()
    assert git(lane.worktree, "status", "--porcelain") == ""
    print(f"\nclaude refused the write: {tool_result(model.answered[1].request)[:120]!r}")


def test_codex_critic_answers_through_its_output_schema(tmp_path: Path,
                                                        home_outside_tmp: Path) -> None:
    bin_dir = real_cli.bin_dir("codex")
    lane = critic(tmp_path, bin_dir)
    touch = ToolCall("exec_command", {"cmd": f"touch {PROBE}; echo exit=$?"})
    with ModelServer(wire_codex.responses, [touch, Text(json.dumps(CRITIQUE))]) as server:
        args = [f"--arg={a}" for a in wire_codex.provider_args(server.url)]
        ran = lane.run("codex", "--model=loop", *args, role="critic", timeout=TIMEOUT_S,
                       extra_env={"LOOP_KEY": "test-key"})
    assert written(ran) == {"id": "u-001", **CRITIQUE}, (ran.stdout, ran.stderr)
    assert ran.returncode == 0
    requests = server.requests_to("/responses")
    schema = wire_codex.schema_of(requests[0])
    assert schema is not None and schema["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"] == critique_schema(["a", "b"])
    assert "+def negate(a):" in wire_codex.prompt_text(requests[0])
    (running,) = [line for line in ran.stdout.splitlines()
                  if line.startswith("wtmesh-preset: running: ")]
    assert " -s read-only " in running
    # Its command ran in codex's read-only sandbox: the write failed.
    said = [str(item.get("output")) for item in requests[-1].json["input"]
            if item.get("type") == "function_call_output"]
    assert any("Read-only file system" in out for out in said), said
    assert git(lane.worktree, "status", "--porcelain") == ""


def test_gemini_critic_answers_with_a_verdict_line(tmp_path: Path) -> None:
    bin_dir = real_cli.bin_dir("gemini")
    lane = critic(tmp_path, bin_dir)
    write = ToolCall("write_file", {"file_path": PROBE, "content": "X = 1\n"})
    answer = Text("I compared both candidates.\nWTMESH_VERDICT " + json.dumps(CRITIQUE))
    with ModelServer(wire_gemini.dialect, [write, answer]) as server:
        ran = lane.run("gemini", role="critic", timeout=TIMEOUT_S, extra_env={
            "GOOGLE_GEMINI_BASE_URL": server.url, "GEMINI_API_KEY": "fake-key"})
    assert written(ran) == {"id": "u-001", **CRITIQUE}, (ran.stdout, ran.stderr)
    assert ran.returncode == 0
    turns = server.requests_to(":streamGenerateContent")
    offered = {f["name"] for t in turns[0].json.get("tools", [])
               for f in t.get("functionDeclarations", [])}
    assert "read_file" in offered
    assert not {"write_file", "replace", "run_shell_command"} & offered, offered
    assert "+def negate(a):" in json.dumps(turns[0].json)
    assert not (lane.worktree / PROBE).exists()
    assert git(lane.worktree, "status", "--porcelain") == ""


def test_opencode_critic_answers_with_a_verdict_line_and_may_only_read(
        tmp_path: Path) -> None:
    """opencode takes the critic's permissions (edit and all but reading commands
    denied): it offers no editing tool, a reading command runs, and the critique counts."""
    bin_dir = real_cli.bin_dir("opencode")
    lane = critic(tmp_path, bin_dir)
    dialect = ChatCompletions()
    write = ToolCall("write", {"filePath": PROBE, "content": "X = 1\n"})
    read = ToolCall("bash", {"command": "git log --oneline -1", "description": "history"})
    answer = Text("Compared them.\nWTMESH_VERDICT " + json.dumps(CRITIQUE))
    with ModelServer(dialect, [write, read, answer]) as server:
        config = {"provider": {"loop": {
            "npm": "@ai-sdk/openai-compatible", "models": {"loop": {}},
            "options": {"baseURL": f"{server.url}/v1", "apiKey": "x"}}}}
        ran = lane.run("opencode", "--model=loop/loop", role="critic", timeout=TIMEOUT_S,
                       extra_env={"OPENCODE_CONFIG_CONTENT": json.dumps(config),
                                  "OPENCODE_DISABLE_MODELS_FETCH": "1"})
    assert written(ran) == {"id": "u-001", **CRITIQUE}, (ran.stdout, ran.stderr)
    assert not (lane.worktree / PROBE).exists()
    assert git(lane.worktree, "status", "--porcelain") == ""
    turns = [r.json for r in server.requests if r.json and r.json.get("tools")]
    offered = {t["function"]["name"] for t in turns[0]["tools"]}
    assert "read" in offered and not {"edit", "write", "patch"} & offered, offered
    said = [m.get("content") for m in turns[-1]["messages"] if m.get("role") == "tool"]
    assert "unavailable tool 'write'" in said[0], said
    assert said[1] == git(lane.worktree, "log", "--oneline", "-1") + "\n"  # it may read


def test_aider_critic_answers_in_ask_mode_whatever_its_args_say(tmp_path: Path) -> None:
    """The lane's args choose the "whole" edit format; the critic's ask mode comes after
    them and wins: a reply holding a whole new file edits nothing, and the critique in
    its fenced JSON block is read."""
    bin_dir = real_cli.bin_dir("aider")
    lane = critic(tmp_path, bin_dir)
    reply = (whole_file(PROBE, "X = 1\n", before="Here is a better version.")
             + "\n\nMy critique:\n\n```json\n" + json.dumps(CRITIQUE, indent=2) + "\n```\n")
    with ModelServer(chat_completions("gpt-4o-mini"), [Text(reply)]) as server:
        base = f"{server.url}/v1"
        ran = lane.run("aider", "--model=openai/gpt-4o-mini", "--arg=--edit-format",
                       "--arg=whole", "--arg=--no-show-model-warnings", role="critic",
                       timeout=TIMEOUT_S, extra_env={"OPENAI_API_BASE": base,
                                                     "OPENAI_BASE_URL": base,
                                                     "OPENAI_API_KEY": "sk-test"})
    assert written(ran) == {"id": "u-001", **CRITIQUE}, (ran.stdout, ran.stderr)
    (asked,) = server.requests_to("/chat/completions")
    assert "+def negate(a):" in json.dumps(asked.json)
    assert not (lane.worktree / PROBE).exists()
    assert git(lane.worktree, "status", "--porcelain") == ""
