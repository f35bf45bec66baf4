"""The prompt a preset gives its agent, and the fixer's verdict: its schema and its marker.

The prompt carries everything of the unit an agent needs (objective, scope, constraints,
invariants, proof command; for the fixer the coder's diff inline, so no CLI needs to read
a file outside the worktree) and the rules every preset enforces: edit in place, never
stage, commit, branch or push, never wait for an answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import Lane

# A fixer rejects with one of these (SPEC 3's taxonomy, the codes a reviewer can mean).
VERDICT_CODES = {
    "safety_regression_risk": "the change is wrong, unsafe or breaks an invariant",
    "proof_missing": "nothing proves the change (tests missing where they are needed)",
    "proof_failed": "the proof command fails with the change",
    "requires_clarification": "the objective is too ambiguous to judge",
}
DEFAULT_REJECT_CODE = "safety_regression_risk"
VERDICT_MARKER = "WTMESH_VERDICT"
MAX_INLINE_DIFF = 200_000  # characters of the coder's diff put into the fixer's prompt

# Strict enough for codex --output-schema (every property required, no others) and claude
# --json-schema alike.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["decision", "failure_code", "notes"],
    "properties": {
        "decision": {"type": "string", "enum": ["accept", "reject"]},
        "failure_code": {"anyOf": [{"type": "string", "enum": list(VERDICT_CODES)},
                                   {"type": "null"}]},
        "notes": {"type": "string"},
    },
}


def _listing(items: list[str]) -> str:
    return "\n".join(f"- `{item}`" for item in items)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n"


def unit_sections(lane: Lane) -> list[str]:
    unit = lane.unit
    scope = unit.get("unit_scope") or ["**"]
    scope_list = [scope] if isinstance(scope, str) else [str(s) for s in scope]
    sections = [_section("Objective", str(unit.get("objective", "")))]
    if lane.conflict:
        sections.append(_section("This is a rerun", lane.conflict))
    who = "Create, edit or delete" if lane.edits else "A change may create, edit or delete"
    if scope_list == ["**"]:
        sections.append(_section("Scope", "The whole repository."))
    else:
        sections.append(_section(
            "Scope",
            f"{who} only paths matching these patterns (gitignore-style, relative to the "
            "repository root); a change to any other path fails the unit:\n\n"
            + _listing(scope_list)))
    if unit.get("constraints"):
        sections.append(_section("Constraints", str(unit["constraints"])))
    if unit.get("invariants"):
        sections.append(_section("Invariants (must still hold afterwards)",
                                 str(unit["invariants"])))
    proof = lane.proof
    if not lane.edits:
        sections.append(_section(
            "Proof",
            (f"The unit's proof command, run from the repository root:\n\n    {proof}\n\n"
             if proof else "No proof command is configured. ")
            + "wtmesh ran the proof with each candidate applied; its status is given with "
            "the candidate. Do not run it here: this worktree holds none of the candidates."))
        return sections
    sections.append(_section(
        "Proof",
        f"After your work this command must pass, run from the repository root:\n\n"
        f"    {proof}\n\nRun it yourself if you can." if proof else
        "No proof command is configured; keep the existing tests passing."))
    return sections


RULES = """\
## Rules

- Work only inside this git worktree (the current directory): edit files in place.
- Do not stage, commit, amend, stash, reset, switch branches, create branches or push.
  wtmesh collects your uncommitted changes itself and lands them after its own checks.
- Nobody will answer questions. If the task is impossible or ambiguous, change nothing and
  say why in your final message.
"""


def coder_prompt(lane: Lane) -> str:
    head = (f"You are the coder for unit `{lane.unit_id}` of a wtmesh run. Make the change "
            "described below in this repository.\n")
    tail = "\nEnd with a short summary of what you changed and why.\n"
    return "\n".join([head, *unit_sections(lane), RULES]) + tail


def _diff_block(diff: str | None) -> str:
    if not diff or not diff.strip():
        return "(the diff was not given; run `git status` and `git diff` to see the change)"
    return diff_block(diff, MAX_INLINE_DIFF,
                      "run `git diff` and `git status` in this worktree for the rest")


def diff_block(diff: str, limit: int, rest: str) -> str:
    """``diff`` fenced, cut at the last whole line within ``limit`` characters; ``rest``
    says where the part cut off can be seen."""
    note = ""
    if len(diff) > limit:
        shown = diff[:limit]
        shown = shown[:shown.rfind("\n") + 1] or shown
        note = (f"\n(the diff is cut here: {shown.count(chr(10))} of {diff.count(chr(10))} "
                f"lines shown; {rest})")
        diff = shown
    fence = "````" if "```" in diff else "```"
    return f"{fence}diff\n{diff.rstrip()}\n{fence}{note}"


def verdict_instructions(native_schema: bool) -> str:
    codes = "\n".join(f"  - `{code}`: {why}" for code, why in VERDICT_CODES.items())
    body = ("Decide whether the change (with your fixes) should land:\n\n"
            "- `decision`: `accept` or `reject`.\n"
            "- `failure_code`: null when you accept; when you reject, one of:\n"
            f"{codes}\n"
            "- `notes`: one or two sentences saying why.\n\n")
    if native_schema:
        body += "Your final message must be exactly that JSON object, matching the given schema."
    else:
        example = json.dumps({"decision": "accept", "failure_code": None,
                              "notes": "tests cover the new branch"})
        body += (f"End your final message with one line holding `{VERDICT_MARKER}` and that "
                 f"JSON object, for example:\n\n{VERDICT_MARKER} {example}")
    return _section("Verdict", body)


def fixer_prompt(lane: Lane, *, native_schema: bool) -> str:
    head = (f"You are the reviewer and fixer for unit `{lane.unit_id}` of a wtmesh run. "
            "Another agent (the coder) made the change below in this worktree; it is "
            "uncommitted there. Check it against the unit: the objective met, the scope kept, "
            "the constraints and invariants respected, the proof passing. Fix what is wrong "
            "by editing files in place (within the scope), then give your verdict.\n")
    change = _section("The coder's change", _diff_block(lane.diff))
    return "\n".join([head, *unit_sections(lane), change, RULES,
                      verdict_instructions(native_schema)])


def render(lane: Lane, *, native_schema: bool) -> str:
    if lane.role == "fixer":
        return fixer_prompt(lane, native_schema=native_schema)
    return coder_prompt(lane)


_MARKER_LINE = re.compile(re.escape(VERDICT_MARKER) + r"\s*:?\s*(\{.*\})\s*$", re.MULTILINE)


def find_marked_verdict(text: str) -> Any:
    """The JSON after the last ``WTMESH_VERDICT`` marker line; None when there is none,
    the raw text when it does not parse (so the caller can say so)."""
    matches = _MARKER_LINE.findall(text)
    if not matches:
        return None
    try:
        return json.loads(matches[-1])
    except json.JSONDecodeError:
        return matches[-1]


def parse_verdict_text(text: str) -> Any:
    """A verdict given as a whole JSON message (the schema features), else a marked line."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json").strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return find_marked_verdict(text)


def is_question(message: str) -> bool:
    """The agent's final message ends by asking something (it wants an answer)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip("*_`\"' )").endswith("?")
