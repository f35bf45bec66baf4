"""Presets (SPEC 9) against fake CLIs first on PATH: the argv each preset passes, the prompt,
and the result file for success, caps, errors, denials, questions and a missing binary.

The fakes (tests/fake_clis/) assert the flags that matter — edits allowed, commits
forbidden, non-interactive — and exit 97 when one is missing, which the runner reports as
a failure: every "accept" below also proves the flags were right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import git, make_repo
from fake_clis.harness import NAMES, PresetLane, git_only

from worktree_mesh import plan as plan_mod
from worktree_mesh import presets
from worktree_mesh.presets.base import Lane, Transcript, Usage
from worktree_mesh.presets.outcome import decide
from worktree_mesh.presets.prompt import VERDICT_MARKER, find_marked_verdict, is_question
from worktree_mesh.presets.versions import TESTED

EDIT = "calc/extra.py=VALUE = 1\\n"


@pytest.fixture
def lane(tmp_path: Path) -> PresetLane:
    return PresetLane(tmp_path, make_repo(tmp_path / "repo"))


def outcome(result: dict[str, Any] | None) -> tuple[str, str | None]:
    assert result is not None
    return result["decision"], result["failure_code"]


# -- every preset -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_success_accepts_and_keeps_the_agents_edit(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, edit=EDIT)
    assert "FAKE-" not in ran.stderr, ran.stderr  # the fake found every flag it insists on
    assert outcome(ran.result) == ("accept", None)
    assert ran.result is not None and ran.result["id"] == "u-001"
    assert ran.result["notes"].startswith(("Changed calc/extra.py", "I will make the change"))
    assert (lane.worktree / "calc" / "extra.py").read_text() == "VALUE = 1\n"
    assert ran.returncode == 0
    # Lane logs record the CLI's version and the command line.
    assert f"wtmesh-preset: {name} --version: " in ran.stdout
    assert "wtmesh-preset: running: " in ran.stdout
    # The prompt, schema and transcript stay outside the worktree.
    assert git(lane.worktree, "status", "--porcelain") == "?? calc/extra.py"


@pytest.mark.parametrize("name", NAMES)
def test_missing_cli_is_tooling_unavailable(lane: PresetLane, name: str,
                                            tmp_path: Path) -> None:
    ran = lane.run(name, edit=EDIT, path=str(git_only(tmp_path / "gitonly")))
    assert outcome(ran.result) == ("reject", "tooling_unavailable")
    assert ran.result is not None and f"`{name}` is not on PATH" in ran.result["notes"]
    assert not ran.records


@pytest.mark.parametrize("name", NAMES)
def test_failing_version_probe_is_tooling_unavailable(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, scenario="badversion", edit=EDIT)
    assert outcome(ran.result) == ("reject", "tooling_unavailable")
    assert ran.result is not None and f"{name} --version` exited 1" in ran.result["notes"]
    assert not ran.records  # never ran the agent


@pytest.mark.parametrize("name", NAMES)
def test_cli_error_is_lane_failed(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, scenario="error")
    assert outcome(ran.result) == ("reject", "lane_failed")
    assert ran.returncode == 1


@pytest.mark.parametrize("name", ["codex", "claude", "aider", "gemini"])
def test_authentication_failure_is_tooling_unavailable(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, scenario="auth")
    assert outcome(ran.result) == ("reject", "tooling_unavailable")


@pytest.mark.parametrize("name", NAMES)
def test_question_without_a_change_requires_clarification(lane: PresetLane,
                                                          name: str) -> None:
    ran = lane.run(name, scenario="question")
    assert outcome(ran.result) == ("reject", "requires_clarification")
    assert ran.result is not None and "?" in ran.result["notes"]


@pytest.mark.parametrize("name", NAMES)
def test_no_change_is_no_diff(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, edit="")
    assert outcome(ran.result) == ("no_diff", None)


@pytest.mark.parametrize("name", NAMES)
def test_coder_prompt_carries_the_unit(lane: PresetLane, name: str) -> None:
    prompt = lane.run(name, edit=EDIT).call["prompt"]
    for text in ("u-001", "Treat trailing commas as invalid", "- `calc/`", "- `tests/`",
                 "Do not change public API", "Reject invalid input at boundary",
                 "python -m unittest -q", "Do not stage, commit"):
        assert text in prompt, text
    assert VERDICT_MARKER not in prompt


@pytest.mark.parametrize("name", NAMES)
def test_a_rerun_tells_the_agent_what_its_change_conflicted_with(
        lane: PresetLane, name: str, tmp_path: Path) -> None:
    told = tmp_path / "conflict-1.json"
    told.write_text(json.dumps({
        "conflicting_paths": ["calc/core.py"], "previous_diff_file": "/r/conflict-1.diff",
        "met": ["u-000"]}))
    prompt = lane.run(name, edit=EDIT, extra_env={"WTMESH_CONFLICT": str(told)}).call["prompt"]
    for text in ("conflicted with changes to calc/core.py", "landed since by u-000",
                 "Redo it on the current code", "/r/conflict-1.diff", str(told)):
        assert text in prompt, text
    assert "conflicted" not in lane.run(name, edit=EDIT).call["prompt"]


@pytest.mark.parametrize("garbage", ["[1, 2]", '{"conflicting_paths": [1, {}], "met": 3}',
                                     "not json"])
def test_a_conflict_file_the_lane_spoilt_does_not_break_the_preset(
        lane: PresetLane, tmp_path: Path, garbage: str) -> None:
    """The file lies where the unit's lanes may write: a rerun must still run."""
    told = tmp_path / "conflict-1.json"
    told.write_text(garbage)
    ran = lane.run("claude", edit=EDIT, extra_env={"WTMESH_CONFLICT": str(told)})
    assert outcome(ran.result) == ("accept", None)


@pytest.mark.parametrize("name", NAMES)
def test_fixer_gets_the_diff_and_its_verdict_decides(lane: PresetLane, name: str) -> None:
    diff = "diff --git a/calc/ops.py b/calc/ops.py\n+def negate(a):\n+    return -a\n"
    accept = lane.run(name, role="fixer", diff=diff)
    assert outcome(accept.result) == ("accept", None), accept.stderr
    assert "+def negate(a):" in accept.call["prompt"]
    assert "reviewer and fixer" in accept.call["prompt"]
    reject = lane.run(name, role="fixer", diff=diff, verdict={
        "decision": "reject", "failure_code": "proof_missing", "notes": "no test for negate"})
    assert outcome(reject.result) == ("reject", "proof_missing")
    assert reject.result is not None and reject.result["notes"] == "no test for negate"
    no_code = lane.run(name, role="fixer", diff=diff,
                       verdict={"decision": "reject", "failure_code": None, "notes": "unsafe"})
    assert outcome(no_code.result) == ("reject", "safety_regression_risk")


@pytest.mark.parametrize("name", ["codex", "claude", "opencode"])
def test_an_agent_commit_is_undone_and_its_change_kept(lane: PresetLane, name: str) -> None:
    head = git(lane.worktree, "rev-parse", "HEAD")
    ran = lane.run(name, scenario="commit", edit=EDIT)
    assert outcome(ran.result) == ("accept", None)
    assert git(lane.worktree, "rev-parse", "HEAD") == head
    assert "the agent committed" in (ran.result or {})["notes"]
    assert "calc/extra.py" in git(lane.worktree, "status", "--porcelain")


# -- caps ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "scenario", "options", "says"), [
    ("claude", "cap_turns", ["--max-turns=7"], "--max-turns 7"),
    ("claude", "cap_budget", ["--max-budget-usd=0.5"], "--max-budget-usd 0.5"),
    ("gemini", "cap", ["--max-turns=9"], "maxSessionTurns 9"),
    ("opencode", "cap", ["--max-turns=4"], "all 4 of its steps"),
    ("aider", "cap", [], "token limit"),
])
def test_turn_or_budget_cap_is_timeout_retry_exhausted(
        lane: PresetLane, name: str, scenario: str, options: list[str], says: str) -> None:
    ran = lane.run(name, *options, scenario=scenario, edit=EDIT)
    assert outcome(ran.result) == ("reject", "timeout_retry_exhausted")
    assert ran.result is not None and says in ran.result["notes"]


# -- denials and other per-CLI signals ----------------------------------------------------

@pytest.mark.parametrize(("name", "says"), [
    ("codex", "command `bash -lc 'curl https://example.com'`"),
    ("claude", "Bash `npm install left-pad`"),
    ("gemini", "run_shell_command `git push origin main`"),
    ("opencode", "bash"),
])
def test_permission_denial_requires_clarification(lane: PresetLane, name: str,
                                                  says: str) -> None:
    ran = lane.run(name, scenario="denial", edit=EDIT)
    assert outcome(ran.result) == ("reject", "requires_clarification")
    assert ran.result is not None and says in ran.result["notes"]


def test_codex_error_after_exit_zero_is_read_from_the_events(lane: PresetLane) -> None:
    ran = lane.run("codex", scenario="capacity")
    assert outcome(ran.result) == ("reject", "lane_failed")
    assert ran.result is not None and "high demand" in ran.result["notes"]


def test_claude_structured_output_failure_is_invalid_output_schema(lane: PresetLane) -> None:
    ran = lane.run("claude", role="fixer", scenario="schema_fail", diff="x")
    assert outcome(ran.result) == ("reject", "invalid_output_schema")


def test_output_of_an_unknown_shape_is_invalid_output_schema(lane: PresetLane) -> None:
    """A CLI whose JSON has the wrong shape is the agent's output failing its schema, not
    a crash of the runner: the result file says so, with the reason."""
    ran = lane.run("claude", scenario="garbled", edit=EDIT)
    assert outcome(ran.result) == ("reject", "invalid_output_schema")
    assert ran.result is not None and "its output could not be read" in ran.result["notes"]
    assert "Traceback" not in ran.stderr


def test_aider_files_never_reach_the_diff_but_tracked_ones_stay(lane: PresetLane) -> None:
    (lane.worktree / ".aider.conf.yml").write_text("model: gpt-4o\n")
    git(lane.worktree, "add", ".aider.conf.yml")
    git(lane.worktree, "commit", "-q", "-m", "aider config")
    ran = lane.run("aider", edit=EDIT)
    assert outcome(ran.result) == ("accept", None)
    assert "removed .aider.tags.cache.v4" in ran.stdout
    assert git(lane.worktree, "status", "--porcelain", "--ignored") == "?? calc/extra.py"
    assert (lane.worktree / ".aider.conf.yml").exists()


# -- argv and configuration each preset passes ---------------------------------------------

def test_codex_argv(lane: PresetLane) -> None:
    call = lane.run("codex", "--model=gpt-5-codex", "--arg=-c", "--arg=x=1", edit=EDIT).call
    work = lane.unit_dir / "coder-1.preset"
    assert call["argv"] == ["exec", "-C", str(lane.worktree), "-s", "workspace-write",
                            "-c", "sandbox_workspace_write.exclude_slash_tmp=true",
                            "--ephemeral", "--json", "-o", str(work / "last-message.txt"),
                            "-m", "gpt-5-codex", "-c", "x=1", "-"]
    fixer = lane.run("codex", role="fixer", diff="x").call
    schema_file = fixer["argv"][fixer["argv"].index("--output-schema") + 1]
    schema = json.loads(Path(schema_file).read_text())
    assert schema["properties"]["decision"]["enum"] == ["accept", "reject"]


def test_claude_argv(lane: PresetLane) -> None:
    call = lane.run("claude", "--model=sonnet", "--max-turns=12", "--max-budget-usd=2.5",
                    "--arg=--bare", edit=EDIT).call
    argv = call["argv"]

    def value(flag: str) -> str:
        return str(argv[argv.index(flag) + 1])

    assert argv[0] == "-p" and value("--output-format") == "json"
    assert value("--permission-mode") == "acceptEdits"
    assert value("--max-turns") == "12" and value("--max-budget-usd") == "2.5"
    assert value("--model") == "sonnet" and argv[-1] == "--bare"
    assert "Bash(python -m unittest -q:*)" in value("--allowedTools").split(",")
    assert "Bash(git push:*)" in value("--disallowedTools").split(",")
    assert "--json-schema" not in argv
    assert call["env"]["DISABLE_AUTOUPDATER"] == "1"
    default = lane.run("claude", role="fixer", diff="x").call["argv"]
    assert default[default.index("--max-turns") + 1] == "30"
    assert json.loads(default[default.index("--json-schema") + 1])["required"] == [
        "decision", "failure_code", "notes"]


def test_gemini_argv_and_settings(lane: PresetLane, tmp_path: Path) -> None:
    user_home = tmp_path / "user"
    (user_home / ".gemini").mkdir(parents=True)
    (user_home / ".gemini" / "settings.json").write_text(json.dumps(
        {"ui": {"hideTips": True}, "model": {"maxSessionTurns": 500}}))
    call = lane.run("gemini", "--model=gemini-2.5-pro", "--max-turns=9", edit=EDIT,
                    extra_env={"HOME": str(user_home)}).call
    assert call["argv"] == ["-p", "Follow the task given on stdin.", "--approval-mode", "yolo",
                            "-o", "stream-json", "-m", "gemini-2.5-pro"]
    settings = call["settings"]
    assert settings["model"]["maxSessionTurns"] == 9
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["telemetry"]["enabled"] is False
    # The user's own settings stay underneath ours; an API key is the auth chosen.
    assert settings["ui"] == {"hideTips": True}
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert call["env"]["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    home = Path(call["env"]["GEMINI_CLI_HOME"])
    assert home == lane.unit_dir / "coder-1.preset" / "gemini-home"
    assert "GEMINI_CLI_SYSTEM_SETTINGS_PATH" not in call["env"]


def test_gemini_keeps_the_auth_the_user_chose(lane: PresetLane, tmp_path: Path) -> None:
    user_home = tmp_path / "user"
    (user_home / ".gemini").mkdir(parents=True)
    (user_home / ".gemini" / "settings.json").write_text(json.dumps(
        {"security": {"auth": {"selectedType": "vertex-ai"}}}))
    chosen = lane.run("gemini", edit=EDIT, extra_env={"HOME": str(user_home)}).call
    assert chosen["settings"]["security"]["auth"]["selectedType"] == "vertex-ai"
    by_env = lane.run("gemini", edit=EDIT, extra_env={"GOOGLE_GENAI_USE_VERTEXAI": "true"}).call
    assert "security" not in by_env["settings"]


def test_opencode_argv_and_configuration(lane: PresetLane) -> None:
    call = lane.run("opencode", "--model=anthropic/claude-sonnet-4", edit=EDIT).call
    assert call["argv"] == ["run", "--dir", str(lane.worktree), "--format", "json", "--auto",
                            "--print-logs", "--log-level", "ERROR",
                            "-m", "anthropic/claude-sonnet-4"]
    assert call["config"]["agent"]["build"]["steps"] == 60
    permission = json.loads(call["env"]["OPENCODE_PERMISSION"])
    assert permission["external_directory"] == "deny"
    assert permission["bash"]["git push*"] == "deny"
    assert call["env"]["OPENCODE_DISABLE_AUTOUPDATE"] == "1"


def test_aider_argv_puts_the_scope_in_the_chat(lane: PresetLane) -> None:
    lane.unit["unit_scope"] = ["calc/*.py", "docs/new.md"]
    call = lane.run("aider", "--model=sonnet", edit=EDIT).call
    argv = call["argv"]
    assert argv[:2] == ["--message-file", str(lane.unit_dir / "coder-1.preset" / "prompt.md")]
    for flag in ("--yes-always", "--no-auto-commits", "--no-dirty-commits", "--no-gitignore"):
        assert flag in argv
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert call["files"] == ["docs/new.md", "calc/__init__.py", "calc/ops.py", "calc/parse.py"]
    lane.unit["unit_scope"] = ["**"]
    assert lane.run("aider", edit=EDIT).call["files"] == []


def test_preset_command_line() -> None:
    argv = presets.command("claude", "fixer", {"model": "m", "max_turns": 5,
                                              "max_budget_usd": 1.5, "args": ["--bare", "x"]})
    assert argv[1:] == ("-P", "-m", "worktree_mesh.presets", "claude", "--role", "fixer",
                        "--model=m", "--max-turns=5", "--max-budget-usd=1.5", "--arg=--bare",
                        "--arg=x")


def test_runner_outside_a_lane_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-P", "-m", "worktree_mesh.presets", "codex",
                           "--role", "coder"], cwd=tmp_path, env=env, capture_output=True,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("wtmesh-preset: error: WTMESH_RESULT_JSON")


# -- plan validation of preset options ----------------------------------------------------

def plan_problems(lanes: dict[str, Any], unit_lanes: dict[str, Any] | None = None
                  ) -> list[str]:
    unit: dict[str, Any] = {"id": "u1", "objective": "o"}
    if unit_lanes is not None:
        unit["lanes"] = unit_lanes
    return plan_mod.problems({"lanes": lanes, "units": [unit]})


def test_schema_lists_exactly_the_shipped_presets() -> None:
    lane_schema = plan_mod.schema()["$defs"]["lane"]["properties"]
    assert tuple(lane_schema["preset"]["enum"]) == presets.PRESETS
    assert set(presets.PRESET_OPTIONS) <= set(lane_schema)


@pytest.mark.parametrize(("preset", "option", "value"), [
    ("codex", "max_turns", 5), ("codex", "max_budget_usd", 1.0),
    ("aider", "max_turns", 5), ("gemini", "max_budget_usd", 1.0),
    ("opencode", "max_budget_usd", 2.0),
])
def test_a_cap_the_cli_lacks_is_a_plan_error(preset: str, option: str, value: Any) -> None:
    found = plan_problems({"coder": {"preset": preset, option: value}})
    assert len(found) == 1
    assert found[0].startswith(f"$.lanes.coder.{option}: preset {preset!r} has no")


@pytest.mark.parametrize("lanes", [
    {"coder": {"preset": "claude", "max_turns": 5, "max_budget_usd": 1.0, "model": "m"}},
    {"coder": {"preset": "gemini", "max_turns": 5}},
    {"coder": {"preset": "opencode", "max_turns": 5, "args": ["--agent", "build"]}},
    {"coder": {"preset": "codex", "model": "gpt-5-codex"}},
    {"coder": {"command": "x"}, "fixer": {"preset": "aider", "model": "sonnet"}},
])
def test_options_the_cli_honours_are_accepted(lanes: dict[str, Any]) -> None:
    assert plan_problems(lanes) == []


def test_option_problems_follow_the_merged_lane() -> None:
    # The plan's claude lane sets a turn cap; a unit switching to codex inherits it.
    found = plan_problems({"coder": {"preset": "claude", "max_turns": 5}},
                          {"coder": {"preset": "codex"}})
    assert found == [("$.lanes.coder.max_turns: preset 'codex' has no turn cap; it is "
                      "bounded by the lane's timeout_s only (remove max_turns)")]
    # ... and a unit that sets its own on a codex lane is pointed at.
    found = plan_problems({"coder": {"preset": "codex"}}, {"coder": {"max_turns": 3}})
    assert found and found[0].startswith("$.units[0].lanes.coder.max_turns:")


# -- pure pieces ----------------------------------------------------------------------------

def test_question_detection() -> None:
    assert is_question("I looked.\n\nShould I change both parsers?")
    assert is_question("Which one do you mean?**")
    assert not is_question("Done? Yes. Changed the parser.")
    assert not is_question("")


def test_marked_verdict_takes_the_last_line() -> None:
    text = ('Example: WTMESH_VERDICT {"decision": "accept"}\nwork...\n'
            'WTMESH_VERDICT {"decision": "reject", "failure_code": "proof_failed", "notes": ""}')
    assert find_marked_verdict(text)["decision"] == "reject"
    assert find_marked_verdict("no verdict here") is None
    assert find_marked_verdict("WTMESH_VERDICT {not json}") == "{not json}"


def fixer_lane(tmp_path: Path) -> Lane:
    return Lane(preset="gemini", role="fixer", unit={"id": "u1", "objective": "o"},
                worktree=tmp_path, result_path=tmp_path / "r.json",
                work_dir=tmp_path / "w", diff="")


@pytest.mark.parametrize(("message", "verdict", "expected"), [
    ("All good, but no verdict.", None, ("reject", "invalid_output_schema")),
    ("Do you want me to keep the old API?", None, ("reject", "requires_clarification")),
    ("", {"decision": "maybe"}, ("reject", "invalid_output_schema")),
    ("", {"decision": "reject", "failure_code": "made_up"}, ("reject", "invalid_output_schema")),
    ("", {"decision": "accept", "failure_code": "proof_failed", "notes": "n"}, ("accept", None)),
    ('{"decision": "reject", "failure_code": null, "notes": "x"}', None,
     ("reject", "safety_regression_risk")),
])
def test_fixer_verdict_mapping(tmp_path: Path, message: str, verdict: Any,
                               expected: tuple[str, str | None]) -> None:
    got = decide(fixer_lane(tmp_path), Transcript(message=message, verdict=verdict),
                 changed=True)
    assert (got.decision, got.failure_code) == expected


def test_precedence_denial_before_cap_before_error(tmp_path: Path) -> None:
    lane = fixer_lane(tmp_path)
    both = Transcript(denials=["Bash"], cap="hit its turn cap", error="boom")
    assert decide(lane, both, changed=True).failure_code == "requires_clarification"
    both.denials = []
    assert decide(lane, both, changed=True).failure_code == "timeout_retry_exhausted"
    both.cap = None
    assert decide(lane, both, changed=True).failure_code == "lane_failed"
    both.unavailable = "401"
    assert decide(lane, both, changed=True).failure_code == "tooling_unavailable"


@pytest.mark.parametrize("changed", [True, False])
def test_what_the_cli_spent_is_in_the_result_whatever_the_decision(tmp_path: Path,
                                                                   changed: bool) -> None:
    lane = Lane(preset="claude", role="coder", unit={"id": "u1", "objective": "o"},
                worktree=tmp_path, result_path=tmp_path / "r.json", work_dir=tmp_path / "w",
                diff=None)
    spent = Usage(tokens_in=1200, tokens_out=80, cost_usd=0.0123)
    record = decide(lane, Transcript(message="m", usage=spent), changed=changed).record("u1")
    assert record["usage"] == {"tokens_in": 1200, "tokens_out": 80, "cost_usd": 0.0123}
    assert "usage" not in decide(lane, Transcript(message="m"), changed=changed).record("u1")


def test_the_readme_names_the_versions_the_presets_are_tested_with() -> None:
    """The versions live in versions.py; the README's table must say the same."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {cells[0].strip(): cells for line in readme.splitlines()
            if line.startswith("| ") and len(cells := line.strip("|").split("|")) == 4}
    for name, pinned in TESTED.items():
        assert rows[name][2].strip() == pinned.version, name
        assert rows[name][3].strip() == f"`{pinned.install_command}`", name
