"""Presets as consensus lanes (SPEC 12): the critic's and the synthesizer's prompts, the
critique's schema, and reading the critique an agent gave.

Both roles get the candidates file (``WTMESH_CANDIDATES_JSON``): every candidate's name,
diffstat, proof status and time, its lanes' notes and its diff (a file, put inline in the
prompt: no CLI need read outside its worktree), and from the second round the critiques
of the round before. A critic reads, never writes, and answers with a critique; codex and
claude through their JSON-schema features (a schema naming exactly this round's
candidates), the others with a marked line or a JSON block in their final message. The
synthesizer edits, as a coder does, and its result is a coder's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..consensus import vote
from .base import Lane
from .prompt import (
    MAX_INLINE_DIFF,
    RULES,
    VERDICT_MARKER,
    VERDICT_SCHEMA,
    _section,
    diff_block,
    render,
    unit_sections,
)

# What each of the vote's rubric dimensions asks, for the prompt; the dimensions and the
# pass line are the vote's own.
_ASKS = {
    "contract_clarity": "what the change promises (inputs, outputs, errors) is stated and kept",
    "invariant_strength": "the unit's invariants still hold, and the change enforces them",
    "minimal_incision": "the smallest change that meets the objective, nothing unrelated",
    "proof_credibility": "the proof (its tests) really shows that the change works",
    "legibility_trace": "easy to read and review; names and notes say why",
}
RUBRIC = {dimension: _ASKS[dimension] for dimension in vote.RUBRIC}
RUBRIC_MEAN, RUBRIC_FLOOR = vote.PASS_MEAN, vote.PASS_MIN
SCORES = (1, 2, 3, 4, 5)
VOTES = ("agree", "disagree")
# Each candidate's diff gets an equal share of this many characters of the prompt, but
# never less than the floor: a short diff is never cut because there are many.
MIN_INLINE_DIFF = 20_000


# -- the candidates file -----------------------------------------------------------------

def candidates_problem(data: Any) -> str | None:
    """Why ``data`` is not a candidates file a preset can render (None when it is)."""
    if not isinstance(data, dict):
        return "not a JSON object"
    listed = data.get("candidates")
    if not isinstance(listed, list) or not listed:
        return "`candidates` is not a non-empty list"
    names: list[str] = []
    for i, candidate in enumerate(listed):
        name = candidate.get("name") if isinstance(candidate, dict) else None
        if not isinstance(name, str) or not name:
            return f"candidates[{i}] has no name"
        if name in names:
            return f"two candidates are named {name!r}"
        names.append(name)
    if not isinstance(data.get("previous") or [], list):
        return "`previous` is not a list"
    return None


def _diff_text(candidate: Mapping[str, Any]) -> str:
    path = candidate.get("diff")
    if not isinstance(path, str) or not path:
        return "(no diff file is named for this candidate)"
    try:
        return Path(path).read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        return f"(its diff file {path} could not be read: {exc.strerror or exc})"


def _stats_line(candidate: Mapping[str, Any]) -> str:
    stats = candidate.get("stats")
    stats = stats if isinstance(stats, dict) else {}
    files = stats.get("files")
    parts = [f"{files} file{'' if files == 1 else 's'}" if isinstance(files, int) else None,
             f"+{stats['insertions']}" if isinstance(stats.get("insertions"), int) else None,
             f"-{stats['deletions']}" if isinstance(stats.get("deletions"), int) else None]
    line = ", ".join(p for p in (parts[0], " ".join(p for p in parts[1:] if p)) if p) \
        or "(no diffstat)"
    changed = candidate.get("changed_lines")
    return line + (f" ({changed} changed lines)" if isinstance(changed, int) else "")


def _proof_line(candidate: Mapping[str, Any]) -> str:
    proof = candidate.get("proof")
    proof = proof if isinstance(proof, dict) else {}
    status = str(proof.get("status") or "unknown")
    duration = proof.get("duration_s")
    took = (f" in {duration:.1f} s" if isinstance(duration, int | float)
            and not isinstance(duration, bool) else "")
    return f"{status}{took}"


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.strip().splitlines())


def candidate_sections(lane: Lane) -> list[str]:
    listed = [c for c in (lane.candidates or {}).get("candidates") or []
              if isinstance(c, dict)]
    limit = max(MIN_INLINE_DIFF, MAX_INLINE_DIFF // max(1, len(listed)))
    where = ("the unit's start commit" if not lane.edits else "the current head")
    out = [_section("Candidates", (
        f"{len(listed)} candidate change{'' if len(listed) == 1 else 's'} for the objective, "
        "each made by its own lanes in a worktree of its own. None of them is applied in "
        f"this worktree, which holds {where}."))]
    for candidate in listed:
        notes = str(candidate.get("notes") or "").strip()
        body = (f"- Diff: {_stats_line(candidate)}\n- Proof: {_proof_line(candidate)}\n"
                + (f"- Notes from its lanes:\n\n{_quoted(notes)}\n" if notes else
                   "- Notes from its lanes: none\n")
                + "\n" + diff_block(_diff_text(candidate), limit,
                                    "judge the rest from the diffstat"))
        out.append(f"### Candidate `{candidate['name']}`\n\n{body.strip()}\n")
    return out


def _score_text(scores: Any) -> str:
    if not isinstance(scores, dict):
        return ""
    given = [f"{dim} {value}" for dim, value in scores.items()]
    values = [v for v in scores.values() if isinstance(v, int | float)]
    mean = f" (mean {sum(values) / len(values):.1f})" if values else ""
    return ", ".join(given) + mean


def previous_section(lane: Lane) -> str | None:
    """The critiques of the round before, each in a few lines (None in round one)."""
    previous = [p for p in (lane.candidates or {}).get("previous") or []
                if isinstance(p, dict)]
    if not previous:
        return None
    rounds = sorted({str(p["round"]) for p in previous if p.get("round") is not None})
    title = f"The critiques of round {', '.join(rounds)}" if rounds else "The critiques so far"
    parts = []
    for critique in previous:
        lines = [f"### `{critique.get('critic', '?')}`: {critique.get('decision', '?')}", ""]
        votes = critique.get("votes")
        if isinstance(votes, dict) and votes:
            lines.append("- Votes: " + ", ".join(f"`{n}` {v}" for n, v in votes.items()))
        ranking = critique.get("ranking")
        if isinstance(ranking, list) and ranking:
            lines.append("- Ranking, best first: " + ", ".join(f"`{n}`" for n in ranking))
        scores = critique.get("scores")
        if isinstance(scores, dict):
            lines += [f"- Scores for `{n}`: {_score_text(s)}" for n, s in scores.items()]
        for key, label in (("flip", "What would change the vote"), ("notes", "Notes")):
            if critique.get(key):
                lines.append(f"- {label}: {str(critique[key]).strip()}")
        parts.append("\n".join(lines) + "\n")
    return _section(title, "Every critique that counted, as its critic gave it.") \
        + "\n" + "\n".join(parts)


# -- the critic ----------------------------------------------------------------------------

def critique_schema(names: Sequence[str]) -> dict[str, Any]:
    """The critique as a JSON schema strict enough for codex ``--output-schema`` (every
    property required, no others: so votes and scores name exactly these candidates)."""
    def per_candidate(value: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "required": list(names),
                "properties": {name: value for name in names}}

    score = {"type": "integer", "enum": list(SCORES)}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["decision", "votes", "ranking", "scores", "flip", "notes"],
        "properties": {
            "decision": {"type": "string", "enum": ["accept", "reject"]},
            "votes": per_candidate({"type": "string", "enum": list(VOTES)}),
            "ranking": {"type": "array", "items": {"type": "string", "enum": list(names)}},
            "scores": per_candidate({"type": "object", "additionalProperties": False,
                                     "required": list(RUBRIC),
                                     "properties": {dim: score for dim in RUBRIC}}),
            "flip": {"type": "string"},
            "notes": {"type": "string"},
        },
    }


def verdict_schema(lane: Lane) -> dict[str, Any] | None:
    """The shape the agent's final answer must have: a fixer's verdict, a critic's
    critique; None for the roles that answer with a change."""
    if lane.role == "fixer":
        return VERDICT_SCHEMA
    if lane.role == "critic":
        return critique_schema(lane.candidate_names)
    return None


def _round_line(lane: Lane) -> str:
    data = lane.candidates or {}
    at, of = data.get("round"), data.get("rounds")
    return f"round {at} of {of}" if at and of else f"round {at}" if at else "a round"


def rubric_section(lane: Lane) -> str:
    dims = "\n".join(f"- `{dim}`: {why}" for dim, why in RUBRIC.items())
    quorum = (lane.candidates or {}).get("quorum")
    chosen = (f"at least {quorum} critic{'' if quorum == 1 else 's'}"
              if isinstance(quorum, int) else "enough critics")
    return _section("Rubric", (
        "Score every candidate on each dimension, from 1 (poor) to 5 (excellent):\n\n"
        f"{dims}\n\nYour `agree` on a candidate counts only if your decision is `accept` and "
        f"your scores for it pass the rubric: a mean of at least {RUBRIC_MEAN:.1f} and no "
        f"dimension below {RUBRIC_FLOOR}. Otherwise it counts as `disagree`. A candidate is "
        f"chosen when {chosen} agree on it; among several, the one ranked higher over "
        "all the critics' rankings."))


CRITIC_RULES = """\
## Rules

- You are a critic: you read, you never write. Create, edit or delete no file and run no
  command that changes this worktree or its git state: a critic whose worktree changed is
  discarded.
- The candidates' diffs are all in this prompt; this worktree holds the unit's start
  commit, for context (read any file of it).
- Nobody will answer questions: give your critique with what you have.
"""


def critique_instructions(lane: Lane, *, native_schema: bool) -> str:
    names = lane.candidate_names
    body = ("- `decision`: `accept` if at least one candidate should land as it is, "
            "`reject` if none should.\n"
            "- `votes`: for every candidate, `agree` (it should land) or `disagree`.\n"
            "- `ranking`: every candidate, best first.\n"
            "- `scores`: for every candidate, its score on each rubric dimension (an "
            "integer from 1 to 5).\n"
            "- `flip`: what would change your vote.\n"
            "- `notes`: a few sentences: why.\n\n")
    if native_schema:
        body += "Your final message must be exactly that JSON object, matching the given schema."
    else:
        example = {"decision": "accept",
                   "votes": {n: "agree" if i == 0 else "disagree" for i, n in enumerate(names)},
                   "ranking": names,
                   "scores": {n: dict.fromkeys(RUBRIC, 4) for n in names[:1]},
                   "flip": "a test of the empty input", "notes": "why, in a few sentences"}
        body += (f"End your final message with one line holding `{VERDICT_MARKER}` and that "
                 f"JSON object, for example:\n\n{VERDICT_MARKER} {json.dumps(example)}\n\n"
                 "(with scores for every candidate).")
    return _section("Your critique", body)


def critic_prompt(lane: Lane, *, native_schema: bool) -> str:
    who = f"`{lane.critic}`, a critic" if lane.critic else "a critic"
    head = (f"You are {who} for unit `{lane.unit_id}` of a wtmesh run ({_round_line(lane)}). "
            "Several agents each proposed a change for the objective below. Critique every "
            "candidate adversarially: does it meet the objective, keep to the scope, respect "
            "the constraints and invariants, and does its proof show it works? Then vote.\n")
    previous = previous_section(lane)
    return "\n".join([head, *unit_sections(lane), *candidate_sections(lane),
                      *([previous] if previous else []), rubric_section(lane), CRITIC_RULES,
                      critique_instructions(lane, native_schema=native_schema)])


# -- the synthesizer -----------------------------------------------------------------------

def synthesizer_prompt(lane: Lane) -> str:
    head = (f"You are the synthesizer for unit `{lane.unit_id}` of a wtmesh run. Several "
            "agents each proposed a change for the objective below, and critics reviewed "
            "them. Produce the final minimal change in this worktree: the best candidate, "
            "corrected or combined with others where the critiques show it should be. Or "
            "change nothing to keep the leading candidate as it is.\n")
    previous = previous_section(lane)
    tail = ("\nEnd with a short summary: what you changed and why, or, if you changed "
            "nothing, which candidate should stay and why.\n")
    return "\n".join([head, *unit_sections(lane), *candidate_sections(lane),
                      *([previous] if previous else []), RULES]) + tail


def prompt(lane: Lane, *, native_schema: bool) -> str:
    """The prompt for any role."""
    if lane.role == "critic":
        return critic_prompt(lane, native_schema=native_schema)
    if lane.role == "synthesizer":
        return synthesizer_prompt(lane)
    return render(lane, native_schema=native_schema)


# -- reading a critique ---------------------------------------------------------------------

_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*(?:json)?[ \t]*\n(.*?)^[ \t]*\1[ \t]*$",
                     re.MULTILINE | re.DOTALL | re.IGNORECASE)


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def find_critique(text: str) -> Any:
    """The critique in an agent's final message, found leniently: the whole message as
    JSON (fenced or not), else the JSON after the last ``WTMESH_VERDICT`` marker (on its
    line or the lines after), else the last fenced JSON block holding an object. None when
    there is none; the text after the marker when it does not parse (to say so)."""
    stripped = text.strip()
    whole = next((m.group(2) for m in _FENCED.finditer(stripped)
                  if m.start() == 0 and m.end() == len(stripped)), stripped)
    found = _object(whole)
    if found is not None:
        return found
    marker = text.rfind(VERDICT_MARKER)
    if marker != -1:
        after = text[marker + len(VERDICT_MARKER):]
        start = after.find("{")
        if start != -1:
            try:
                return json.JSONDecoder().raw_decode(after[start:])[0]
            except json.JSONDecodeError:
                pass
        return after.strip()[:300]
    blocks = [o for o in (_object(m.group(2)) for m in _FENCED.finditer(text)) if o]
    voted = [o for o in blocks if "votes" in o or "decision" in o]
    return (voted or blocks)[-1] if blocks else None


def _word(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _mark(value: Any) -> Any:
    """A score as a CLI may write it (``4.0``) as the whole number it means."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _leniently(value: dict[str, Any]) -> dict[str, Any]:
    """What a model wrote, with the slack the vote does not give: words in any case,
    whole-number scores written as floats, an empty id."""
    out = dict(value)
    if out.get("id") in (None, ""):
        out.pop("id", None)
    out["decision"] = _word(out.get("decision"))
    if isinstance(out.get("votes"), dict):
        out["votes"] = {name: _word(said) for name, said in out["votes"].items()}
    if isinstance(out.get("scores"), dict):
        out["scores"] = {name: ({dim: _mark(mark) for dim, mark in given.items()}
                                if isinstance(given, dict) else given)
                         for name, given in out["scores"].items()}
    return out


def read_critique(value: Any, lane: Lane) -> dict[str, Any] | str:
    """The critique in the result's shape (SPEC 12), or what is wrong with ``value``:
    checked by the vote's own rules, so that what the preset writes is what counts."""
    if not isinstance(value, dict):
        return f"not a JSON object: {str(value)[:200]}"
    try:
        parsed = vote.parse_critique(_leniently(value), critic="critic", round=1,
                                     unit_id=lane.unit_id, candidates=lane.candidate_names)
    except vote.InvalidCritique as exc:
        return str(exc)
    critique: dict[str, Any] = {"decision": parsed.decision, "votes": dict(parsed.votes)}
    if value.get("ranking") is not None:
        critique["ranking"] = list(parsed.ranking)
    if value.get("scores") is not None:
        critique["scores"] = {name: dict(marks) for name, marks in parsed.scores.items()}
    for key in ("flip", "notes"):
        if value.get(key) is not None:
            critique[key] = getattr(parsed, key)
    return critique
