"""Presets as consensus lanes (SPEC 12): ``--role critic`` and ``--role synthesizer``
against the fake CLIs: the prompt (candidates, diffs, proof, notes, the round before, the
rubric), the read-only flags a critic runs with (the fakes insist on them and exit 97
without), the critique read from each CLI's answer, and the result file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git, make_repo
from fake_clis.harness import CANDIDATE_DIFFS, NAMES, PresetLane

from worktree_mesh.presets.base import Lane, Transcript
from worktree_mesh.presets.critique import (
    RUBRIC,
    critique_schema,
    find_critique,
    read_critique,
)
from worktree_mesh.presets.outcome import decide

NATIVE = ("claude", "codex")  # the critique through the CLI's JSON-schema feature
TEXT = ("aider", "gemini", "opencode")  # the critique in the final message
SCORES = {"a": dict.fromkeys(RUBRIC, 4), "b": {**dict.fromkeys(RUBRIC, 3),
                                                "minimal_incision": 2}}
CRITIQUE = {"decision": "accept", "votes": {"a": "agree", "b": "disagree"},
            "ranking": ["a", "b"], "scores": SCORES,
            "flip": "a test for negate(0) would make me agree on b",
            "notes": "a is the smaller change and does what is asked"}
PREVIOUS = [{"critic": "correctness", "round": 1, "decision": "accept",
             "votes": {"a": "agree"}, "ranking": ["a", "b"],
             "scores": {"a": dict.fromkeys(RUBRIC, 5)},
             "flip": "b without its docstring", "notes": "a is right; b is wordy"}]


@pytest.fixture
def lane(tmp_path: Path) -> PresetLane:
    return PresetLane(tmp_path, make_repo(tmp_path / "repo"))


def critique(ran: Any) -> dict[str, Any]:
    """The result file without what the CLI said it spent."""
    assert ran.result is not None, (ran.stdout, ran.stderr)
    return {k: v for k, v in ran.result.items() if k != "usage"}


def decision(ran: Any) -> tuple[str, str | None]:
    assert ran.result is not None, (ran.stdout, ran.stderr)
    return ran.result["decision"], ran.result.get("failure_code")


# -- the critic's prompt -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_critic_prompt_carries_the_candidates_and_the_rubric(lane: PresetLane,
                                                             name: str) -> None:
    prompt = lane.run(name, role="critic", verdict=CRITIQUE).call["prompt"]
    for text in ("`skeptic`, a critic for unit `u-001`", "round 1 of 3",
                 "Treat trailing commas as invalid", "Reject invalid input at boundary",
                 "### Candidate `a`", "### Candidate `b`",
                 "+def negate(a):", "+def negate(a: float) -> float:", "+    return 0 - a",
                 "- Proof: pass in 1.5 s", "- Diff: 1 file, +2 -0 (2 changed lines)",
                 "> the b variant's lanes: added negate",
                 "at least 2 critics agree", "a mean of at least 4.0", "no dimension below 3",
                 "you never write", "python -m unittest -q", *RUBRIC):
        assert text in prompt, text
    assert "critiques of round" not in prompt  # round one: none before it
    assert "Run it yourself" not in prompt  # the worktree holds none of the candidates
    if name in NATIVE:
        assert "matching the given schema" in prompt
    else:
        assert 'WTMESH_VERDICT {"decision": "accept", "votes": {"a": "agree"' in prompt


def test_from_round_two_the_prompt_carries_the_critiques_before(lane: PresetLane) -> None:
    candidates = lane.candidates(previous=PREVIOUS, round=2)
    prompt = lane.run("gemini", role="critic", verdict=CRITIQUE,
                      candidates=candidates).call["prompt"]
    for text in ("round 2 of 3", "## The critiques of round 1", "### `correctness`: accept",
                 "- Votes: `a` agree", "- Ranking, best first: `a`, `b`",
                 "- Scores for `a`: contract_clarity 5", "(mean 5.0)",
                 "- What would change the vote: b without its docstring",
                 "- Notes: a is right; b is wordy"):
        assert text in prompt, text


def test_a_very_long_diff_is_cut_and_says_so(lane: PresetLane) -> None:
    body = "".join(f"+line {i} of a generated table\n" for i in range(20_000))
    long_diff = "diff --git a/calc/t.py b/calc/t.py\n--- /dev/null\n+++ b/calc/t.py\n" + body
    candidates = lane.candidates({"a": CANDIDATE_DIFFS["a"], "big": long_diff})
    prompt = lane.run("opencode", role="critic", verdict={**CRITIQUE, "votes": {}},
                      candidates=candidates).call["prompt"]
    assert "+def negate(a):" in prompt  # the short one whole
    assert "(the diff is cut here: " in prompt and "of 20003 lines shown" in prompt
    assert "+line 19999 of" not in prompt
    assert len(prompt) < len(long_diff) * 0.4


def test_a_diff_file_that_cannot_be_read_is_said_in_the_prompt(lane: PresetLane) -> None:
    path = lane.candidates()
    data = json.loads(path.read_text())
    data["candidates"][1]["diff"] = str(lane.tmp / "gone.diff")
    path.write_text(json.dumps(data))
    prompt = lane.run("claude", role="critic", verdict=CRITIQUE, candidates=path).call["prompt"]
    assert f"(its diff file {lane.tmp / 'gone.diff'} could not be read: " in prompt
    assert "+def negate(a):" in prompt


# -- the critique ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_critic_answers_with_the_critique(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, role="critic", verdict=CRITIQUE)
    assert "FAKE-" not in ran.stderr, ran.stderr  # the read-only flags were all there
    assert critique(ran) == {"id": "u-001", **CRITIQUE}, ran.stdout
    assert ran.returncode == 0
    assert git(lane.worktree, "status", "--porcelain") == ""


def test_a_critique_rejecting_every_candidate_is_a_lane_that_worked(lane: PresetLane) -> None:
    reject = {**CRITIQUE, "decision": "reject", "votes": {"a": "disagree", "b": "disagree"}}
    ran = lane.run("codex", role="critic", verdict=reject)
    assert critique(ran) == {"id": "u-001", **reject}
    assert ran.returncode == 0


@pytest.mark.parametrize("name", TEXT)
@pytest.mark.parametrize("form", ["after", "block"])
def test_a_critique_spread_over_lines_or_fenced_is_read(lane: PresetLane, name: str,
                                                        form: str) -> None:
    ran = lane.run(name, role="critic", verdict=CRITIQUE, extra_env={"FAKE_VERDICT_FORM": form})
    assert critique(ran) == {"id": "u-001", **CRITIQUE}, ran.stdout


@pytest.mark.parametrize("name", NAMES)
def test_a_critique_of_the_wrong_shape_is_invalid_output_schema(lane: PresetLane,
                                                                name: str) -> None:
    wrong = {**CRITIQUE, "votes": {"a": "agree", "c": "agree"}}
    ran = lane.run(name, role="critic", verdict=wrong)
    assert decision(ran) == ("reject", "invalid_output_schema")
    assert ran.result is not None
    assert ran.result["notes"] == (f"{name} gave a critique of the wrong shape: votes names "
                                   "'c', not one of the candidates (a, b)")
    assert "votes" not in ran.result  # no critique: the core counts none
    assert ran.returncode == 1


@pytest.mark.parametrize("name", TEXT)
def test_no_critique_at_all_is_invalid_output_schema(lane: PresetLane, name: str) -> None:
    ran = lane.run(name, role="critic", extra_env={"FAKE_VERDICT_FORM": "none"})
    assert decision(ran) == ("reject", "invalid_output_schema")
    assert ran.result is not None
    assert ran.result["notes"].startswith(f"{name} gave no critique: no JSON object")


@pytest.mark.parametrize("name", NATIVE)
def test_the_schema_names_exactly_the_candidates(lane: PresetLane, name: str) -> None:
    argv = lane.run(name, role="critic", verdict=CRITIQUE).call["argv"]
    if name == "claude":
        schema = json.loads(argv[argv.index("--json-schema") + 1])
    else:
        schema = json.loads(Path(argv[argv.index("--output-schema") + 1]).read_text())
    assert schema == critique_schema(["a", "b"])
    votes = schema["properties"]["votes"]
    assert votes["required"] == ["a", "b"] and votes["additionalProperties"] is False
    assert votes["properties"]["a"]["enum"] == ["agree", "disagree"]
    score = schema["properties"]["scores"]["properties"]["b"]
    assert score["required"] == list(RUBRIC)
    assert score["properties"]["minimal_incision"]["enum"] == [1, 2, 3, 4, 5]
    assert schema["properties"]["ranking"]["items"]["enum"] == ["a", "b"]


def test_each_critic_runs_read_only(lane: PresetLane) -> None:
    """What each preset gives a critic instead of a coder's edit rights."""
    def call(name: str) -> dict[str, Any]:
        found: dict[str, Any] = lane.run(name, role="critic", verdict=CRITIQUE).call
        return found

    claude = call("claude")["argv"]
    assert claude[claude.index("--permission-mode") + 1] == "dontAsk"
    assert claude[claude.index("--allowedTools") + 1].split(",") == [
        "Read", "Glob", "Grep", "Bash(git diff:*)", "Bash(git status:*)", "Bash(git log:*)",
        "Bash(git show:*)"]  # not the proof: it would run on none of the candidates
    assert {"Edit", "Write", "NotebookEdit"} <= set(
        claude[claude.index("--disallowedTools") + 1].split(","))
    assert claude[claude.index("--max-turns") + 1] == "30"
    codex = call("codex")["argv"]
    assert codex[codex.index("-s") + 1] == "read-only" and "workspace-write" not in codex
    gemini = call("gemini")
    assert gemini["argv"][gemini["argv"].index("--approval-mode") + 1] == "default"
    assert gemini["settings"]["model"]["maxSessionTurns"] == 30
    permission = json.loads(call("opencode")["env"]["OPENCODE_PERMISSION"])
    assert permission["edit"] == "deny" and permission["bash"]["*"] == "deny"
    assert permission["bash"]["git diff*"] == "allow"
    aider = call("aider")
    assert aider["argv"][aider["argv"].index("--chat-mode") + 1] == "ask"
    assert aider["files"] == []


def test_an_aider_critic_stays_in_ask_mode_whatever_edit_format_its_args_choose(
        lane: PresetLane) -> None:
    ran = lane.run("aider", "--arg=--edit-format", "--arg=whole", role="critic",
                   verdict=CRITIQUE)
    assert "FAKE-" not in ran.stderr, ran.stderr
    assert critique(ran) == {"id": "u-001", **CRITIQUE}


def test_a_critic_that_changed_the_worktree_is_said_in_its_log(lane: PresetLane) -> None:
    ran = lane.run("opencode", role="critic", verdict=CRITIQUE, edit="calc/extra.py=X = 1\\n")
    assert "wtmesh-preset: the critic changed the worktree" in ran.stdout


def test_the_result_names_the_unit_wtmesh_says(lane: PresetLane) -> None:
    ran = lane.run("claude", role="critic", verdict=CRITIQUE,
                   extra_env={"WTMESH_UNIT_ID": "u-002"})
    assert ran.result is not None and ran.result["id"] == "u-002"


def test_a_critic_without_a_candidates_file_says_so(lane: PresetLane, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "WTMESH_RESULT_JSON": str(tmp_path / "r.json"),
           "WTMESH_UNIT_JSON": str(tmp_path / "u.json"), "WTMESH_LANE": "critic"}
    (tmp_path / "u.json").write_text('{"id": "u1", "objective": "o"}')
    env.pop("WTMESH_CANDIDATES_JSON", None)
    for candidates in (None, "[1, 2]", "not json"):
        if candidates is not None:
            (tmp_path / "c.json").write_text(candidates)
            env["WTMESH_CANDIDATES_JSON"] = str(tmp_path / "c.json")
        done = subprocess.run([sys.executable, "-P", "-m", "worktree_mesh.presets", "gemini"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith("wtmesh-preset: error: ") and "CANDIDATES_JSON" in line, line


# -- the synthesizer ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_synthesizer_edits_like_a_coder_with_the_candidates_and_critiques(
        lane: PresetLane, name: str) -> None:
    candidates = lane.candidates(previous=PREVIOUS)
    ran = lane.run(name, role="synthesizer", edit="calc/extra.py=VALUE = 1\\n",
                   candidates=candidates)
    assert "FAKE-" not in ran.stderr, ran.stderr  # a coder's flags: it may edit
    assert decision(ran) == ("accept", None)
    assert (lane.worktree / "calc" / "extra.py").read_text() == "VALUE = 1\n"
    prompt = ran.call["prompt"]
    for text in ("the synthesizer for unit `u-001`", "final minimal change in this worktree",
                 "change nothing to keep the leading candidate", "### Candidate `b`",
                 "+    return 0 - a", "### `correctness`: accept", "Run it yourself",
                 "Do not stage, commit"):
        assert text in prompt, text
    assert "WTMESH_VERDICT" not in prompt
    assert "--json-schema" not in ran.call["argv"] and "--output-schema" not in ran.call["argv"]
    (lane.worktree / "calc" / "extra.py").unlink()
    kept = lane.run(name, role="synthesizer", candidates=candidates)
    assert decision(kept) == ("no_diff", None)


# -- reading a critique ---------------------------------------------------------------------

def critic_lane(tmp_path: Path) -> Lane:
    return Lane(preset="gemini", role="critic", unit={"id": "u1", "objective": "o"},
                worktree=tmp_path, result_path=tmp_path / "r.json", work_dir=tmp_path / "w",
                diff=None, candidates={"candidates": [{"name": "a"}, {"name": "b"}]})


@pytest.mark.parametrize(("given", "problem"), [
    ({**CRITIQUE, "id": "u9"}, "critic result is for unit 'u9', not 'u1'"),
    ({**CRITIQUE, "decision": "maybe"}, "decision 'maybe' is not one of accept, reject"),
    ({**CRITIQUE, "votes": ["a"]}, "votes must be an object"),
    ({**CRITIQUE, "votes": {"a": "yes"}}, "votes['a'] is 'yes', not one of agree, disagree"),
    ({**CRITIQUE, "ranking": ["a", "a"]}, "ranking names candidate 'a' more than once"),
    ({**CRITIQUE, "ranking": ["z"]}, "ranking names 'z', not one of the candidates (a, b)"),
    ({**CRITIQUE, "scores": {"a": {"contract_clarity": 4}}}, "scores['a'] lacks rubric key"),
    ({**CRITIQUE, "scores": {"a": {**SCORES["a"], "legibility_trace": 6}}},
     "scores['a'].legibility_trace must be a whole number 1-5, got 6"),
    ({**CRITIQUE, "scores": {"a": {**SCORES["a"], "legibility_trace": True}}},
     "scores['a'].legibility_trace must be a whole number 1-5, got True"),
    ({**CRITIQUE, "notes": 7}, "notes must be a string"),
    ("WTMESH_VERDICT {oops", "not a JSON object"),
])
def test_a_wrong_critique_says_what_is_wrong(tmp_path: Path, given: Any,
                                             problem: str) -> None:
    got = read_critique(given, critic_lane(tmp_path))
    assert isinstance(got, str) and problem in got, got


def test_a_critique_is_read_leniently(tmp_path: Path) -> None:
    lax = {"decision": " Accept", "votes": {"a": "AGREE"}, "id": "u1",
           "scores": {"a": {**SCORES["a"], "contract_clarity": 5.0}}}
    assert read_critique(lax, critic_lane(tmp_path)) == {
        "decision": "accept", "votes": {"a": "agree"},
        "scores": {"a": {**SCORES["a"], "contract_clarity": 5}}}
    # Only decision and votes are required; a candidate not voted on counts as disagree.
    assert read_critique({"decision": "reject", "votes": {}}, critic_lane(tmp_path)) == {
        "decision": "reject", "votes": {}}


@pytest.mark.parametrize("text", [
    json.dumps(CRITIQUE),
    "```json\n" + json.dumps(CRITIQUE, indent=2) + "\n```",
    "I read both.\nWTMESH_VERDICT " + json.dumps(CRITIQUE),
    "I read both.\nWTMESH_VERDICT:\n```json\n" + json.dumps(CRITIQUE, indent=1) + "\n```\n",
    'Example: WTMESH_VERDICT {"decision": "reject"}\nThen: WTMESH_VERDICT '
    + json.dumps(CRITIQUE) + "\nThat is all.",
    'A config:\n```json\n{"x": 1}\n```\nMy critique:\n```\n' + json.dumps(CRITIQUE) + "\n```",
])
def test_find_critique(text: str) -> None:
    assert find_critique(text) == CRITIQUE


def test_find_critique_finds_none_or_says_what_follows_the_marker() -> None:
    assert find_critique("I could not decide.") is None
    assert find_critique("WTMESH_VERDICT {not json") == "{not json"


def test_a_critic_denied_a_tool_still_gives_its_critique(tmp_path: Path) -> None:
    """A critic may only read: a refused edit is that rule holding, not a failed lane;
    only a critic that was refused and then gave no critique asks for a person."""
    lane = critic_lane(tmp_path)
    read = decide(lane, Transcript(denials=["write_file calc/x.py"], verdict=CRITIQUE),
                  changed=False)
    assert (read.decision, read.failure_code, read.critique) == (
        "accept", None, read_critique(CRITIQUE, lane))
    none = decide(lane, Transcript(denials=["write_file calc/x.py"], message="Done."),
                  changed=False)
    assert (none.decision, none.failure_code) == ("reject", "requires_clarification")
    assert "write_file calc/x.py" in none.notes
