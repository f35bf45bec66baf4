"""The rules of a consensus vote (SPEC 12): a critic's verdict checked, mesh's rubric, the
tally and the other ways of choosing a candidate. Pure: no files, no git, no clock.

A critic's ``agree`` on a candidate counts only when its decision is ``accept`` and its scores
for that candidate, if it gave any, pass the rubric (mean >= 4.0, no dimension below 3);
anything else, a candidate it left out of ``votes`` included, is a disagree. Among the
candidates at least ``quorum`` critics agree on, the winner has the higher Borda count over
the critics' rankings, then the higher rubric mean, then the smaller diff, then the earlier
variant. Only candidates whose proof passed are ever considered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any

RUBRIC = ("contract_clarity", "invariant_strength", "minimal_incision", "proof_credibility",
          "legibility_trace")
PASS_MEAN = 4.0
PASS_MIN = 3
SCORE_RANGE = (1, 5)
SELECT_MODES = ("vote", "first_passing", "smallest", "manual")
DECISIONS = ("accept", "reject")
VOTES = ("agree", "disagree")


@dataclass(frozen=True)
class Candidate:
    """A proposal for a unit: a variant's change, or the synthesizer's."""

    name: str
    order: int            # variant order (synthesis comes after the variants)
    changed_lines: int
    passed: bool          # its proof passed: only these go to critics and can be chosen


@dataclass(frozen=True)
class Critique:
    """One critic's checked verdict in one round. Its mappings are read-only copies."""

    critic: str
    round: int
    decision: str
    votes: Mapping[str, str]
    ranking: tuple[str, ...]
    scores: Mapping[str, Mapping[str, int]]
    flip: str
    notes: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "votes", MappingProxyType(dict(self.votes)))
        object.__setattr__(self, "ranking", tuple(self.ranking))
        object.__setattr__(self, "scores", MappingProxyType(
            {name: MappingProxyType(dict(marks)) for name, marks in self.scores.items()}))

    def as_record(self) -> dict[str, Any]:
        """JSON-able: the shape of an entry of the candidates file's ``previous``."""
        return {"critic": self.critic, "round": self.round, "decision": self.decision,
                "votes": dict(self.votes), "ranking": list(self.ranking),
                "scores": {name: dict(marks) for name, marks in self.scores.items()},
                "flip": self.flip, "notes": self.notes}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Critique:
        """The inverse of :meth:`as_record` (a critique read back on resume)."""
        return cls(critic=record["critic"], round=record["round"],
                   decision=record["decision"], votes=record["votes"],
                   ranking=tuple(record.get("ranking") or ()),
                   scores=record.get("scores") or {}, flip=record.get("flip") or "",
                   notes=record.get("notes") or "")


class InvalidCritique(ValueError):
    """A critic's result that is not the contract's shape; the message is one line."""


def parse_critique(data: Any, *, critic: str, round: int, unit_id: str,
                   candidates: Sequence[str]) -> Critique:
    """A critic's result object, checked against the contract: ``decision`` accept|reject,
    ``votes`` an object of agree|disagree, optional ``ranking`` (no repeats), ``scores``
    (every rubric dimension, each a whole number 1-5), ``flip``, ``notes`` (strings), and
    ``id``, which if given must be the unit's. Every candidate named must be one of
    ``candidates``. Other keys (``usage`` and the like) are not the vote's business."""
    if not isinstance(data, Mapping):
        raise InvalidCritique(f"critic result must be a JSON object, got {_kind(data)}")
    if "id" in data and data["id"] != unit_id:
        raise InvalidCritique(f"critic result is for unit {data['id']!r}, not {unit_id!r}")
    decision = data.get("decision")
    if decision not in DECISIONS:
        raise InvalidCritique(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    known = set(candidates)
    votes = data.get("votes")
    if not isinstance(votes, Mapping):
        raise InvalidCritique(f"votes must be an object of candidate -> agree|disagree, "
                              f"got {_kind(votes)}")
    for name, vote in votes.items():
        _known(name, known, "votes")
        if vote not in VOTES:
            raise InvalidCritique(f"votes[{name!r}] is {vote!r}, not one of {', '.join(VOTES)}")
    return Critique(critic=critic, round=round, decision=decision, votes=votes,
                    ranking=_ranking(data.get("ranking"), known),
                    scores=_scores(data.get("scores"), known),
                    flip=_text(data, "flip"), notes=_text(data, "notes"))


def _ranking(value: Any, known: set[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidCritique(f"ranking must be an array of candidates, got {_kind(value)}")
    for name in value:
        _known(name, known, "ranking")
    if len(set(value)) != len(value):
        repeated = next(name for name in value if value.count(name) > 1)
        raise InvalidCritique(f"ranking names candidate {repeated!r} more than once")
    return tuple(value)


def _scores(value: Any, known: set[str]) -> dict[str, dict[str, int]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidCritique(f"scores must be an object of candidate -> rubric, "
                              f"got {_kind(value)}")
    scores: dict[str, dict[str, int]] = {}
    low, high = SCORE_RANGE
    for name, marks in value.items():
        _known(name, known, "scores")
        if not isinstance(marks, Mapping):
            raise InvalidCritique(f"scores[{name!r}] must be an object of rubric scores, "
                                  f"got {_kind(marks)}")
        unknown = sorted(str(key) for key in set(marks) - set(RUBRIC))
        if unknown:
            raise InvalidCritique(f"scores[{name!r}] has unknown rubric key {unknown[0]!r} "
                                  f"(known: {', '.join(RUBRIC)})")
        missing = [key for key in RUBRIC if key not in marks]
        if missing:
            raise InvalidCritique(f"scores[{name!r}] lacks rubric key {missing[0]!r}")
        for key in RUBRIC:
            mark = marks[key]
            if isinstance(mark, bool) or not isinstance(mark, int) or not low <= mark <= high:
                raise InvalidCritique(f"scores[{name!r}].{key} must be a whole number "
                                      f"{low}-{high}, got {mark!r}")
        scores[name] = {key: marks[key] for key in RUBRIC}
    return scores


def _known(name: Any, known: set[str], where: str) -> None:
    if not isinstance(name, str) or name not in known:
        raise InvalidCritique(f"{where} names {name!r}, not one of the candidates "
                              f"({', '.join(sorted(known)) or 'none'})")


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidCritique(f"{key} must be a string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """A value's JSON kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def default_quorum(critics: int) -> int:
    """All critics but one, at least one (4 of 5, 2 of 3, 1 of 1 or 2)."""
    return max(1, critics - 1)


def rubric_mean(scores: Mapping[str, int]) -> float:
    """The mean of one critic's scores for one candidate over the rubric's dimensions."""
    return sum(scores[key] for key in RUBRIC) / len(RUBRIC)


def rubric_passes(scores: Mapping[str, int]) -> bool:
    """Mesh's line: mean >= 4.0 and no dimension below 3."""
    return (rubric_mean(scores) >= PASS_MEAN
            and min(scores[key] for key in RUBRIC) >= PASS_MIN)


def agrees(critique: Critique, candidate: str) -> bool:
    """Whether this critique counts as an agree on ``candidate``."""
    if critique.decision != "accept" or critique.votes.get(candidate) != "agree":
        return False
    marks = critique.scores.get(candidate)
    return marks is None or rubric_passes(marks)


@dataclass(frozen=True)
class Standing:
    """One candidate after a round."""

    name: str
    agree: int
    borda: int
    rubric_mean: float | None   # over the critics that scored it; None: none did


@dataclass(frozen=True)
class Tally:
    standings: tuple[Standing, ...]   # the passing candidates, in variant order
    chosen: str | None                # the winner among those reaching quorum, or None

    def as_record(self) -> dict[str, Any]:
        return {"standings": [{"name": s.name, "agree": s.agree, "borda": s.borda,
                               "rubric_mean": s.rubric_mean} for s in self.standings],
                "chosen": self.chosen}


def tally(candidates: Sequence[Candidate], critiques: Sequence[Critique], quorum: int) -> Tally:
    """Count a round's critiques. Only candidates whose proof passed stand; the chosen one
    has at least ``quorum`` agrees and wins the tie-breaks: Borda, rubric mean, smaller diff,
    variant order. The order the critiques come in never matters."""
    if quorum < 1:
        raise ValueError(f"quorum must be at least 1, got {quorum}")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names repeat: {names}")
    standing = sorted((c for c in candidates if c.passed), key=lambda c: c.order)
    borda = {c.name: 0 for c in standing}
    for critique in critiques:
        last = len(critique.ranking) - 1
        for place, name in enumerate(critique.ranking):
            if name in borda:
                borda[name] += last - place
    # Exact fractions: a float sum could differ in its last bit with the critiques' order.
    means = {c.name: _mean_over_critics(c.name, critiques) for c in standing}
    standings = tuple(
        Standing(c.name, sum(1 for q in critiques if agrees(q, c.name)), borda[c.name],
                 None if (mean := means[c.name]) is None else float(mean))
        for c in standing)
    agree = {s.name: s.agree for s in standings}
    reaching = [c for c in standing if agree[c.name] >= quorum]

    def rank(c: Candidate) -> tuple[int, Fraction, int, int]:
        # Nobody scored it: 0, below any mean of scores 1-5.
        return (-borda[c.name], -(means[c.name] or Fraction(0)), c.changed_lines, c.order)

    chosen = min(reaching, key=rank).name if reaching else None
    return Tally(standings, chosen)


def _mean_over_critics(name: str, critiques: Sequence[Critique]) -> Fraction | None:
    """The mean over the critics that scored ``name`` of each one's rubric mean."""
    totals = [sum(q.scores[name][key] for key in RUBRIC) for q in critiques if name in q.scores]
    return Fraction(sum(totals), len(RUBRIC) * len(totals)) if totals else None


def first_passing(candidates: Sequence[Candidate]) -> str | None:
    """The first candidate in variant order whose proof passed (best-of-N by proof)."""
    passing = [c for c in candidates if c.passed]
    return min(passing, key=lambda c: c.order).name if passing else None


def smallest(candidates: Sequence[Candidate]) -> str | None:
    """The passing candidate with the fewest changed lines, then the earliest."""
    passing = [c for c in candidates if c.passed]
    return min(passing, key=lambda c: (c.changed_lines, c.order)).name if passing else None
